"""The server's own limits (gateway/_server.py), with raw sockets against a real uvicorn on
loopback, for httptools and h11 alike: head sizes, slow clients, idle connections and the
connection cap."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from test_cli import Server, write_config

from gateway._server import RESERVE, Limits, protocol_factory
from gateway.app import create_app
from tests.fake_upstream import serve_in_thread

CONFIG = {
    "model_list": [
        {"model_name": "canned", "litellm_params": {"model": "mock/x", "mock_response": "hi"}}
    ]
}
CHAT = b'{"model": "canned", "messages": [{"role": "user", "content": "hi"}]}'


# The in-process servers' header, body and keep-alive timeouts; the waits below scale
# with it (the tests wait these out: short, yet long beside a loaded machine's delays).
TIMEOUT = 0.25


def limits(**overrides: Any) -> Limits:
    values: dict[str, Any] = {"header_timeout": TIMEOUT, "body_timeout": TIMEOUT, **overrides}
    return Limits(**values)


@pytest.fixture(params=["httptools", "h11"])
def impl(request: pytest.FixtureRequest) -> str:
    return request.param


def serve(impl: str, **overrides: Any) -> Any:
    return serve_in_thread(
        create_app(CONFIG),
        http=protocol_factory(impl, limits(**overrides)),
        timeout_keep_alive=TIMEOUT,
    )


@pytest.fixture
def server(impl: str) -> Iterator[Any]:
    with serve(impl) as handle:
        yield handle


def connect(handle: Any) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", handle.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def read_response(sock: socket.socket) -> bytes:
    """Exactly one response (content-length framed): a pipelined next one stays unread."""
    sock.settimeout(10)
    head = b""
    while True:
        peeked = sock.recv(65536, socket.MSG_PEEK)
        assert peeked, head
        end = (head[-3:] + peeked).find(b"\r\n\r\n")
        if end >= 0:
            head += sock.recv(end + 4 - len(head[-3:]))
            break
        head += sock.recv(len(peeked))
    length = int(response(head)[1]["content-length"])
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk
        body += chunk
    return head + body


def response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, msgspec.json.decode(body) if body else None


def error_response(raw: bytes, status: int) -> dict[str, Any]:
    got, headers, body = response(raw)
    assert got == status, raw[:300]
    assert headers["connection"] == "close"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def chat_request(extra_headers: bytes = b"", path: bytes = b"/v1/chat/completions") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n" % len(CHAT) + extra_headers + b"\r\n" + CHAT
    )


def test_normal_requests_pass(server: Any) -> None:
    with connect(server) as sock:
        for _ in range(3):  # keep-alive: several requests on one connection
            sock.sendall(chat_request(b"x-some: " + b"a" * 8000 + b"\r\n"))
            data = read_response(sock)
            assert data.startswith(b"HTTP/1.1 200 "), data[:200]


# -- sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["one", "many", "with-body"])
def test_headers_over_the_cap_are_431(server: Any, shape: str) -> None:
    if shape == "many":  # 700 headers of 100 bytes: 70 KB in all
        extra = b"".join(b"x-h%d: %s\r\n" % (i, b"a" * 92) for i in range(700))
    else:
        extra = b"x-big: " + b"a" * (65 * 1024) + b"\r\n"
    request = chat_request(extra)
    if shape == "with-body":  # the head and a big body in one write: read past the head
        request = request.replace(b"content-length: %d" % len(CHAT), b"content-length: 300000")
        request += b" " * (300000 - len(CHAT))
    with connect(server) as sock:
        with contextlib.suppress(OSError):  # the server may close before reading it all
            sock.sendall(request)
        error = error_response(read_until_closed(sock), 431)
    assert error["code"] == "headers_too_large"
    assert error["message"] == "The request's headers are larger than 65536 bytes"


def test_endless_header_is_cut_early(server: Any) -> None:
    """A header that never ends: the server answers and closes long before 64 MB."""
    sent = 0
    with connect(server) as sock:
        sock.sendall(b"GET /health/liveliness HTTP/1.1\r\nhost: x\r\nx-endless: ")
        chunk = b"a" * 65536
        with pytest.raises(OSError):  # EPIPE or ECONNRESET once the server has closed
            while sent < 64 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
    # The kernel's socket buffers hold a few MB at most; the server read ~80 KB of it.
    assert sent < 16 * 1024 * 1024


def test_url_over_the_cap_is_414(server: Any) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"GET /health/liveliness?q=" + b"a" * (16 * 1024) + b" HTTP/1.1\r\nhost: x\r\n\r\n"
        )
        error = error_response(read_until_closed(sock), 414)
    assert error["code"] == "url_too_long"
    # Just under it: served.
    with connect(server) as sock:
        url = b"/health/liveliness?q=" + b"a" * (16 * 1024 - 30)
        sock.sendall(b"GET " + url + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")


# -- slow and idle clients -----------------------------------------------------------------


def test_silent_connection_is_closed_after_the_header_timeout(server: Any) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        raw = read_until_closed(sock)
        elapsed = time.monotonic() - started
    error = error_response(raw, 408)
    assert error["code"] == "header_timeout"
    assert 0.8 * TIMEOUT < elapsed < 5


def test_trickled_headers_are_cut_after_the_header_timeout(server: Any) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        request = b"GET /health/liveliness HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 100
        sock.settimeout(0.05)
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                if sock.recv(65536, socket.MSG_PEEK):
                    break
            except TimeoutError:
                pass
            assert time.monotonic() - started < 5, "never cut"
        raw = read_until_closed(sock)
    assert error_response(raw, 408)["code"] == "header_timeout"


def test_trickled_body_is_cut_with_408(server: Any) -> None:
    with connect(server) as sock:
        head = chat_request().split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        sock.sendall(head)
        started = time.monotonic()
        sock.settimeout(0.05)
        for byte in CHAT[:-1]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                if sock.recv(65536, socket.MSG_PEEK):
                    break
            except TimeoutError:
                pass
            assert time.monotonic() - started < 5, "never cut"
        raw = read_until_closed(sock)
    error = error_response(raw, 408)
    assert error["code"] == "body_timeout"


def test_trickled_body_after_an_early_answer_is_cut(server: Any) -> None:
    """413 comes at once; a client that keeps trickling the body is still cut off."""
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999\r\n\r\n"
        )
        answer = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 413 ")
        started = time.monotonic()
        sock.settimeout(0.05)
        while True:
            try:
                sock.sendall(b"a")
                if sock.recv(65536) == b"":
                    break
            except TimeoutError:
                pass
            except OSError:
                break
            assert time.monotonic() - started < 5, "never cut"


def test_a_slow_app_is_not_a_slow_client(impl: str) -> None:
    """The timeouts bound what the client sends, never how long the answer takes."""
    config = {
        "model_list": [
            {
                "model_name": "slow",
                # Twice the header, body and keep-alive timeouts.
                "litellm_params": {
                    "model": "mock/x",
                    "mock_response": "hi",
                    "mock_delay": 2 * TIMEOUT,
                },
            }
        ]
    }
    app = create_app(config)
    with serve_in_thread(app, http=protocol_factory(impl, limits())) as handle:
        with connect(handle) as sock:
            body = CHAT.replace(b"canned", b"slow")
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            data = read_response(sock)
    assert data.startswith(b"HTTP/1.1 200 "), data[:300]


def test_pipelined_request_waiting_behind_a_slow_answer_is_not_cut(impl: str) -> None:
    """A pipelined request's body is timed from when it is its turn, never by cutting the
    connection under the answer before it."""
    config = {
        "model_list": [
            {
                "model_name": "slow",
                "litellm_params": {
                    "model": "mock/x",
                    "mock_response": "hi",
                    "mock_delay": 2.2 * TIMEOUT,
                },
            },
            CONFIG["model_list"][0],
        ]
    }
    app = create_app(config)
    with serve_in_thread(app, http=protocol_factory(impl, limits())) as handle:
        with connect(handle) as sock:
            slow = CHAT.replace(b"canned", b"slow")
            first = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
            second_head = (
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
            )
            sock.sendall(first % (len(slow), slow) + second_head % len(CHAT) + CHAT[:10])
            time.sleep(1.6 * TIMEOUT)  # past body_timeout, while the first is still answered
            sock.sendall(CHAT[10:])
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")


def test_refused_pipelined_head_is_never_read_as_the_earlier_answer(impl: str) -> None:
    config = {
        "model_list": [
            {
                "model_name": "slow",
                # Long enough for the server to parse the next head meanwhile.
                "litellm_params": {"model": "mock/x", "mock_response": "hi", "mock_delay": 0.5},
            }
        ]
    }
    app = create_app(config)
    with serve_in_thread(app, http=protocol_factory(impl, limits())) as handle:
        with connect(handle) as sock:
            slow = CHAT.replace(b"canned", b"slow")
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
                % (len(slow), slow)
                + b"GET /health/liveliness?q="
                + b"a" * (17 * 1024)
                + b" HTTP/1.1\r\nhost: x\r\n\r\n"
            )
            raw = read_until_closed(sock)
    # Either the first answer and then the 414, in order, or the connection just closed:
    # never a 414 first, which the client would take for the first request's answer.
    assert not raw.startswith(b"HTTP/1.1 414"), raw[:100]


def test_idle_keep_alive_connection_is_closed(server: Any) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health/liveliness HTTP/1.1\r\nhost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert 0.6 * TIMEOUT < time.monotonic() - started < 5


# -- the connection cap --------------------------------------------------------------------


def test_over_the_connection_cap_health_still_answers(impl: str) -> None:
    cap = 8
    with serve(impl, max_connections=cap, header_timeout=30) as handle:
        open_ = handle.server.server_state.connections

        def until_open(n: int) -> None:
            deadline = time.monotonic() + 10
            while len(open_) != n:
                assert time.monotonic() < deadline, (len(open_), n)
                time.sleep(0.01)

        held = [connect(handle) for _ in range(cap)]
        try:
            until_open(cap)  # all accepted
            # Past the cap: health and metrics answer, anything else is refused.
            with connect(handle) as sock:
                sock.sendall(b"GET /health/liveliness HTTP/1.1\r\nhost: x\r\n\r\n")
                assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            with connect(handle) as sock:
                sock.sendall(b"GET /health/readiness HTTP/1.1\r\nhost: x\r\n\r\n")
                assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            with connect(handle) as sock:
                sock.sendall(chat_request())
                raw = read_until_closed(sock)
            error = error_response(raw, 503)
            assert error["code"] == "too_many_connections"
            assert response(raw)[1]["retry-after"] == "1"
            # Past the reserve too: refused at once.
            held += [connect(handle) for _ in range(RESERVE)]
            until_open(cap + RESERVE)
            with connect(handle) as sock:
                raw = read_until_closed(sock)
            assert error_response(raw, 503)["code"] == "too_many_connections"
        finally:
            for sock in held:
                sock.close()
        until_open(0)
        with connect(handle) as sock:
            sock.sendall(chat_request())
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")


# -- the gateway command -------------------------------------------------------------------

CLI_CONFIG = """
model_list:
  - model_name: canned
    litellm_params: {model: mock/x, mock_response: "hi"}
gateway_settings:
  max_url_bytes: 1024
  max_header_bytes: 2048
  header_timeout: 0.5
  body_timeout: 0.5
  keepalive_timeout: 0.25
  max_connections: 4
"""

# Makes uvloop and httptools unimportable, as on a machine without them.
BLOCKER = """
import sys


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("uvloop", "httptools"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Block())
"""


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port


def _check_cli_limits(port: int) -> None:
    handle = _Port(port)
    with connect(handle) as sock:
        sock.sendall(b"GET /health/liveliness?q=" + b"a" * 1100 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        assert error_response(read_until_closed(sock), 414)["code"] == "url_too_long"
    with connect(handle) as sock:
        sock.sendall(chat_request(b"x-big: " + b"a" * 2100 + b"\r\n"))
        assert error_response(read_until_closed(sock), 431)["code"] == "headers_too_large"
    with connect(handle) as sock:
        started = time.monotonic()
        assert error_response(read_until_closed(sock), 408)["code"] == "header_timeout"
        assert time.monotonic() - started < 5
    with connect(handle) as sock:  # keepalive_timeout 0.25, not uvicorn's 5
        sock.sendall(chat_request())
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started < 3
    held = [connect(handle) for _ in range(4)]
    try:
        time.sleep(0.2)
        with connect(handle) as sock:
            sock.sendall(chat_request())
            assert error_response(read_until_closed(sock), 503)["code"] == "too_many_connections"
        with connect(handle) as sock:
            sock.sendall(b"GET /health/liveliness HTTP/1.1\r\nhost: x\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()


@pytest.fixture
def cli() -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        server.kill()


@pytest.mark.parametrize("fallback", [False, True], ids=["uvloop-httptools", "asyncio-h11"])
def test_gateway_command_applies_the_limits(
    cli: list[Server], tmp_path: Any, fallback: bool
) -> None:
    config = write_config(tmp_path, CLI_CONFIG)
    env = dict(os.environ)
    if fallback:
        shim = tmp_path / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(BLOCKER)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
    server = Server("--config", str(config), "--port", "0", env=env)
    cli.append(server)
    listening = server.wait_for_line(r"^gateway: listening on http://127\.0\.0\.1:(\d+) ")
    port = int(listening[1])
    server.wait_until_live(f"http://127.0.0.1:{port}")
    _check_cli_limits(port)
    assert server.stop() == 0
    stderr = "".join(server.stderr)
    notes = [line for line in stderr.splitlines() if line.startswith("gateway: note:")]
    if fallback:
        assert notes == [
            "gateway: note: uvloop is not installed: using asyncio's event loop (slower)",
            "gateway: note: httptools is not installed: parsing HTTP with h11 (slower)",
        ]
    else:
        assert notes == []
    assert "Traceback" not in stderr


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_huge_headers_keep_memory_bounded(cli: list[Server], tmp_path: Any) -> None:
    """The issue's attack: 4 clients sending 256 MB headers at once (1.3 GB RSS before)."""
    import threading

    config = write_config(tmp_path, CLI_CONFIG.replace("max_connections: 4", "max_connections: 64"))
    server = Server("--config", str(config), "--port", "0")
    cli.append(server)
    port = int(server.wait_for_line(r"^gateway: listening on http://127\.0\.0\.1:(\d+) ")[1])
    server.wait_until_live(f"http://127.0.0.1:{port}")
    before = _rss_kib(server.process.pid)
    sent: list[int] = []

    def attack() -> None:
        total = 0
        with connect(_Port(port)) as sock:
            sock.sendall(b"GET /health/liveliness HTTP/1.1\r\nhost: x\r\nx-huge: ")
            chunk = b"a" * 65536
            try:
                while total < 256 * 1024 * 1024:
                    sock.sendall(chunk)
                    total += len(chunk)
            except OSError:
                pass
        sent.append(total)

    threads = [threading.Thread(target=attack) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    after = _rss_kib(server.process.pid)
    assert len(sent) == 4 and max(sent) < 32 * 1024 * 1024, sent
    assert after - before < 32 * 1024, (before, after)
    # And it still serves.
    with connect(_Port(port)) as sock:
        sock.sendall(chat_request())
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
