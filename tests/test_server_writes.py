"""How the server's protocols put answers on the wire (gateway/_server.py's
``_HeadWithBody``): a JSON answer's head and body in one write, a stream's head at once.

Served by a real uvicorn on loopback, through the gateway's own protocols for httptools
and h11, with the socket transport wrapped to record each write the protocol makes."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

import gateway
from gateway._server import Limits, _HeadWithBody, protocol_factory
from gateway.app import create_app
from tests.fake_upstream import serve_in_thread

CONFIG = {
    "model_list": [
        {"model_name": "canned", "litellm_params": {"model": "mock/x", "mock_response": "hi"}},
        {"model_name": "slow", "litellm_params": {"model": "slow-second-chunk/m"}},
    ]
}
SECOND_CHUNK_AFTER_S = 0.1


class SlowSecondChunk(gateway.CustomLLM):
    async def astreaming(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        yield {"text": "first", "is_finished": False, "finish_reason": None, "index": 0}
        await anyio.sleep(SECOND_CHUNK_AFTER_S)
        yield {"text": "second", "is_finished": True, "finish_reason": "stop", "index": 0}


class Recorder:
    """The socket's transport, recording what is written to it."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self.writes = writes

    def write(self, data: bytes) -> None:
        if data:  # an empty write sends nothing
            self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@pytest.fixture(params=["httptools", "h11"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Any, list[bytes]]]:
    gateway.register_provider("slow-second-chunk", SlowSecondChunk())
    writes: list[bytes] = []
    factory = protocol_factory(request.param, Limits())

    class Recording(factory.func):  # type: ignore[misc,name-defined]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(Recorder(transport, writes))

    protocol = functools.partial(Recording, **factory.keywords)
    with serve_in_thread(create_app(CONFIG), http=protocol) as handle:
        yield handle, writes


def _post(sock: socket.socket, body: bytes) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    sock.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body)


def _read_json_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_json_answer_is_one_write(served: tuple[Any, list[bytes]]) -> None:
    handle, writes = served
    chat = b'{"model": "canned", "messages": [{"role": "user", "content": "hi"}]}'
    with socket.create_connection(("127.0.0.1", handle.port), timeout=10) as sock:
        answers = []
        for _ in range(3):  # one keep-alive connection
            _post(sock, chat)
            answers.append(_read_json_answer(sock))
    # Head and body went out together: one write (one system call) an answer, not two.
    assert writes == answers
    assert all(w.startswith(b"HTTP/1.1 200 ") and w.endswith(b"}") for w in writes)


def test_a_stream_sends_each_event_as_it_comes(served: tuple[Any, list[bytes]]) -> None:
    handle, writes = served
    chat = b'{"model": "slow", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    with socket.create_connection(("127.0.0.1", handle.port), timeout=10) as sock:
        _post(sock, chat)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += sock.recv(65536)
    # The head with the first event (the gateway starts a stream's answer once its
    # first event is there); nothing later is held: the second event goes in its own turn.
    assert writes[0].startswith(b"HTTP/1.1 200 ") and b'"first"' in writes[0]
    assert b'"second"' not in writes[0]
    assert b"".join(writes) == data


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


async def test_held_head_keeps_the_order_of_every_write() -> None:
    loop = asyncio.get_running_loop()
    real = FakeTransport()
    transport = _HeadWithBody(real, loop)
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    transport.write(b"more")
    assert real.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody"), ("write", b"more")]
    # A head nothing follows in its turn goes alone at the next one.
    real.calls.clear()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    await asyncio.sleep(0)
    assert real.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\n")]
    # Closed with a head held: the head first, then the close, as before.
    real.calls.clear()
    transport.write(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
    transport.close()
    await asyncio.sleep(0)
    assert real.calls == [("write", b"HTTP/1.1 503 Service Unavailable\r\n\r\n"), ("close", b"")]
    assert transport.is_closing()
