"""HTTP/1.1 pipelining: a client that leaves cancels its running call, as any disconnect.

A raw socket sends two requests back to back and closes before the first is
answered. uvicorn with httptools (the CLI's choice) never told the first request's
handler, so it ran its whole course for nobody.
"""

from __future__ import annotations

import asyncio
import socket
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_cli import Server

import gateway
from gateway._server import Limits, protocol_factory
from gateway.app import create_app
from tests.fake_upstream import serve_in_thread


class Seen:
    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()


SEEN = Seen()


class Slow(gateway.CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        SEEN.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            SEEN.cancelled.set()
            raise
        return gateway.completion("x", [], mock_response="too late")


def pipelined(port: int, started: threading.Event | None = None) -> None:
    """Two requests to the slow model in one write; the client leaves once the first runs."""
    body = b'{"model": "slow", "messages": [{"role": "user", "content": "hi"}]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request + request)
        if started is not None:
            assert started.wait(10)
        time.sleep(0.5)


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_pipelined_client_leaving_cancels_the_running_call(http: str) -> None:
    global SEEN
    SEEN = Seen()
    app = create_app(
        {
            "model_list": [{"model_name": "slow", "litellm_params": {"model": "slow/m"}}],
            "litellm_settings": {
                "custom_provider_map": [{"provider": "slow", "custom_handler": Slow()}]
            },
        }
    )
    with serve_in_thread(app, http=protocol_factory(http, Limits())) as server:
        pipelined(server.port, SEEN.started)
        assert SEEN.cancelled.wait(5), "the running call was not cancelled"
        metrics = app.runtime.metrics
        deadline = time.monotonic() + 5
        while metrics.statuses("chat_completions").get(499) != 1:
            assert time.monotonic() < deadline, metrics.statuses("chat_completions")
            time.sleep(0.02)
        assert metrics.statuses("chat_completions") == {499: 1}  # the queued one never ran


def test_the_cli_cancels_a_pipelined_call_when_the_client_leaves(tmp_path: Path) -> None:
    mark = tmp_path / "cancelled"
    (tmp_path / "handler.py").write_text(
        textwrap.dedent(
            f"""
            import asyncio
            import pathlib
            import gateway

            class Slow(gateway.CustomLLM):
                async def acompletion(self, *args, **kwargs):
                    try:
                        await asyncio.sleep(30)
                    except asyncio.CancelledError:
                        pathlib.Path({str(mark)!r}).write_text("yes")
                        raise

            slow = Slow()
            """
        )
    )
    (tmp_path / "config.yaml").write_text(
        textwrap.dedent(
            """
            model_list:
              - model_name: slow
                litellm_params: {model: slow/m}
            litellm_settings:
              custom_provider_map:
                - {provider: slow, custom_handler: handler.slow}
            """
        )
    )
    server = Server("--config", str(tmp_path / "config.yaml"), "--host", "127.0.0.1", "--port", "0")
    try:
        port = int(server.wait_for_line(r"listening on http://127.0.0.1:(\d+)").group(1))
        pipelined(port)
        deadline = time.monotonic() + 10
        while not mark.exists():
            assert time.monotonic() < deadline, "the running call was not cancelled"
            time.sleep(0.05)
    finally:
        server.kill()
