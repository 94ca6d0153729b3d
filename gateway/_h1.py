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

This module: one connection (``_Conn``, the protocol) and the answer being read on it
(``Response``): bodies streamed as they arrive, reading paused while ``HIGH_WATER``
bytes wait for the reader, decompressed (gzip, deflate) in pieces of at most ``PIECE``
bytes, so a reader that counts what it gets bounds its memory; the read timeout bounds
each wait for data; redirects are never followed (the answer is returned as it is).
The pool, limits, proxies and retries: ``gateway._h1pool``.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httptools

from ._aio import deadline, within

if TYPE_CHECKING:
    from ._h1pool import Pool

__all__ = [
    "HIGH_WATER",
    "PIECE",
    "BodyTooLarge",
    "ConnectError",
    "ConnectTimeout",
    "InvalidHeader",
    "InvalidResponse",
    "PoolTimeout",
    "ReadTimeout",
    "Response",
    "ServerDisconnected",
    "UpstreamError",
]

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


_NO_BODY = frozenset({204, 304})


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
        response = self.response
        if not response._headed:  # type: ignore[union-attr]  # (trailers are not kept)
            response._raw.append((name, value))  # type: ignore[union-attr]

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
        "_headers",
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
        "status",
    )

    def __init__(self, conn: _Conn, timeout: float) -> None:
        self._conn: _Conn | None = conn
        self._timeout = timeout
        self._raw: list[tuple[bytes, bytes]] = []
        self._reason = b""
        # A list, not a deque: held by every answer in flight, and a deque is ~620 bytes.
        self._chunks: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        self._complete = self._headed = self._interim = self._paused = False
        self._until_close = self._keep_alive = self._got_bytes = False
        self._decoder: Any = None
        self.status = 0
        self._headers: dict[str, str] | None = None
        self.content_length: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The answer's headers: lower-case names, repeated ones joined with ", "."""
        headers = self._headers
        if headers is None:
            headers = self._headers = {}
            for name, value in self._raw:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return headers

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
        # Only the framing headers are read here (by their length first: most are not
        # looked at); ``headers`` is made from the raw pairs if someone asks.
        length: bytes | None = None
        chunked = False
        encoding = b""
        for name, value in self._raw:
            size = len(name)
            if size == 14 and name.lower() == b"content-length":
                length = value.strip()
            elif size == 17 and name.lower() == b"transfer-encoding":
                chunked = chunked or b"chunked" in value.lower()
            elif size == 16 and name.lower() == b"content-encoding":
                value = value.strip().lower()
                encoding = value if not encoding else encoding + b", " + value
        if length is not None and length.isdigit():
            self.content_length = int(length)
        self._until_close = length is None and not chunked and status not in _NO_BODY
        self._keep_alive = parser.should_keep_alive()
        if encoding in (b"gzip", b"x-gzip", b"deflate"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
        elif encoding not in (b"", b"identity"):
            shown = encoding.decode("latin-1")
            self._error = InvalidResponse(f"unsupported content-encoding {shown!r}")
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
        # The read timeout in this frame: a within() frame more would be resumed too on
        # each wake-up (gateway._aio.deadline).
        guard = deadline(self._timeout)
        try:
            if guard is None:
                await within(self._timeout, waiter)
            else:
                try:
                    await waiter
                except asyncio.CancelledError:
                    if guard.timed_out():
                        raise TimeoutError from None
                    raise
                finally:
                    guard.end()
        except TimeoutError:
            self.close()
            raise ReadTimeout(f"no data from the upstream for {self._timeout:g} s") from None
        except BaseException:
            # Cancelled (a client gone, a deadline): the upstream stops at once.
            self.close()
            raise

    async def _next_raw(self) -> bytes | None:
        """What arrived since the last read (one piece), None at the end."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
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
        whole = self.body_at_hand(cap)
        if whole is not None:
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

    def body_at_hand(self, cap: int) -> bytes | None:
        """The whole body if all of it came with the head, in one piece of at most
        ``cap`` bytes, not compressed (the usual answer): no coroutine to read it. None:
        ``read`` it."""
        chunks = self._chunks
        if (
            self._complete
            and len(chunks) == 1
            and self._decoder is None
            and self._error is None
            and not self._paused
        ):
            whole = chunks[0]
            if len(whole) <= cap:
                chunks.clear()
                self._size = 0
                return whole
        return None

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if it was read
        to its end and may be kept, else it is closed."""
        conn = self._conn
        if conn is None:
            return
        if self._complete and self._keep_alive and self._error is None and not self._chunks:
            self._conn = None
            conn.response = None
            conn.pool._put(conn)
        else:
            self.close()

    def close(self) -> None:
        """Drop the connection now, whatever is left of the answer."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        conn.response = None
        conn.pool._done(conn)
        conn.close()
