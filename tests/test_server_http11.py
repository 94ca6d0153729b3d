"""HTTP/1.1 as the ``gateway`` command's protocols speak it (gateway/_server_httptools.py
and, as a check on the same expectations, uvicorn's h11 protocol with our limits).

A raw socket on loopback against a small ASGI app: what a client sees for HEAD,
``Expect: 100-continue``, chunked bodies both ways, pipelining, large bodies each way
(flow control), broken apps, forbidden header values, upgrades and closes.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from gateway._server import Limits, protocol_factory
from tests.fake_upstream import ServerHandle, serve_in_thread

BIG = bytes(range(256)) * 4096 * 8  # 8 MiB: far past any socket or transport buffer


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    path = scope["path"]
    if path == "/raise":
        raise RuntimeError("boom")
    if path == "/nothing":
        return
    if path == "/chunked":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(0, len(BIG), 65536):
            piece = BIG[i : i + 65536]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/whoami":
        client = scope["client"]
        body = f"{scope['scheme']} {client[0] if client else None}".encode()
    headers = [(b"content-type", b"text/plain")]
    status = 200
    if path == "/bad-header":
        headers.append((b"x-evil", b"a\r\nset-cookie: stolen=1"))
    elif path == "/bad-name":
        headers.append((b"x evil", b"a"))
    elif path == "/status-499":
        status = 499
    answer = body if path in ("/echo", "/whoami") else b"hello"
    headers.append((b"content-length", str(len(answer)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module", params=["httptools", "h11"])
def served(request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    with serve_in_thread(app, http=protocol_factory(request.param, Limits())) as handle:
        handle.protocol = request.param  # type: ignore[attr-defined]
        yield handle


class Reader:
    """Reads HTTP/1.1 responses off a socket, one at a time."""

    def __init__(self, sock: socket.socket, pause: float = 0.0) -> None:
        self.sock = sock
        self.buffer = b""
        self.pause = pause

    def _more(self) -> None:
        if self.pause:
            time.sleep(self.pause)
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(self.buffer)
        self.buffer += data

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._more()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._more()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def response(self, head_only: bool = False) -> tuple[int, dict[bytes, bytes], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split(b" ")[1])
        if head_only or status == 100:
            return status, headers, b""
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while size := int(self._line(), 16):
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            assert self._line() == b""
            return status, headers, body
        return status, headers, self._take(int(headers.get(b"content-length", b"0")))

    def closed(self) -> bool:
        try:
            self._more()
        except EOFError:
            return True
        return False


def _connect(handle: ServerHandle) -> socket.socket:
    return socket.create_connection(("127.0.0.1", handle.port), timeout=10)


def _request(method: str, path: str, body: bytes = b"", extra: bytes = b"") -> bytes:
    return b"%s %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n%s\r\n%s" % (
        method.encode(),
        path.encode(),
        len(body),
        extra,
        body,
    )


def test_a_head_request_gets_the_head_alone(served: ServerHandle) -> None:
    with _connect(served) as sock:
        reader = Reader(sock)
        sock.sendall(_request("HEAD", "/fixed") + _request("GET", "/fixed"))
        status, headers, _ = reader.response(head_only=True)
        assert status == 200 and headers[b"content-length"] == b"5"
        # No body went out: the next answer on the connection starts right there.
        assert reader.response()[::2] == (200, b"hello")


def test_expect_100_continue_asks_for_the_body(served: ServerHandle) -> None:
    with _connect(served) as sock:
        reader = Reader(sock)
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
        )
        assert reader.response()[0] == 100
        sock.sendall(b"ping")
        assert reader.response()[2] == b"ping"


def test_a_chunked_request_body_is_read_whole(served: ServerHandle) -> None:
    with _connect(served) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        )
        assert Reader(sock).response()[2] == b"abcdefg"


def test_an_answer_without_a_length_is_chunked(served: ServerHandle) -> None:
    with _connect(served) as sock:
        sock.sendall(_request("GET", "/chunked"))
        _, headers, body = Reader(sock).response()
    assert headers[b"transfer-encoding"] == b"chunked" and body == b"one,two,three"


def test_pipelined_requests_are_answered_in_order(served: ServerHandle) -> None:
    with _connect(served) as sock:
        sock.sendall(b"".join(_request("POST", "/echo", word) for word in (b"a", b"bb", b"ccc")))
        reader = Reader(sock)
        assert [reader.response()[2] for _ in range(3)] == [b"a", b"bb", b"ccc"]


def test_large_bodies_both_ways_under_flow_control(served: ServerHandle) -> None:
    # A body past the read buffer's high-water mark (reading pauses, then resumes), and
    # an answer far larger than what the socket holds, read slowly (writing pauses).
    with _connect(served) as sock:
        reader = Reader(sock)
        sock.sendall(_request("POST", "/echo", BIG[: 1 << 20]))
        assert reader.response()[2] == BIG[: 1 << 20]
        sock.sendall(_request("GET", "/big"))
        reader.pause = 0.001
        body = reader.response()[2]
    assert hashlib.sha256(body).digest() == hashlib.sha256(BIG).digest()


@pytest.mark.parametrize("path", ["/bad-header", "/bad-name"])
def test_a_forbidden_header_never_reaches_the_wire(served: ServerHandle, path: str) -> None:
    with _connect(served) as sock:
        sock.sendall(_request("GET", path))
        reader = Reader(sock)
        try:
            status, _, body = reader.response()
        except EOFError:  # closed without an answer: also nothing injected
            status, body = 0, b""
        assert b"stolen" not in reader.buffer + body
    assert status in (0, 500)


@pytest.mark.parametrize("path", ["/raise", "/nothing"])
def test_an_app_that_fails_gets_a_500_and_a_close(served: ServerHandle, path: str) -> None:
    with _connect(served) as sock:
        sock.sendall(_request("GET", path))
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert (status, body) == (500, b"Internal Server Error")
        assert headers[b"connection"] == b"close" and reader.closed()


def test_a_status_without_a_reason_phrase(served: ServerHandle) -> None:
    with _connect(served) as sock:
        sock.sendall(_request("GET", "/status-499"))
        reader = Reader(sock)
        assert reader.response()[0] == 499
        sock.sendall(_request("GET", "/fixed"))  # and the connection lives on
        assert reader.response()[2] == b"hello"


@pytest.mark.parametrize(
    "extra, version",
    [(b"connection: close\r\n", b"1.1"), (b"", b"1.0")],
    ids=["connection-close", "http-1.0"],
)
def test_a_client_that_asks_to_close_is_closed(
    served: ServerHandle, extra: bytes, version: bytes
) -> None:
    with _connect(served) as sock:
        request = _request("GET", "/fixed", extra=extra).replace(b"HTTP/1.1", b"HTTP/" + version)
        sock.sendall(request)
        reader = Reader(sock)
        assert reader.response()[2] == b"hello"
        assert reader.closed()


def test_a_request_that_is_not_http_gets_a_400(served: ServerHandle) -> None:
    with _connect(served) as sock:
        sock.sendall(b"HELLO THERE\r\n\r\n")
        reader = Reader(sock)
        assert reader.response()[0] == 400
        assert reader.closed()


def test_an_upgrade_request_is_answered_as_http_then_closed(served: ServerHandle) -> None:
    if served.protocol != "httptools":  # type: ignore[attr-defined]
        pytest.skip("uvicorn's h11 protocol hands upgrades to its WebSocket protocol")
    with _connect(served) as sock:
        sock.sendall(
            _request("GET", "/fixed", extra=b"connection: upgrade\r\nupgrade: websocket\r\n")
        )
        reader = Reader(sock)
        assert reader.response()[2] == b"hello"
        assert reader.closed()


FORWARDED = b"x-forwarded-for: 203.0.113.7, 10.0.0.2\r\nx-forwarded-proto: https\r\n"


@pytest.mark.parametrize("http", ["httptools", "h11"])
@pytest.mark.parametrize(
    "allow, seen",
    [
        ("127.0.0.1", b"https 10.0.0.2"),  # the default: the nearest untrusted hop
        ("127.0.0.1,10.0.0.2", b"https 203.0.113.7"),
        ("10.9.9.9", b"http 127.0.0.1"),  # the peer is not trusted: headers ignored
    ],
)
def test_forwarded_headers_from_a_trusted_proxy(http: str, allow: str, seen: bytes) -> None:
    protocol = protocol_factory(http, Limits())
    with serve_in_thread(app, http=protocol, forwarded_allow_ips=allow) as handle:
        with _connect(handle) as sock:
            sock.sendall(_request("GET", "/whoami", extra=FORWARDED) + _request("GET", "/whoami"))
            reader = Reader(sock)
            assert reader.response()[2] == seen
            assert reader.response()[2] == b"http 127.0.0.1"  # no headers: the peer itself


class _Transport(asyncio.Transport):
    """A connection's transport in memory: what the protocol writes is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


def test_a_request_leaves_no_garbage_for_the_collector() -> None:
    # A reference cycle per request (the request's state and its scope pointing at each
    # other) is freed only by the cyclic collector: a pause every few thousand requests
    # that showed as a p99 five times the baseline's under load. Counted in a process of
    # its own: other tests' servers in this one make garbage of their own meanwhile.
    out = _in_own_process("from tests.test_server_http11 import _garbage; print(_garbage())")
    assert out.stdout.split() == ["0", "0"], out.stdout + out.stderr


def test_a_closed_connection_leaves_no_garbage_for_the_collector() -> None:
    # The protocol pointed at its parser's callbacks and its requests' cycles, which
    # pointed back: each closed connection left ~24 objects (its last request's task and
    # context among them) to the collector, and a client that never keeps a connection
    # alive left them a request (+12 MB of RSS at 32 such clients).
    out = _in_own_process(
        "from tests.test_server_http11 import _connection_garbage as g;"
        " print(g('httptools'), g('h11'))"
    )
    assert out.stdout.split() == ["0", "0"], out.stdout + out.stderr


def _in_own_process(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by a Python process of its own, at the repo root."""
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )


def _connection_garbage(http: str) -> int:
    """Objects left to the cyclic collector by 50 connections of one request each."""
    from gateway.app import create_app

    chat = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    request = _request("POST", "/v1/chat/completions", chat, b"content-type: application/json\r\n")
    asgi = create_app({"model_list": [{"model_name": "m", "litellm_params": {"model": "mock/m"}}]})

    async def connections() -> int:
        config = uvicorn.Config(
            asgi, http=protocol_factory(http, Limits()), lifespan="off", access_log=False
        )
        config.load()
        state = ServerState()

        async def one() -> None:
            protocol = config.http_protocol_class(config=config, server_state=state, app_state={})
            transport = _Transport()
            protocol.connection_made(transport)
            protocol.data_received(request)
            while b"HTTP/1.1 200 " not in transport.written or state.tasks:
                await asyncio.sleep(0)
            protocol.connection_lost(None)

        return await _collected(one, warm_up=5, runs=50)

    return asyncio.run(connections())


async def _collected(one: Any, *, warm_up: int, runs: int) -> int:
    """What the cyclic collector finds after ``runs`` calls of ``one`` (after a warm-up),
    with automatic collections off meanwhile."""
    for _ in range(warm_up):
        await one()
    gc.collect()
    gc.disable()
    try:
        for _ in range(runs):
            await one()
        await asyncio.sleep(0.01)
        return gc.collect()
    finally:
        gc.enable()


def _garbage() -> str:
    """Objects left to the cyclic collector by 100 requests: a bare app's, a gateway's."""
    from gateway.app import create_app

    chat = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    gateway_app = create_app(
        {"model_list": [{"model_name": "m", "litellm_params": {"model": "mock/m"}}]}
    )

    async def served(asgi: Any, request: bytes) -> int:
        config = uvicorn.Config(asgi, http=protocol_factory("httptools", Limits()), lifespan="off")
        config.load()
        protocol = config.http_protocol_class(
            config=config, server_state=ServerState(), app_state={}
        )
        transport = _Transport()
        protocol.connection_made(transport)

        async def one() -> None:
            answers = transport.written.count(b"HTTP/1.1 200 ")
            protocol.data_received(request)
            while transport.written.count(b"HTTP/1.1 200 ") == answers:
                await asyncio.sleep(0)

        return await _collected(one, warm_up=20, runs=100)

    bare = asyncio.run(served(app, _request("POST", "/echo", b"x")))
    request = _request("POST", "/v1/chat/completions", chat, b"content-type: application/json\r\n")
    return f"{bare} {asyncio.run(served(gateway_app, request))}"


def test_a_connection_is_one_object_without_a_dict() -> None:
    # Its attributes in slots (benchmarks.concurrency: 69 -> 44 simulated L2 misses a
    # proxied request at 256 connections): one added without a slot fails here.
    from gateway._server_httptools import HttpToolsProtocol, _Cycle

    assert HttpToolsProtocol.__dictoffset__ == 0
    assert _Cycle.__dictoffset__ == 0
