"""The gateway's own server protocols tell a request its client left, with no watcher task.

Under ``gateway._server``'s protocols (what the ``gateway`` command runs) the scope
carries a ``Disconnect`` the protocol fires when the connection is lost, and the
handler is cancelled at once. Under plain uvicorn the app falls back to a watcher task
reading ``receive``; both must cancel the same way.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

import gateway
from gateway._server import Limits, protocol_factory
from gateway.app import create_app
from tests.fake_upstream import serve_in_thread


class Seen:
    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.watchers = -1


SEEN = Seen()


def _watchers() -> int:
    """Disconnect watcher tasks alive on this loop."""
    return sum(
        getattr(t.get_coro(), "__qualname__", "") == "_DisconnectWatch._watch"
        for t in asyncio.all_tasks()
    )


class Slow(gateway.CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.05)  # a watcher, if any, has started by now
        SEEN.watchers = _watchers()
        SEEN.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            SEEN.cancelled.set()
            raise
        return gateway.completion("x", [], mock_response="too late")

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        yield {"text": "first", "is_finished": False, "finish_reason": "", "index": 0}
        await asyncio.sleep(0.05)
        SEEN.watchers = _watchers()
        SEEN.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            SEEN.cancelled.set()
            raise
        yield {"text": "late", "is_finished": True, "finish_reason": "stop", "index": 0}


def _app() -> Any:
    return create_app(
        {
            "model_list": [{"model_name": "slow", "litellm_params": {"model": "slow/m"}}],
            "litellm_settings": {
                "custom_provider_map": [{"provider": "slow", "custom_handler": Slow()}]
            },
        }
    )


def _leave_mid_request(port: int, stream: bool) -> None:
    body = b'{"model": "slow", "messages": [{"role": "user", "content": "hi"}]%s}' % (
        b', "stream": true' if stream else b""
    )
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        assert SEEN.started.wait(10)
        if stream:
            assert b"first" in sock.recv(65536)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("http", "watchers"),
    [
        (protocol_factory("httptools", Limits()), 0),
        (protocol_factory("h11", Limits()), 0),
        (HttpToolsProtocol, 1),  # plain uvicorn: the app's watcher task
        ("h11", 1),
    ],
    ids=["gateway-httptools", "gateway-h11", "uvicorn-httptools", "uvicorn-h11"],
)
def test_client_leaving_cancels_the_call(http: Any, watchers: int, stream: bool) -> None:
    global SEEN
    SEEN = Seen()
    app = _app()
    with serve_in_thread(app, loop="uvloop", http=http) as server:
        _leave_mid_request(server.port, stream)
        assert SEEN.cancelled.wait(5), "the running call was not cancelled"
        assert SEEN.watchers == watchers
        metrics = app.runtime.metrics
        deadline = time.monotonic() + 5
        while sum(metrics.statuses("chat_completions").values()) != 1:
            assert time.monotonic() < deadline, metrics.statuses("chat_completions")
            time.sleep(0.02)
        assert list(metrics.statuses("chat_completions")) == [499]


def test_running_loop_is_the_loop_running_now() -> None:
    """The per-thread cache never answers with a loop that stopped, or another thread's."""
    from gateway._aio import running_loop

    async def which() -> asyncio.AbstractEventLoop:
        assert running_loop() is asyncio.get_running_loop()
        return running_loop()

    first = asyncio.run(which())
    second = asyncio.run(which())  # a new loop in the same thread
    assert first is not second
    with pytest.raises(RuntimeError):
        running_loop()  # none running: as get_running_loop

    seen: list[asyncio.AbstractEventLoop] = []

    async def outer() -> None:
        here = running_loop()
        other = threading.Thread(target=lambda: seen.append(asyncio.run(which())))
        other.start()
        await asyncio.to_thread(other.join)
        assert running_loop() is here is asyncio.get_running_loop()

    asyncio.run(outer())
    assert seen and seen[0] is not first
