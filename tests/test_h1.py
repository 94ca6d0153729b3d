"""gateway._h1 and _h1pool, the built-in provider's upstream client, against loopback
servers that answer what each test scripts: framing, the pool's limits, retries, refused
headers, TLS and CONNECT proxies. (The provider's behaviour over it: test_openai_*.)"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trustme

import gateway
from gateway import errors
from gateway._h1 import (
    BodyTooLarge,
    ConnectError,
    InvalidHeader,
    InvalidResponse,
    PoolTimeout,
    ReadTimeout,
    ServerDisconnected,
)
from gateway._h1pool import Pool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JSON = {"content-type": "application/json"}


class Scripted:
    """A loopback server; ``handler`` runs per connection. Counts connections and keeps
    every request head it read with ``read_request``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@contextlib.asynccontextmanager
async def scripted(handler: Handler, **kwargs: Any) -> AsyncIterator[Scripted]:
    server = Scripted(handler)
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0, **kwargs)
    server.port = server.server.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        server.server.close()


async def read_request(reader: asyncio.StreamReader, seen: list[bytes] | None = None) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if seen is not None:
        seen.append(head)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return head


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@contextlib.asynccontextmanager
async def pool(**kwargs: Any) -> AsyncIterator[Pool]:
    made = Pool(**kwargs)
    try:
        yield made
    finally:
        await made.aclose()


async def fetch(p: Pool, base: str, **kwargs: Any) -> tuple[int, bytes]:
    answer = await p.request(base, "/x", JSON, b"{}", kwargs.pop("timeout", None))
    try:
        return answer.status, await answer.read(kwargs.pop("cap", 2**20), **kwargs)
    finally:
        answer.release()


async def test_one_write_a_request_and_keep_alive_reuse() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader, seen)
            writer.write(ok())

    async with scripted(handler) as server, pool() as p:
        for _ in range(3):
            assert await fetch(p, server.base) == (200, b'{"ok":true}')
        assert server.connections == 1
        assert p.stats() == {"connections": 1, "idle": 1, "active": 0, "requests": 0, "waiting": 0}
    head = seen[0].decode()
    assert head.startswith("POST /v1/x HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}\r\n" in head
    assert "content-length: 2\r\n" in head and "content-type: application/json\r\n" in head


async def test_a_reused_connection_the_server_closed_is_tried_once_more() -> None:
    requests = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(ok())
        await writer.drain()
        # A keep-alive timeout on the server's side that races the next request: it is
        # read and dropped unanswered.
        await read_request(reader)
        requests += 1

    async with scripted(handler) as server, pool() as p:
        assert (await fetch(p, server.base))[0] == 200
        assert (await fetch(p, server.base))[0] == 200
        assert server.connections == 2 and requests == 3


async def test_the_retry_takes_a_new_connection_not_another_kept_one() -> None:
    # A restarted upstream leaves every kept connection stale at once.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.05)  # both requests in flight: two connections kept
        writer.write(ok())
        await writer.drain()
        await read_request(reader)  # then dropped unanswered

    async with scripted(handler) as server, pool() as p:
        first = await asyncio.gather(fetch(p, server.base), fetch(p, server.base))
        assert [status for status, _ in first] == [200, 200]
        assert p.stats()["idle"] == 2
        assert (await fetch(p, server.base))[0] == 200
        assert server.connections == 3


async def test_a_new_connection_closed_unanswered_is_an_error_not_a_retry() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with scripted(handler) as server, pool() as p:
        with pytest.raises(ServerDisconnected):
            await fetch(p, server.base)
        assert server.connections == 1
        assert p.stats()["connections"] == 0


async def test_headers_that_would_split_the_request_are_refused_before_sending() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise AssertionError("nothing may reach the server")

    async with scripted(handler) as server, pool() as p:
        for headers in (
            {"x-a": "1\r\nx-injected: 2"},
            {"x-a": "1\nx"},
            {"x-a": "nul\0"},
            {"bad name": "1"},
            {"x-a:b": "1"},
        ):
            with pytest.raises(InvalidHeader):
                await p.request(server.base, "/x", headers, b"{}", None)
        assert server.connections == 0
    # Through the library: a client's header is a 400, not an upstream call.
    with pytest.raises(errors.BadRequestError) as info:
        await gateway.acompletion(
            "openai/x",
            [{"role": "user", "content": "hi"}],
            api_base=server.base,
            api_key="k",
            extra_headers={"x-trace": "1\r\nx-admin: yes"},
        )
    assert info.value.status_code == 400 and "x-trace" in info.value.message


async def test_max_connections_makes_requests_wait_then_time_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(ok())

    async with scripted(handler) as server, pool(max_connections=1, read_timeout=0.3) as p:
        held = await p.request(server.base, "/x", JSON, b"{}", None)  # not yet released
        waiting = asyncio.ensure_future(fetch(p, server.base))
        await asyncio.sleep(0.05)
        assert p.stats() == {"connections": 1, "idle": 0, "active": 1, "requests": 2, "waiting": 1}
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await waiting
        assert 0.15 < time.monotonic() - started < 2
        # Released, the one connection serves the next request (and a waiter gets it).
        waiting = asyncio.ensure_future(fetch(p, server.base))
        await asyncio.sleep(0.05)
        await held.read(100)
        held.release()
        assert (await waiting)[0] == 200
        assert server.connections == 1


async def test_a_full_pool_closes_another_origins_idle_connection_to_make_room() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(ok())

    async with scripted(handler) as one, scripted(handler) as two:
        async with pool(max_connections=1) as p:
            assert (await fetch(p, one.base))[0] == 200
            assert (await fetch(p, two.base))[0] == 200
            assert p.stats()["connections"] == 1


async def test_idle_connections_expire_while_an_origins_only_one_is_lent() -> None:
    """A lent connection leaves its origin's idle list empty: the trim that comes
    meanwhile still closes the other origin's expired one (it raised IndexError in the
    loop's callback and trimmed nothing)."""
    errors_seen: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors_seen.append(ctx))

    async def quick(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(ok())

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok())
        await read_request(reader)
        await asyncio.sleep(0.5)
        writer.write(ok())

    async with scripted(quick) as a, scripted(slow) as b, pool(keepalive_expiry=0.1) as p:
        assert await fetch(p, a.base) == (200, b'{"ok":true}')
        assert await fetch(p, b.base) == (200, b'{"ok":true}')
        lent = asyncio.ensure_future(fetch(p, b.base))  # b's only connection, for 0.5 s
        await asyncio.sleep(0.3)
        assert p.stats()["idle"] == 0  # a's expired after 0.1 s, b's is lent
        assert await lent == (200, b'{"ok":true}')
    assert errors_seen == []


async def test_answer_framings() -> None:
    answers = {
        # No length: the body ends when the server closes.
        "/close": b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + b"a" * 70_000,
        "/chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        "/interim": b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after"),
        "/gzip": ok(gzip.compress(b"z" * 100_000), b"content-encoding: gzip\r\n"),
        "/br": ok(b"\x0b\x02\x80hi\x03", b"content-encoding: br\r\n"),
        "/notgzip": ok(b"not gzip at all", b"content-encoding: gzip\r\n"),
        "/garbage": b"SMTP ready\r\n\r\n",
        "/twice": ok(b"first") + ok(b"second"),
        "/headers": b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n2\r\nok\r\n0\r\nX-Trailer: t\r\n\r\n",
        # Both framings at once: refused (a request-smuggling shape), not guessed.
        "/both": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n"
        b"\r\n2\r\nok\r\n0\r\n\r\n",
    }

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_request(reader)
            path = head.split(b" ")[1].decode().removeprefix("/v1")
            writer.write(answers[path])
            if path in ("/close", "/garbage", "/both"):
                await writer.drain()
                return

    async with scripted(handler) as server, pool() as p:

        async def get(path: str, cap: int = 2**20) -> tuple[Any, bytes]:
            answer = await p.request(server.base, path, JSON, b"{}", None)
            try:
                return answer, await answer.read(cap)
            finally:
                answer.release()

        answer, body = await get("/close")
        assert body == b"a" * 70_000 and answer.content_length is None
        answer, body = await get("/chunked")
        assert body == b"abcde"
        answer, body = await get("/interim")
        assert (answer.status, body) == (200, b"after")
        answer, body = await get("/gzip")
        assert body == b"z" * 100_000
        with pytest.raises(BodyTooLarge):  # counted after decompression
            await get("/gzip", cap=50_000)
        with pytest.raises(InvalidResponse, match="content-encoding 'br'"):
            await get("/br")
        with pytest.raises(InvalidResponse, match="does not decompress"):
            await get("/notgzip")
        with pytest.raises(InvalidResponse, match="invalid HTTP"):
            await get("/garbage")
        # Two answers to one request: the first is the answer, the connection is dropped.
        # Headers as a dict (lower-case names, repeats joined), made when asked for; a
        # trailer is not one of them.
        answer, body = await get("/headers")
        assert body == b"ok"
        assert answer.headers == {"x-a": "1, 2", "transfer-encoding": "chunked"}
        with pytest.raises(InvalidResponse, match="invalid HTTP"):
            await get("/both")
        answer, body = await get("/twice")
        assert body == b"first"
        connections = server.connections
        assert (await get("/chunked"))[1] == b"abcde"
        assert server.connections == connections + 1


async def test_a_slow_reader_pauses_the_upstream_instead_of_buffering() -> None:
    sent = 0
    size = 64 * 2**20

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        piece = b"x" * 65536
        while sent < size:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)

    async with scripted(handler) as server, pool() as p:
        answer = await p.request(server.base, "/x", JSON, b"{}", None)
        assert await answer.next()
        await asyncio.sleep(0.3)  # the reader stops; the server fills the buffers
        # Paused: what was sent is the kernel's socket buffers (a few MB), not the body.
        assert sent < size / 4
        got = 0
        while got < 2**20 and (data := await answer.next()) is not None:
            got += len(data)
        answer.close()  # a reader that leaves: the connection goes, not the pool
        assert p.stats()["connections"] == 0


async def test_read_timeout_is_each_wait_and_closes_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with scripted(handler) as server, pool(read_timeout=5) as p:
        started = time.monotonic()
        with pytest.raises(ReadTimeout):
            await fetch(p, server.base, timeout=0.2)  # the call's own, shorter
        assert time.monotonic() - started < 2
        assert p.stats()["connections"] == 0


async def test_unreachable_is_a_connect_error() -> None:
    async with scripted(read_request) as server:
        base = server.base
    async with pool() as p:
        with pytest.raises(ConnectError):
            await fetch(p, base)
        with pytest.raises(ConnectError, match="not an http"):
            await fetch(p, "ftp://127.0.0.1/v1")


# TLS and proxies.


@pytest.fixture
def tls(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 from a throwaway CA, which the
    client trusts through SSL_CERT_FILE (as an operator with an internal CA would)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


async def echo_path(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head = await read_request(reader)
        writer.write(ok(head.split(b" ")[1]))


async def test_https_upstream(tls: ssl.SSLContext) -> None:
    async with scripted(echo_path, ssl=tls) as server, pool() as p:
        base = f"https://127.0.0.1:{server.port}/v1"
        assert await fetch(p, base) == (200, b"/v1/x")
        assert await fetch(p, base) == (200, b"/v1/x")
        assert server.connections == 1


async def test_environment_proxies_forward_http_and_tunnel_https(
    tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    tunnels: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"CONNECT "):  # plain forwarding: answer it ourselves
            await reader.readexactly(2)
            writer.write(ok(head))
            return
        tunnels.append(head)
        host, port = head.split(b" ")[1].decode().rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async with scripted(echo_path, ssl=tls) as origin, scripted(proxy) as via:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        proxy_url = f"http://user:p%40ss@127.0.0.1:{via.port}"
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.setenv("HTTPS_PROXY", proxy_url)
        async with pool(trust_env=True) as p:
            # http: the proxy gets the absolute URL and the credentials.
            status, seen = await fetch(p, "http://upstream.internal:8000/v1")
            assert status == 200
            assert seen.startswith(b"POST http://upstream.internal:8000/v1/x HTTP/1.1\r\n")
            assert b"proxy-authorization: Basic dXNlcjpwQHNz\r\n" in seen  # user:p@ss
            # https: a tunnel, and TLS to the origin through it.
            base = f"https://127.0.0.1:{origin.port}/v1"
            assert await fetch(p, base) == (200, b"/v1/x")
            assert await fetch(p, base) == (200, b"/v1/x")  # the tunnel is kept alive
        assert len(tunnels) == 1 and origin.connections == 1
        assert tunnels[0].startswith(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n".encode())
        assert b"proxy-authorization: Basic dXNlcjpwQHNz\r\n" in tunnels[0]
        # Without trust_env, or for a host in NO_PROXY, the environment is not used.
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        for trust_env in (False, True):
            async with pool(trust_env=trust_env) as p:
                assert await fetch(p, base) == (200, b"/v1/x")
        assert len(tunnels) == 1
