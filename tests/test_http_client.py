"""gateway.http_client(): the handlers' shared, pooled client, owned by the app or the loop."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

import gateway
from gateway.app import create_app
from tests.fake_upstream import serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "hi"}]


class Backend:
    """An internal API: POST /generate answers {"text": ...}; it records what it got."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.clients: set[tuple[str, int]] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        self.seen.append({"body": msgspec.json.decode(body), "headers": headers})
        self.clients.add(tuple(scope["client"]))
        data = msgspec.json.encode({"text": f"backend got {len(self.seen)}"})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})


class Recorder(gateway.CustomLLM):
    """Keeps every client ``gateway.http_client()`` gave it."""

    def __init__(self) -> None:
        self.clients: list[httpx.AsyncClient] = []

    async def acompletion(self, model: str, messages: Any, api_base: str, **kwargs: Any) -> Any:
        client = gateway.http_client()
        self.clients.append(client)
        response = await client.post(f"{api_base}/generate", json={"messages": messages})
        return gateway.ModelResponse(
            model=model,
            choices=[{"message": {"role": "assistant", "content": response.json()["text"]}}],
        )


def _readme_handler() -> type:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(class InternalAPI.*?)```", readme, re.S)
    assert code, "README has no InternalAPI handler example"
    namespace: dict[str, Any] = {"gateway": gateway}
    exec(compile(code.group(1), "README.md", "exec", dont_inherit=True), namespace)
    return namespace["InternalAPI"]  # type: ignore[no-any-return]


def test_handlers_share_the_apps_client_which_closes_at_shutdown() -> None:
    backend = Backend()
    recorder = Recorder()
    with serve_in_thread(backend, lifespan="off") as backend_handle:
        config = {
            "model_list": [
                {
                    "model_name": "rec",
                    "litellm_params": {"model": "rec/x", "api_base": backend_handle.url},
                },
                {
                    "model_name": "readme",
                    "litellm_params": {
                        "model": "internal/served",
                        "api_base": backend_handle.url,
                        "api_key": "sk-backend",
                    },
                },
            ],
            "litellm_settings": {
                "custom_provider_map": [
                    {"provider": "rec", "custom_handler": recorder},
                    {"provider": "internal", "custom_handler": _readme_handler()()},
                ]
            },
            "gateway_settings": {"upstream": {"read_timeout": 77, "connect_timeout": 3}},
        }
        with serve_in_thread(create_app(config)) as handle:
            for _ in range(3):
                answer = httpx.post(
                    handle.url + "/v1/chat/completions", json={"model": "rec", "messages": MESSAGES}
                )
                assert answer.status_code == 200, answer.text
            readme = httpx.post(
                handle.url + "/v1/chat/completions", json={"model": "readme", "messages": MESSAGES}
            )
            client = recorder.clients[0]
            assert all(c is client for c in recorder.clients)  # one shared client
            assert not client.is_closed
            assert client.timeout.read == 77 and client.timeout.connect == 3  # the app's
        assert client.is_closed  # the app's shutdown closed it
    assert len(backend.clients) == 1  # three calls, one kept-alive connection
    assert readme.status_code == 200, readme.text
    assert readme.json()["choices"][0]["message"]["content"] == "backend got 4"
    assert backend.seen[-1]["body"] == {"model": "served", "messages": MESSAGES}
    assert backend.seen[-1]["headers"][b"authorization"] == b"Bearer sk-backend"


async def test_library_client_is_one_per_loop_and_closed_with_its_loop() -> None:
    client = gateway.http_client()
    assert gateway.http_client() is client

    async def in_new_loop() -> httpx.AsyncClient:
        return gateway.http_client()

    other = await anyio.to_thread.run_sync(lambda: asyncio.run(in_new_loop()))
    assert other is not client
    assert other.is_closed and not client.is_closed


def test_outside_an_asyncio_loop_the_error_says_so() -> None:
    with pytest.raises(RuntimeError, match="asyncio event loop"):
        gateway.http_client()


# The aiohttp pool under it (gateway/_pool.py).


async def test_idle_connections_beyond_the_keep_alive_cap_close_once_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from gateway.http import HTTPClients
    from tests.fake_upstream import run_fake_upstream

    trim_after = 0.3  # the pool's 1 s, shortened: the test waits it out
    monkeypatch.setattr("gateway._pool.TRIM_AFTER", trim_after)
    clients = HTTPClients(SimpleNamespace(max_keepalive_connections=2))
    client = clients.http_client()
    connector = client._transport.client.connector  # type: ignore[attr-defined]
    with run_fake_upstream() as upstream:
        try:

            async def one() -> None:
                answer = await client.post(upstream.base_url + "/embeddings", json={"input": "x"})
                assert answer.status_code == 200

            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(one)
            assert upstream.open_connections > 2
            started = asyncio.get_running_loop().time()
            stats = {"connections": 2, "idle": 2, "active": 0, "requests": 0, "waiting": 0}
            while connector.stats() != stats:
                assert asyncio.get_running_loop().time() - started < 5, connector.stats()
                await asyncio.sleep(0.05)
            assert asyncio.get_running_loop().time() - started >= trim_after * 0.9
        finally:
            await clients.aclose()


async def test_a_stream_that_keeps_talking_outlives_its_read_timeout() -> None:
    # One read timer per wait, re-armed when it fires (gateway._pool): each read counts as
    # progress. 6 gaps of 0.1 s under a 0.3 s read timeout: 0.6 s in all.
    from tests.fake_upstream import run_fake_upstream

    body = {
        "model": "x",
        "messages": MESSAGES,
        "stream": True,
        "fake": {"chunks": 6, "interval": 0.1},
    }
    with run_fake_upstream() as upstream:
        client = gateway.http_client()
        timeout = httpx.Timeout(5, read=0.3)
        url = upstream.base_url + "/chat/completions"
        started = asyncio.get_running_loop().time()
        async with client.stream("POST", url, json=body, timeout=timeout) as answer:
            lines = [line async for line in answer.aiter_lines() if line.startswith("data:")]
        assert asyncio.get_running_loop().time() - started > 0.5
        assert len(lines) >= 6
        transport = client._transport  # type: ignore[attr-defined]
        factory = transport.client.connector._factory
        assert type(factory()).__name__ == "_ResponseHandler"
