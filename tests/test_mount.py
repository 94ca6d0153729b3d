"""The gateway as an ASGI app mounted inside someone else's Starlette or FastAPI service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import gateway
from gateway.app import create_app
from tests.fake_upstream import serve_in_thread

if TYPE_CHECKING:
    from fastapi import FastAPI


class Handler(gateway.CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> gateway.ModelResponse:
        await asyncio.sleep(0)  # yields, so the disconnect watcher and deadline arm
        return gateway.completion(model="x", mock_response="from the mounted gateway")

    def streaming(self, *args: Any, **kwargs: Any) -> Any:
        yield from ["a", "b"]


def gateway_config() -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "h/m"}}],
        "litellm_settings": {
            "custom_provider_map": [{"provider": "h", "custom_handler": Handler()}]
        },
        "general_settings": {"master_key": "sk-mounted"},
    }


def home(request: Any) -> PlainTextResponse:
    return PlainTextResponse("host app")


def starlette_host() -> Starlette:
    # Starlette never runs a mounted app's lifespan: the gateway must work without it.
    return Starlette(routes=[Route("/", home), Mount("/llm", app=create_app(gateway_config()))])


def fastapi_host() -> FastAPI:
    # fastapi is imported by the tests that use it: at collection, every xdist worker
    # paid its 0.14 s of CPU.
    from fastapi import FastAPI

    app = FastAPI()
    app.get("/")(lambda: "host app")
    app.mount("/llm", create_app(gateway_config()))
    return app


@pytest.fixture(params=[starlette_host, fastapi_host], ids=["starlette", "fastapi"])
def host(request: pytest.FixtureRequest) -> Iterator[str]:
    with serve_in_thread(request.param(), lifespan="on") as handle:
        yield handle.url


AUTH = {"Authorization": "Bearer sk-mounted"}


def test_mounted_under_prefix(host: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{host}/llm/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "from the mounted gateway"
    assert r.json()["model"] == "m"

    stream = httpx.post(f"{host}/llm/chat/completions", json={**body, "stream": True}, headers=AUTH)
    assert stream.status_code == 200
    assert stream.text.endswith("data: [DONE]\n\n")
    assert '"content":"a"' in stream.text

    assert httpx.get(f"{host}/llm/v1/models", headers=AUTH).json()["data"][0]["id"] == "m"
    assert httpx.get(f"{host}/llm/health/liveliness").status_code == 200
    assert httpx.post(f"{host}/llm/v1/chat/completions", json=body).status_code == 401
    # The host's own routes still answer.
    assert "host app" in httpx.get(f"{host}/").text


class Pooled(gateway.Provider):
    """A provider that holds something to open at start-up and close at shutdown."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def astart(self, settings: Any = None) -> None:
        self.events.append("provider started")

    async def aclose(self) -> None:
        self.events.append("provider closed")

    async def acompletion(self, call: Any) -> gateway.ModelResponse:
        return gateway.completion(model="x", mock_response="pooled")


def test_host_with_its_own_lifespan_runs_the_gateways_inside_it() -> None:
    from fastapi import FastAPI

    # As the README shows: the host chains gateway_app.lifespan_context in its lifespan.
    provider = Pooled()
    gateway_app = create_app(
        {
            "model_list": [{"model_name": "m", "litellm_params": {"model": "pooled/m"}}],
            "litellm_settings": {
                "custom_provider_map": [{"provider": "pooled", "custom_handler": provider}]
            },
        }
    )
    events = provider.events

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with gateway_app.lifespan_context(gateway_app):
            events.append("host started")
            yield
            events.append("host stopping")

    app = FastAPI(lifespan=lifespan)
    app.mount("/llm", gateway_app)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with serve_in_thread(app, lifespan="on") as handle:
        assert events == ["provider started", "host started"]
        r = httpx.post(f"{handle.url}/llm/v1/chat/completions", json=body)
        assert r.json()["choices"][0]["message"]["content"] == "pooled"
    assert events == ["provider started", "host started", "host stopping", "provider closed"]
