"""The pool of ``gateway._h1``'s connections: one per loop, shared by every upstream call.

What it keeps of the provider's contract: ``max_connections`` (requests beyond it wait,
for at most the read timeout), idle keep-alive connections capped at ``max_idle``
(trimmed once idle ``TRIM_AFTER`` seconds: under steady load the pool rotates, and
closing at release made a proxy at 256 connections reconnect all the time) and closed
after ``keepalive_expiry``; a connect timeout; no cookies; proxies from the environment
when ``trust_env`` (plain forwarding for http, a CONNECT tunnel for https); a request on
a reused connection that the server had closed is sent once more, on a new connection
(nothing of it was answered). Header names and values that would split the request
(CR, LF, NUL) are refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import urllib.request
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

from ._aio import running_loop, within
from ._h1 import (
    ConnectError,
    ConnectTimeout,
    InvalidHeader,
    PoolTimeout,
    Response,
    ServerDisconnected,
    _Conn,
)

__all__ = ["TRIM_AFTER", "Pool"]

TRIM_AFTER = 1.0  # seconds a connection beyond the idle cap may stay idle

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


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
            # A kept connection, taken here: no coroutine for the usual case.
            conn = self._take_idle(origin.key) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn, reused = await self._acquire(
                    origin, read_timeout, connect_timeout, reuse=attempt == 0
                )
            response = conn.response = Response(conn, read_timeout)
            conn.transport.write(data)  # type: ignore[union-attr]
            try:
                # Waited for here, not in a method of the response: a coroutine frame
                # less to resume when the head comes.
                while not response._headed:
                    if response._error is not None:
                        raise response._error
                    await response._wait()
                if response._error is not None:
                    raise response._error
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
            kept = self._take_idle(key) if reuse else None
            if kept is not None:
                return kept, True
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

    def _take_idle(self, key: Any) -> _Conn | None:
        """The last kept connection of ``key`` still open, lent out; None if none."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.lost:
                self._active += 1
                return conn
        return None

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
        for key, idle in list(self._idle.items()):
            while idle and now - idle[0].idle_since >= self.keepalive_expiry:
                idle[0].close()  # out of the list too
            if not idle:  # (a lent connection leaves its list empty, not deleted)
                self._idle.pop(key, None)
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
