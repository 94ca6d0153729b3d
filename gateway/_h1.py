"""The built-in provider's upstream client: HTTP/1.1 keep-alive on asyncio protocols.

Why not aiohttp, which it replaced for the provider (handlers' ``http_client()`` still
runs over aiohttp): a proxied request is a request head out and a short answer back,
and aiohttp's request and response objects around that cost about as much CPU as the
rest of a proxy. Measured with the benchmark forwarder (a bare Starlette endpoint)
once over an ``aiohttp.ClientSession`` and once over this client's core, pinned as the
proxy scenario pins them, 32 connections, alternating rounds: 4,843 against 9,584 req/s,
205 against 98 us of CPU a request. Here a request is one ``write`` of its head and body,
the answer is parsed by httptools (uvicorn's parser, already installed) in the
protocol's ``data_received``, and a short answer is read whole without a wait.

What it keeps of the provider's contract: a pool per loop with ``max_connections``
(requests beyond it wait, for at most the read timeout), idle keep-alive connections
capped at ``max_idle`` (trimmed once idle ``TRIM_AFTER`` seconds: under steady load the
pool rotates, and closing at release made a proxy at 256 connections reconnect all the
time) and closed after ``keepalive_expiry``; a connect timeout, a read timeout (the
first byte and every gap between reads); bodies streamed as they arrive, reading paused
while ``HIGH_WATER`` bytes wait for the reader, decompressed (gzip, deflate) in pieces
of at most ``PIECE`` bytes, so a reader that counts what it gets bounds its memory; no
cookies; redirects never followed (the answer is returned as it is); proxies from the
environment when ``trust_env`` (plain forwarding for http, a CONNECT tunnel for https);
a request on a reused connection that the server had closed is sent once more on a new
one (nothing of it was answered). Header names and values that would split the request
(CR, LF, NUL) are refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import urllib.request
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools

from ._aio import running_loop, within

__all__ = [
    "HIGH_WATER",
    "PIECE",
    "TRIM_AFTER",
    "BodyTooLarge",
    "ConnectError",
    "ConnectTimeout",
    "InvalidHeader",
    "InvalidResponse",
    "Pool",
    "PoolTimeout",
    "ReadTimeout",
    "Response",
    "ServerDisconnected",
    "UpstreamError",
]

TRIM_AFTER = 1.0  # seconds a connection beyond the idle cap may stay idle
HIGH_WATER = 256 * 1024  # bytes of one answer buffered before reading pauses
PIECE = 64 * 1024  # at most this many decompressed bytes at a time


class UpstreamError(Exception):
    """A failure of an upstream call below HTTP: connecting, reading, framing."""


class ConnectError(UpstreamError):
    pass


class ConnectTimeout(UpstreamError):
    pass


class PoolTimeout(UpstreamError):
    """Every connection the pool may open was busy for the whole wait."""


class ReadTimeout(UpstreamError):
    pass


class ServerDisconnected(UpstreamError):
    """The connection closed before the answer was complete."""


class InvalidResponse(UpstreamError):
    """Bytes that are not an HTTP/1.1 answer, or a body that does not decompress."""


class BodyTooLarge(UpstreamError):
    """An answer over the reader's cap (``Response.read``)."""


class InvalidHeader(ValueError):
    """A request header that would split the request (CR, LF or NUL in it)."""


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NO_BODY = frozenset({204, 304})


def _check_header(name: str, value: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise InvalidHeader(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise InvalidHeader(f"invalid value for header {name!r} (CR, LF or NUL)")


class _Origin:
    """Where requests to one base URL go, and how their heads start: worked out once."""

    __slots__ = ("host", "key", "port", "prefix", "proxy_auth", "server_hostname", "start", "tls")

    def __init__(self, base: str, trust_env: bool) -> None:
        parts = urlsplit(base)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConnectError(f"not an http(s) URL: {base!r}")
        host = parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
        default = port == (443 if scheme == "https" else 80)
        shown = f"[{host}]" if ":" in host else host
        authority = shown if default else f"{shown}:{port}"
        self.prefix = parts.path.rstrip("/")
        self.tls = scheme == "https"
        self.server_hostname: str | None = host if self.tls else None
        self.host, self.port = host, port
        self.proxy_auth: str | None = None
        tunnel: str | None = None
        absolute = ""
        proxy = _env_proxy(scheme, host) if trust_env else None
        if proxy is not None:
            via = urlsplit(proxy)
            if via.scheme.lower() != "http" or not via.hostname:
                raise ConnectError(f"unsupported proxy URL {proxy!r} (http:// proxies only)")
            if via.username is not None:
                user = f"{unquote(via.username)}:{unquote(via.password or '')}"
                self.proxy_auth = "Basic " + base64.b64encode(user.encode()).decode()
            self.host, self.port = via.hostname, via.port or 80
            if self.tls:
                tunnel = f"{shown}:{port}"
            else:
                absolute = f"{scheme}://{authority}"
        # A plain proxy gets absolute request targets and its credentials on each request;
        # through a tunnel the origin sees an ordinary request.
        auth = f"proxy-authorization: {self.proxy_auth}\r\n" if absolute and self.proxy_auth else ""
        self.start = (f"{absolute}{self.prefix}", f" HTTP/1.1\r\nhost: {authority}\r\n{auth}")
        self.key = (self.host, self.port, self.tls, tunnel, self.proxy_auth)

    @property
    def tunnel(self) -> str | None:
        return self.key[3]

    def head(self, path: str, headers: dict[str, str], length: int) -> bytes:
        target, rest = self.start
        lines = [f"POST {target}{path}{rest}"]
        for name, value in headers.items():
            _check_header(name, value)
            lines.append(f"{name}: {value}\r\n")
        if "user-agent" not in headers:
            lines.append("user-agent: gateway\r\n")
        lines.append(f"accept-encoding: gzip, deflate\r\ncontent-length: {length}\r\n\r\n")
        return "".join(lines).encode()


def _env_proxy(scheme: str, host: str) -> str | None:
    proxies = urllib.request.getproxies_environment()
    # urllib's own reading of NO_PROXY (untyped in typeshed).
    bypass: Any = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009
    if bypass(host, proxies):
        return None
    return proxies.get(scheme) or proxies.get("all")


class _Conn(asyncio.Protocol):
    """One upstream connection; its parser feeds the answer being read (``response``)."""

    __slots__ = ("counted", "idle_since", "key", "lost", "parser", "pool", "response", "transport")

    def __init__(self, pool: Pool, key: Any) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.idle_since = 0.0
        self.lost = False
        self.counted = True  # in the pool's count of open connections

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        response._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(InvalidResponse(f"upstream sent an invalid HTTP answer ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool._discard(self)
        response = self.response
        if response is not None and not response._complete:
            if response._until_close:
                response._finish()  # the close ends a body that has no length
            else:
                response._fail(ServerDisconnected("upstream closed the connection"))

    def pause_writing(self) -> None:  # a request body is bounded: buffered, not paused
        pass

    def resume_writing(self) -> None:
        pass

    def close(self) -> None:
        self.pool._discard(self)
        if self.transport is not None:
            self.transport.close()

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self.response._reason = reason  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response._raw.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        self.response._head(self.parser)  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        self.response._data(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        if response._interim:  # a 1xx before the answer: wait for the answer
            response._interim = False
            return
        response._finish()


class Response:
    """An upstream answer: status and headers at once, the body as it arrives.

    ``headers`` has lower-case names (repeated ones joined with ", "). Read the body
    with ``read`` or ``iter_chunks``, then ``release`` (back to the pool if it was read
    to its end) or ``close`` (the connection dropped: the upstream stops at once).
    """

    __slots__ = (
        "_chunks",
        "_complete",
        "_conn",
        "_decoder",
        "_error",
        "_got_bytes",
        "_headed",
        "_interim",
        "_keep_alive",
        "_paused",
        "_raw",
        "_reason",
        "_size",
        "_timeout",
        "_until_close",
        "_waiter",
        "content_length",
        "headers",
        "status",
    )

    def __init__(self, conn: _Conn, timeout: float) -> None:
        self._conn: _Conn | None = conn
        self._timeout = timeout
        self._raw: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        self._complete = self._headed = self._interim = self._paused = False
        self._until_close = self._keep_alive = self._got_bytes = False
        self._decoder: Any = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.content_length: int | None = None

    @property
    def reason(self) -> str:
        return self._reason.decode("latin-1")

    @property
    def at_eof(self) -> bool:
        """The whole body was read."""
        return self._complete and not self._chunks and self._decoder is None

    # -- from the protocol --

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _head(self, parser: Any) -> None:
        if self._complete:  # a second answer to one request: ignored, the connection dropped
            self._keep_alive = False
            return
        status = parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True
            self._raw.clear()
            return
        self.status = status
        headers: dict[str, str] = {}
        for name, value in self._raw:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers
        self._raw = []
        length = headers.get("content-length")
        if length is not None and length.isdigit():
            self.content_length = int(length)
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._until_close = length is None and not chunked and status not in _NO_BODY
        self._keep_alive = parser.should_keep_alive()
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
        elif encoding not in ("", "identity"):
            self._error = InvalidResponse(f"unsupported content-encoding {encoding!r}")
        self._headed = True
        self._wake()

    def _data(self, data: bytes) -> None:
        if self._complete:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def _finish(self) -> None:
        if self._complete:  # the end of an answer nobody asked for (see _head)
            return
        self._complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    # -- for the reader --

    async def _wait(self) -> None:
        conn = self._conn
        if conn is None:
            raise ServerDisconnected("the answer was closed")
        waiter = self._waiter = conn.pool._loop.create_future()
        try:
            await within(self._timeout, waiter)
        except TimeoutError:
            self.close()
            raise ReadTimeout(f"no data from the upstream for {self._timeout:g} s") from None
        except BaseException:
            # Cancelled (a client gone, a deadline): the upstream stops at once.
            self.close()
            raise

    async def _started(self) -> None:
        while not self._headed:
            if self._error is not None:
                raise self._error
            await self._wait()
        if self._error is not None:
            raise self._error

    async def _next_raw(self) -> bytes | None:
        """What arrived since the last read (one piece), None at the end."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._size = 0
                if self._paused:
                    self._paused = False
                    conn = self._conn
                    if conn is not None and not conn.lost:
                        conn.transport.resume_reading()  # type: ignore[union-attr]
                return data
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            await self._wait()

    async def next(self) -> bytes | None:
        """The next piece of the body (decompressed: at most ``PIECE`` bytes), or None."""
        decoder = self._decoder
        if decoder is None:
            return await self._next_raw()
        try:
            while True:
                tail = decoder.unconsumed_tail
                if tail:
                    out = decoder.decompress(tail, PIECE)
                else:
                    data = await self._next_raw()
                    if data is None:
                        self._decoder = None
                        return decoder.flush() or None
                    out = decoder.decompress(data, PIECE)
                if out:
                    return out
        except zlib.error as exc:
            self.close()
            raise InvalidResponse(f"upstream body does not decompress ({exc})") from None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body piece by piece as it arrives (an async iterator)."""
        while (data := await self.next()) is not None:
            yield data

    async def read(self, cap: int, *, truncate: bool = False) -> bytes:
        """The whole body, of at most ``cap`` bytes: more raises ``BodyTooLarge`` (or,
        with ``truncate``, is cut). Counted as it arrives, decompressed included."""
        length = self.content_length
        if length is not None and length > cap and self._decoder is None and not truncate:
            raise BodyTooLarge(f"the answer is {length} bytes")
        chunks = self._chunks
        if (
            self._complete
            and len(chunks) == 1
            and self._decoder is None
            and self._error is None
            and not self._paused
        ):
            # The usual answer: all of it came with its head, in one piece.
            whole = chunks[0]
            if len(whole) <= cap:
                chunks.clear()
                self._size = 0
                return whole
        parts: list[bytes] = []
        size = 0
        while (data := await self.next()) is not None:
            size += len(data)
            if size > cap:
                if truncate:
                    parts.append(data[: cap - size])
                    break
                raise BodyTooLarge(f"the answer is over {cap} bytes")
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if it was read
        to its end and may be kept, else it is closed."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        conn.response = None
        if self._complete and self._keep_alive and self._error is None and not self._chunks:
            conn.pool._put(conn)
        else:
            conn.pool._done(conn)
            conn.close()

    def close(self) -> None:
        """Drop the connection now, whatever is left of the answer."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        conn.response = None
        conn.pool._done(conn)
        conn.close()


class _Tunnel(asyncio.Protocol):
    """A proxy connection until its answer to CONNECT: then TLS runs over it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[bytes] = loop.create_future()
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and not self.answer.done():
            self.answer.set_result(self.buffer)
        elif len(self.buffer) > 65536 and not self.answer.done():
            self.answer.set_exception(ConnectError("the proxy's answer to CONNECT is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectError("the proxy closed the connection"))


def _idle_since(conn: _Conn) -> float:
    return conn.idle_since


class Pool:
    """The upstream connections of one loop, shared by every request made on it."""

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        max_idle: int = 100,
        keepalive_expiry: float = 30.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        trust_env: bool = False,
    ) -> None:
        self._loop = running_loop()
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.keepalive_expiry = keepalive_expiry
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.trust_env = trust_env
        self.closed = False
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[Any, list[_Conn]] = {}  # per origin, the last released last
        self._count = 0  # connections open or opening
        self._active = 0  # connections lent to a request
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._trim_handle: asyncio.TimerHandle | None = None
        self._ssl: ssl.SSLContext | None = None

    async def request(
        self, base: str, path: str, headers: dict[str, str], body: bytes, timeout: float | None
    ) -> Response:
        """POST ``body`` to ``base + path``; the answer once its head arrived.

        ``timeout`` (seconds, at most the pool's read timeout) bounds the connect, the
        wait for a connection and each wait for data."""
        if self.closed:
            raise ConnectError("the upstream pool is closed")
        origin = self._origins.get(base)
        if origin is None:
            if len(self._origins) >= 256:  # bases: few; a library caller's may be many
                self._origins.clear()
            origin = self._origins[base] = _Origin(base, self.trust_env)
        read_timeout = self.read_timeout
        connect_timeout = self.connect_timeout
        if timeout is not None and timeout < read_timeout:
            read_timeout = timeout
            connect_timeout = min(connect_timeout, timeout)
        data = origin.head(path, headers, len(body)) + body
        for attempt in (0, 1):
            conn = None
            if attempt == 0:  # a kept connection, taken here: no coroutine for the usual case
                idle = self._idle.get(origin.key)
                while idle:
                    candidate = idle.pop()
                    if not candidate.lost:
                        conn = candidate
                        self._active += 1
                        break
            reused = conn is not None
            if conn is None:
                conn, reused = await self._acquire(
                    origin, read_timeout, connect_timeout, reuse=attempt == 0
                )
            response = conn.response = Response(conn, read_timeout)
            conn.transport.write(data)  # type: ignore[union-attr]
            try:
                if not response._headed or response._error is not None:
                    await response._started()
            except ServerDisconnected:
                # Closed by the server while idle in the pool: the request never reached
                # it. Once more, on a new connection.
                response.close()
                if attempt == 0 and reused and not response._got_bytes:
                    continue
                raise
            except BaseException:
                response.close()
                raise
            return response
        raise AssertionError("unreachable")

    async def _acquire(
        self, origin: _Origin, wait: float, connect_timeout: float, *, reuse: bool = True
    ) -> tuple[_Conn, bool]:
        """A connection to ``origin``: a kept one (unless ``reuse`` is false), else a new
        one once the pool has room; and whether it was kept."""
        key = origin.key
        while True:
            idle = self._idle.get(key) if reuse else None
            while idle:
                conn = idle.pop()
                if not conn.lost:
                    self._active += 1
                    return conn, True
            if self._count < self.max_connections or self._close_an_idle():
                break
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await within(wait, waiter)
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, but leaving: the turn goes to the next
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise PoolTimeout(
                        f"all {self.max_connections} upstream connections stayed busy "
                        f"for {wait:g} s"
                    ) from None
                raise
        self._count += 1
        self._active += 1
        conn = _Conn(self, key)
        try:
            await self._connect(conn, origin, connect_timeout)
        except BaseException:
            conn.close()
            self._done(conn)
            raise
        return conn, False

    async def _connect(self, conn: _Conn, origin: _Origin, timeout: float) -> None:
        loop = self._loop
        context = self._context() if origin.tls else None
        try:
            if origin.tunnel is None:
                await within(
                    timeout,
                    loop.create_connection(
                        lambda: conn,
                        origin.host,
                        origin.port,
                        ssl=context,
                        server_hostname=origin.server_hostname,
                    ),
                )
            else:
                await within(timeout, self._tunnel(conn, origin, context))
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {timeout:g} s") from None
        except OSError as exc:  # ssl.SSLError included
            raise ConnectError(str(exc) or type(exc).__name__) from None

    async def _tunnel(self, conn: _Conn, origin: _Origin, context: Any) -> None:
        loop = self._loop
        tunnel = _Tunnel(loop)
        transport, _ = await loop.create_connection(lambda: tunnel, origin.host, origin.port)
        try:
            auth = f"proxy-authorization: {origin.proxy_auth}\r\n" if origin.proxy_auth else ""
            to = origin.tunnel
            transport.write(f"CONNECT {to} HTTP/1.1\r\nhost: {to}\r\n{auth}\r\n".encode())
            answer = await tunnel.answer
            status = answer.split(b" ", 2)[1:2]
            if status != [b"200"]:
                line = answer.split(b"\r\n", 1)[0].decode("latin-1")
                raise ConnectError(f"the proxy refused the tunnel: {line}")
            tls = await loop.start_tls(
                transport, conn, context, server_hostname=origin.server_hostname
            )
        except BaseException:
            transport.close()
            raise
        conn.connection_made(tls)

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    # -- connections coming back --

    def _put(self, conn: _Conn) -> None:
        self._active -= 1
        if conn.lost or self.closed:
            conn.close()
        else:
            conn.idle_since = self._loop.time()
            self._idle.setdefault(conn.key, []).append(conn)
            if self._trim_handle is None:
                self._trim_handle = self._loop.call_later(
                    min(TRIM_AFTER, self.keepalive_expiry), self._trim
                )
        self._wake_one()

    def _done(self, conn: _Conn) -> None:
        """A lent connection that will not come back (closed by its reader)."""
        self._active -= 1

    def _discard(self, conn: _Conn) -> None:
        """``conn`` closed: out of the count and of the idle lists."""
        if not conn.counted:
            return
        conn.counted = False
        self._count -= 1
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.key]
        self._wake_one()

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_an_idle(self) -> bool:
        """Make room by closing the longest idle connection of any origin."""
        oldest: _Conn | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is None:
            return False
        oldest.close()  # out of the count at once
        return True

    def _trim(self) -> None:
        """Close idle connections past their keep-alive expiry, and the longest idle
        beyond the cap once idle ``TRIM_AFTER``; then wait for the next that may go."""
        self._trim_handle = None
        if self.closed:
            return
        now = self._loop.time()
        for idle in list(self._idle.values()):
            while idle and now - idle[0].idle_since >= self.keepalive_expiry:
                idle[0].close()  # out of the list too
        due = None
        count = sum(map(len, self._idle.values()))
        while count > self.max_idle:
            oldest = min((idle[0] for idle in self._idle.values()), key=_idle_since)
            if now - oldest.idle_since < TRIM_AFTER:
                due = oldest.idle_since + TRIM_AFTER  # still rotating: look again then
                break
            oldest.close()
            count -= 1
        if self._idle:
            expiry = min(idle[0].idle_since for idle in self._idle.values())
            expiry += self.keepalive_expiry
            self._trim_handle = self._loop.call_at(min(due or expiry, expiry), self._trim)

    def stats(self) -> dict[str, int]:
        idle = sum(map(len, self._idle.values()))
        waiting = sum(1 for waiter in self._waiters if not waiter.done())
        return {
            "connections": idle + self._active,
            "idle": idle,
            "active": self._active,
            "requests": self._active + waiting,
            "waiting": waiting,
        }

    async def aclose(self) -> None:
        """Close every idle connection and refuse new requests; answers being read
        end as their readers release or close them."""
        self.closed = True
        if self._trim_handle is not None:
            self._trim_handle.cancel()
            self._trim_handle = None
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.close()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectError("the upstream pool is closed"))
        self._waiters.clear()
