"""``POST /v1/chat/completions``: JSON answers, server-sent event streams (written as the
router yields them, with deadlines and disconnect watching) and cached answers replayed."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from typing import Any

import anyio
import msgspec
from starlette.types import Receive, Scope, Send

from ._aio import ClientGone, Deadline, served_by, until_disconnect
from .bodies import _NOT_OPTIONAL, ChatRequest
from .edge import (
    _CUT,
    PREFETCHED,
    _answer,
    _Endpoint,
    _is_cancellation,
    _public,
    _routed_headers,
    _send_json,
    _sse_error,
    _unexpected,
)
from .errors import (
    BadRequestError,
    GatewayError,
    Timeout,
)
from .record import SCOPE_KEY
from .router import Routed
from .streaming import RelayHint, relay_hint

_encode = msgspec.json.Encoder().encode

# Where a cached endpoint keeps what it prepared for the request's cache lookup.
_PREPARED = "gateway.prepared"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]\n\n"


class ChatCompletions(_Endpoint):
    route = "chat_completions"

    def _prepared(self, scope: Scope, request: Any, data: dict[str, Any]) -> tuple[Any, Any]:
        """The call's optional params and the request's cache lookup (None: no cache),
        made once per request (by ``prefetch`` when there is a cache)."""
        prepared = scope.get(_PREPARED)
        if prepared is None:
            cache = self.runtime.cache
            control = data.pop("cache", None) if cache is not None else None
            # Most requests carry no optional param: a set test in C, not a comprehension
            # (a function call on 3.11).
            optional = (
                {}
                if data.keys() <= _NOT_OPTIONAL
                else {k: v for k, v in data.items() if k not in _NOT_OPTIONAL and v is not None}
            )
            stream = bool(request.stream)
            if stream:
                optional["stream"] = True
                if data.get("stream_options") is not None:
                    optional["stream_options"] = data["stream_options"]
            lookup = None
            if cache is not None:
                lookup = cache.lookup(request.model, request.messages, optional, stream, control)
            prepared = scope[_PREPARED] = (optional, lookup)
        return prepared

    def prefetch(self, scope: Scope, request: Any, data: dict[str, Any]) -> Sequence[str]:
        _, lookup = self._prepared(scope, request, data)
        return _prefetch_key(self.runtime.cache, lookup)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> int | None:
        request, data, timeout = await self.read(scope, receive, ChatRequest)
        for i, message in enumerate(request.messages):
            if not isinstance(message.get("role"), str):
                raise BadRequestError(f"messages[{i}] has no `role`", param=f"messages[{i}].role")
        stream = bool(request.stream)
        optional, lookup = self._prepared(scope, request, data)
        # Not needed past here: not held while the model answers (~500 bytes a request
        # in flight; at 256 in flight, what is held is what falls out of the cache).
        del data
        if lookup is not None:
            keeping = await _from_cache(scope, send, self.runtime.cache, lookup, stream)
            if keeping is None:
                return None
            send = keeping
        router = self.runtime.router
        if not stream:
            await _answer(
                scope,
                receive,
                send,
                _tapped(
                    scope,
                    lambda: router.chat(request.model, request.messages, optional, timeout=timeout),
                ),
            )
            return None
        return await _stream(
            scope,
            receive,
            send,
            _tapped(
                scope,
                lambda: router.chat(
                    request.model,
                    request.messages,
                    optional,
                    stream=True,
                    timeout=timeout,
                ),
                request.messages,
            ),
            timeout=timeout,
        )


async def _from_cache(
    scope: Scope, send: Send, cache: Any, lookup: Any, stream: bool
) -> Send | None:
    """Answer from the response cache (None: answered; the callbacks see a hit), else
    ``send`` that keeps a good answer for the next request."""
    from .cache import HIT

    if PREFETCHED in scope:  # read with the request's counters
        body = cache.prefetched(scope[PREFETCHED])
    else:
        body = await cache.get(lookup)
    if body is None:
        return cache.capture(send, lookup)
    if not stream:
        await _send_json(send, 200, body, [HIT])
    else:
        start = {"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, HIT]}
        await send(start)
        await send({"type": "http.response.body", "body": body})
    log = scope.get("gateway.log")
    if log is not None:
        log.cached(body)
    return None


def _prefetch_key(cache: Any, lookup: Any) -> Sequence[str]:
    key = None if lookup is None else cache.prefetchable(lookup)
    return () if key is None else (key,)


def _tapped(scope: Scope, call: Callable[[], Awaitable[Routed]], prompt: Any = None) -> Any:
    """``call``, with its usage noted for the request's virtual key (if any) and its
    answer seen by the callbacks (if any)."""
    grant = scope.get("gateway.key")
    if grant is not None:
        call = grant.tap(call, prompt)
    log = scope.get("gateway.log")
    return call if log is None else log.tap(call)


async def _stream(
    scope: Scope,
    receive: Receive,
    send: Send,
    call: Callable[[], Awaitable[Routed]],
    write: Callable[[Send, Routed], Awaitable[int]] | None = None,
    timeout: float | None = None,
) -> int:
    """Server-sent events, written as the handler yields them (by ``write``: a front
    door writes its own API's events); the status to count.

    Headers go out once the first chunk exists, so a failure before it is a plain
    HTTP error. A failure after it is an SSE error event. A disconnect cancels the
    handler's stream; its ``finally`` runs. The request's own ``timeout`` bounds the
    whole stream (the router bounds each wait between chunks).
    """
    if write is None:
        write = functools.partial(_write_stream, scope)
    # Set before the call: the first upstream read, made before the first chunk is
    # returned, often holds the whole stream. One context variable set and reset.
    token = relay_hint.set(RelayHint())
    opened: list[Routed] = []
    start = time.monotonic() if timeout is not None else 0.0
    record = scope.get(SCOPE_KEY)

    async def run() -> int:
        started = perf_counter()
        routed = await call()
        if record is not None:
            record.streaming(routed, started)
        if timeout is not None:
            routed.result = _Deadlined(routed.result, Deadline(timeout, start))
        opened.append(routed)
        return await write(send, routed)

    try:
        return await until_disconnect(receive, run, scope)
    finally:
        relay_hint.reset(token)
        # Closed once the watch has stopped, so no disconnect can cut the close short.
        # A stream read to its end needs no close, nor the cancel scope around it (~6 us
        # under uvloop, and three getpid() on Python 3.11).
        if opened and not getattr(opened[0].result, "finished", False):
            with anyio.CancelScope(shield=True):
                await opened[0].result.aclose()


class _Deadlined:
    """A stream's chunks under the request's deadline: past it, the next chunk is a
    ``Timeout`` (a gateway error, so every writer ends with its own error event)."""

    __slots__ = ("_chunks", "_deadline")

    def __init__(self, chunks: Any, deadline: Deadline) -> None:
        self._chunks = chunks
        self._deadline = deadline

    def __aiter__(self) -> _Deadlined:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._deadline.wait(self._chunks.__anext__())
        except TimeoutError:
            raise Timeout(f"Request timed out after {self._deadline.seconds:g} s") from None

    async def aclose(self) -> None:
        self._deadline.close()
        await self._chunks.aclose()


async def _write_stream(scope: Scope, send: Send, routed: Routed) -> int:
    status = 200
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_SSE_HEADERS, *_routed_headers(routed)],
        }
    )
    # Chunks a provider marks as having another right behind them (one upstream read
    # brought several events) go out with the next: one send, not one each. Costs an
    # identity test per chunk.
    hint = relay_hint.get() or RelayHint()
    held: list[bytes] = []
    write = _chunk_writer(send)
    try:
        async for chunk in routed.result:
            if chunk is hint.held:
                hint.held = None
                held.append(_encode(chunk))  # framed once, with the rest, by one join
                continue
            if held:
                held.append(_encode(chunk))
                data = _framed(held)
                held.clear()
            else:
                data = b"data: " + _encode(chunk) + b"\n\n"
            if not write(data, True):
                await send({"type": "http.response.body", "body": data, "more_body": True})
        tail = _DONE
    except GatewayError as exc:
        exc = _public(scope, exc)
        status = exc.status_code
        tail = _sse_error(exc)
    except OSError:
        raise ClientGone from None  # the server saw the client go while we wrote
    except BaseException as exc:
        if _is_cancellation(exc):
            # The server cut the stream (its graceful_timeout ran out on shutdown): say
            # so rather than just stop. After a client left, this send is a no-op.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                body = _framed(held) + _sse_error(_CUT)
                await send({"type": "http.response.body", "body": body})
            raise
        status = 500
        tail = _sse_error(_unexpected(scope, exc))
    if held:
        tail = _framed(held) + tail
    try:
        if not write(tail, False):
            await send({"type": "http.response.body", "body": tail, "more_body": False})
    except OSError:
        raise ClientGone from None
    return status


def _chunk_writer(send: Send) -> Callable[[bytes, bool], bool]:
    """What writes a started response's body message at once: the gateway's own server
    (``Disconnect.write``: a coroutine and a message less a chunk) where ``send`` is its
    own; False from it means use ``send()`` (which waits while the client reads slowly)."""
    server = served_by(send)
    return _no_write if server is None else server.write


def _no_write(body: bytes, more: bool) -> bool:
    return False


def _framed(chunks: list[bytes]) -> bytes:
    """Encoded chunks as their server-sent events, in one join."""
    return b"data: " + b"\n\ndata: ".join(chunks) + b"\n\n" if chunks else b""
