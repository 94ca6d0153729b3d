"""The ASGI app driven in-process on asyncio and on trio.

uvicorn always runs asyncio, so the app's asyncio fast paths (``gateway._aio``) are
what the live-server tests see; a host app on trio (hypercorn, or an app mounted in a
trio service) takes their anyio twins. Both must behave the same: answers, streams,
deadlines, idle timeouts, and a disconnect cancelling the handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest

import gateway
from gateway.app import GatewayApp, create_app


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


class Seen:
    def __init__(self) -> None:
        self.started = anyio.Event()
        self.finally_ran = False


SEEN = Seen()


class Handler(gateway.CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        content = kwargs["messages"][-1]["content"]
        if content == "hang":
            SEEN.started.set()
            try:
                await anyio.sleep(30)
            finally:
                SEEN.finally_ran = True
        await anyio.sleep(0)  # yields: the watcher and the deadline arm
        return gateway.completion(model="x", mock_response=f"echo: {content}")

    async def astreaming(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        content = kwargs["messages"][-1]["content"]
        gap = 0.05 if content in ("paced", "ticking") else 0.0
        try:
            for i in range(3 if content not in ("endless", "ticking") else 10_000):
                yield f"w{i} "
                SEEN.started.set()
                await anyio.sleep(gap if content != "stall" or i < 1 else 30)
        finally:
            SEEN.finally_ran = True


def app() -> GatewayApp:
    return create_app(
        {
            "model_list": [{"model_name": "m", "litellm_params": {"model": "h/m"}}],
            "litellm_settings": {
                "custom_provider_map": [{"provider": "h", "custom_handler": Handler()}]
            },
        }
    )


@pytest.fixture(autouse=True)
def _seen() -> None:
    global SEEN
    SEEN = Seen()


class Exchange:
    """One scripted HTTP exchange: the request body, then a disconnect when told."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = msgspec.json.encode(body)
        self.read = False
        self.leave = anyio.Event()
        self.messages: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if not self.read:
            self.read = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    async def run(self, app: GatewayApp, path: str = "/v1/chat/completions") -> None:
        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [(b"content-type", b"application/json")],
            "query_string": b"",
        }
        with anyio.fail_after(10):
            await app(scope, self.receive, self.send)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def body_bytes(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def events(body: bytes) -> list[Any]:
    lines = [line[6:] for line in body.decode().split("\n\n") if line.startswith("data: ")]
    return [line if line == "[DONE]" else msgspec.json.decode(line) for line in lines]


async def test_answer() -> None:
    exchange = Exchange(chat("hi"))
    await exchange.run(app())
    assert exchange.status == 200
    assert msgspec.json.decode(exchange.body_bytes)["choices"][0]["message"]["content"] == (
        "echo: hi"
    )


async def test_stream() -> None:
    exchange = Exchange(chat("paced", stream=True))
    await exchange.run(app())
    assert exchange.status == 200
    got = events(exchange.body_bytes)
    assert got[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in got[:-1])
    assert text == "w0 w1 w2 "


async def test_deadline_cancels_the_handler() -> None:
    exchange = Exchange(chat("hang", timeout=0.2))
    await exchange.run(app())
    assert exchange.status == 408
    assert SEEN.finally_ran


async def test_idle_stream_ends_with_an_error_event() -> None:
    exchange = Exchange(chat("stall", stream=True, timeout=0.3))
    await exchange.run(app())
    got = events(exchange.body_bytes)
    assert got[0]["choices"][0]["delta"]["content"] == "w0 "
    assert got[-1]["error"]["type"] == "timeout_error"
    assert SEEN.finally_ran


async def test_request_timeout_bounds_the_whole_stream() -> None:
    exchange = Exchange(chat("ticking", stream=True, timeout=0.4))
    await exchange.run(app())
    got = events(exchange.body_bytes)
    assert got[0]["choices"][0]["delta"]["content"] == "w0 "
    assert got[-1]["error"]["message"] == "Request timed out after 0.4 s"
    assert SEEN.finally_ran


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_disconnect_cancels_the_handler(stream: bool) -> None:
    exchange = Exchange(chat("hang" if not stream else "endless", stream=stream))
    gateway_app = app()
    async with anyio.create_task_group() as tg:
        tg.start_soon(exchange.run, gateway_app)
        with anyio.fail_after(5):
            await SEEN.started.wait()
        exchange.leave.set()
    assert SEEN.finally_ran
    assert not exchange.body_bytes.endswith(b"data: [DONE]\n\n")
    stats = gateway_app.runtime.metrics.statuses("chat_completions")
    assert stats == {499: 1}


class SyncOnly(gateway.CustomLLM):
    def completion(self, *args: Any, **kwargs: Any) -> Any:
        return gateway.completion("x", [], mock_response="from a worker thread")


async def test_sync_only_handler() -> None:
    gateway_app = create_app(
        {
            "model_list": [{"model_name": "s", "litellm_params": {"model": "s/m"}}],
            "litellm_settings": {
                "custom_provider_map": [{"provider": "s", "custom_handler": SyncOnly()}]
            },
        }
    )
    exchange = Exchange({"model": "s", "messages": [{"role": "user", "content": "hi"}]})
    await exchange.run(gateway_app)
    assert exchange.status == 200, exchange.body_bytes
    content = msgspec.json.decode(exchange.body_bytes)["choices"][0]["message"]["content"]
    assert content == "from a worker thread"
