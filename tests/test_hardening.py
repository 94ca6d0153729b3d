"""What a client or a handler can get wrong, on a real uvicorn server on loopback:
errors are right (status, OpenAI shape) and seen (logged with a request id)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fake_upstream import serve_in_thread

from gateway import CustomLLM
from gateway.app import create_app


class EchoLLM(CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        return {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}


HANDLERS: dict[str, Any] = {"echo": EchoLLM()}


def config(**settings: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": name, "litellm_params": {"model": f"{name}/m"}} for name in HANDLERS
        ],
        "litellm_settings": {
            "custom_provider_map": [
                {"provider": name, "custom_handler": handler} for name, handler in HANDLERS.items()
            ]
        },
        "gateway_settings": settings,
    }


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    with serve_in_thread(create_app(config()), http=request.param) as handle:
        yield handle.url


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text
    return error


# -- bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("open_, close", [(b"[", b"]"), (b'{"a":', b"}")])
def test_deeply_nested_json_is_400(server: str, open_: bytes, close: bytes) -> None:
    depth = 100_000
    nested = open_ * depth + b"1" + close * depth
    body = b'{"model": "echo", "messages": [{"role": "user", "content": ' + nested + b"}]}"
    r = httpx.post(
        f"{server}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    error = error_of(r, 400)
    assert error["message"] == "Request body is nested too deeply"
    assert error["type"] == "invalid_request_error"
    ok = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert ok.status_code == 200
