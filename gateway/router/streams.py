"""Routed streams: the chunks of a stream whose first chunk has arrived, and the
bookkeeping (slot, usage, failures) that happens when it ends however it ends.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol

import anyio
import msgspec

from .._threads import iterate_async
from ..errors import GatewayError, Timeout
from .deployments import Deployment

__all__ = ["NOTHING", "RoutedStream", "StreamOwner", "first_chunk", "sync_stream", "text_length"]

# A stream that ended before its first chunk.
NOTHING: Any = object()


class StreamOwner(Protocol):
    """What a ``RoutedStream`` tells the router that opened it."""

    def stream_ended(
        self, d: Deployment, started: float, tokens: int | None, error: GatewayError | None
    ) -> None:
        """The stream on ``d`` ended (``tokens`` counted if ``d`` tracks usage): free its
        slot and learn from it."""

    def release_admission(self) -> None:
        """Free the request's ``max_in_flight`` slot."""


def text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(text_length(v) for v in value)
    if isinstance(value, dict):
        return sum(text_length(v) for k, v in value.items() if k in ("content", "text"))
    return 0


def usage_tokens(usage: Any) -> int | None:
    if usage is None or usage is msgspec.UNSET:
        return None
    total = usage.get("total_tokens") if isinstance(usage, dict) else usage.total_tokens
    return int(total) if isinstance(total, int | float) else None


def _chunk_tokens(chunk: Any) -> tuple[int | None, int]:
    """(reported total tokens, characters of content) in one stream chunk."""
    if chunk.__class__ is str:  # a front door's stream: the text itself
        return None, len(chunk)
    if isinstance(chunk, msgspec.Raw):  # the HTTP app's pre-encoded text chunks
        chunk = msgspec.json.decode(chunk)
    if isinstance(chunk, dict):
        usage = usage_tokens(chunk.get("usage"))
        choices = chunk.get("choices") or ()
        chars = sum(text_length((c.get("delta") or {}).get("content")) for c in choices)
        return usage, chars
    usage = usage_tokens(getattr(chunk, "usage", None))
    chars = 0
    for choice in getattr(chunk, "choices", ()) or ():
        content = getattr(choice.delta, "content", None)
        if isinstance(content, str):
            chars += len(content)
    return usage, chars


class RoutedStream:
    """The chunks of a routed stream, the first already received.

    Closing it (``aclose``, also before reading it), running it to the end or a failure
    frees the deployment's slot and records what the router learns from the stream.
    """

    __slots__ = (
        "_admission",
        "_chars",
        "_deployment",
        "_done",
        "_first",
        "_gen",
        "_owner",
        "_prompt_chars",
        "_rest",
        "_started",
        "_tokens",
        "_watcher",
    )

    def __init__(
        self,
        owner: StreamOwner,
        deployment: Deployment,
        first: Any,
        rest: AsyncIterator[Any],
        started: float,
        prompt_chars: int,
    ) -> None:
        self._owner = owner
        self._deployment = deployment
        self._first = first
        self._rest = rest
        self._started = started
        self._admission = False
        self._done = False
        self._prompt_chars = prompt_chars
        self._chars = 0
        self._tokens: int | None = None
        self._watcher: Callable[[Any, int], None] | None = None
        # Iterated as a native async generator: no Python-level step per chunk here.
        self._gen = self._chunks()
        if first is NOTHING:
            self._finish(None)
        elif deployment.track_usage:
            self._count(first)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen

    def __anext__(self) -> Awaitable[Any]:
        return self._gen.__anext__()

    def watch(self, watcher: Callable[[Any, int], None]) -> None:
        """Call ``watcher(last chunk, chunks read)`` once the stream ends, if it was
        read: what a wrapping generator would count, for a few bytecodes a chunk
        where a generator level costs ~2k instructions."""
        self._watcher = watcher

    async def _chunks(self) -> AsyncGenerator[Any, None]:
        rest = self._rest
        chunk: Any = None
        count = 0
        try:
            if self._first is not NOTHING:
                chunk = self._first
                count = 1
                yield chunk
                self._first = NOTHING
                if self._deployment.track_usage:
                    async for chunk in rest:
                        count += 1
                        self._count(chunk)
                        yield chunk
                else:
                    async for chunk in rest:
                        count += 1
                        yield chunk
        except BaseException as exc:
            self._finish(exc)
            raise
        finally:
            self._finish(None)
            if self._watcher is not None:
                self._watcher(chunk, count)
            await _close(rest)

    def _count(self, chunk: Any) -> None:
        tokens, chars = _chunk_tokens(chunk)
        if tokens is not None:
            self._tokens = tokens
        self._chars += chars

    @property
    def finished(self) -> bool:
        """Read to its end and wound up: ``aclose()`` would do nothing."""
        return self._done and getattr(self._gen, "ag_frame", None) is None

    async def aclose(self) -> None:
        await self._gen.aclose()
        if not self._done:  # closed before it was read: the generator never ran
            self._finish(None)
            await _close(self._rest)

    def hold_admission(self) -> None:
        """Keep the request's ``max_in_flight`` slot until the stream ends."""
        if self._done:
            self._owner.release_admission()
        else:
            self._admission = True

    def _finish(self, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        d = self._deployment
        tokens: int | None = None
        if d.track_usage:
            tokens = self._tokens
            if tokens is None:
                tokens = (self._prompt_chars + self._chars) // 4
        error = exc if isinstance(exc, GatewayError) else None
        self._owner.stream_ended(d, self._started, tokens, error)
        if self._admission:
            self._admission = False
            self._owner.release_admission()


async def _close(chunks: AsyncIterator[Any]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


async def discard(result: Any) -> None:
    """Close a result nobody will read (a hedge's loser)."""
    if isinstance(result, RoutedStream):
        await result.aclose()


async def first_chunk(chunks: AsyncIterator[Any], bound: float) -> Any:
    """A stream's first chunk within ``bound`` seconds, tighter than the per-chunk timeout
    the stream enforces itself."""
    try:
        with anyio.fail_after(bound):
            return await chunks.__anext__()
    except StopAsyncIteration:
        return NOTHING
    except TimeoutError:
        raise Timeout(f"No first chunk within {bound:g} s") from None


def sync_stream(open_stream: Callable[[], Awaitable[Any]]) -> Iterator[Any]:
    """A routed stream as a sync iterator (the library's ``Router.completion``)."""

    async def chunks() -> AsyncIterator[Any]:
        stream = await open_stream()
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()

    return iterate_async(chunks)
