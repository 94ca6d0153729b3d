"""One request's bookkeeping: what metrics, the access log and callbacks read about it.

The HTTP app makes a ``RequestRecord`` per request, keeps it in the ASGI scope under
``"gateway.request"`` and in the ``current`` context variable (so log lines, the router
and handlers' threads find it without plumbing), and fills it in as the request goes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextvars import ContextVar
from time import perf_counter
from typing import Any

import msgspec

from .types import Usage

__all__ = ["SCOPE_KEY", "RequestRecord", "current", "usage_of"]

SCOPE_KEY = "gateway.request"


class RequestRecord(msgspec.Struct):
    """One HTTP request as the gateway saw it. Times are ``perf_counter()`` seconds;
    ``None`` where a step never happened (no model: an admin call; no first token: not a
    stream, or it failed first).

    A Struct: made per request, its defaults are set in C (a third of the cost of a
    class with ``__slots__`` and an ``__init__``)."""

    id: str | None  # None with ``gateway_settings.request_ids: false``
    started: float
    client: str | None
    route: str | None = None  # the endpoint's metrics label
    model: str | None = None  # as the client asked: a label only if configured
    deployment: str | None = None  # the one that answered, else the last tried
    attempts: int = 0  # calls on deployments (retries and hedges included)
    status: int = 200
    stream: bool = False
    responded: float | None = None  # when the response's headers went out
    first_token: float | None = None  # a stream's first chunk from the router
    ended: float | None = None
    upstream: float = 0.0  # seconds spent waiting on the router (handler or upstream)
    tokens_in: int | None = None
    tokens_out: int | None = None
    chunks: int = 0  # a stream's chunks
    # The error that answered the request, if any (read by callbacks).
    error: BaseException | None = None

    def answered(self, routed: Any, started: float) -> None:
        """The routed call begun at ``started`` answered (a whole answer)."""
        self.upstream += perf_counter() - started
        self.deployment = routed.deployment
        result = routed.result
        usage = getattr(result, "usage", None)
        if usage.__class__ is Usage:  # a handler's ModelResponse: usage_of's fast path, inline
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
            self.tokens_in = prompt if prompt.__class__ is int else None
            self.tokens_out = completion if completion.__class__ is int else None
        else:
            self.tokens_in, self.tokens_out = usage_of(result)

    def streaming(self, routed: Any, started: float) -> None:
        """The routed stream begun at ``started`` has its first chunk: its chunks are
        counted from here on."""
        self.first_token = now = perf_counter()
        self.upstream += now - started
        self.deployment = routed.deployment
        self.stream = True
        watch = getattr(routed.result, "watch", None)
        if watch is not None:  # a RoutedStream counts its own chunks
            watch(self._streamed)
        else:
            routed.result = _CountedStream(routed.result, self)

    def _streamed(self, last: Any, count: int) -> None:
        prompt, completion = usage_of(last) if count else (None, None)
        self.tokens_in, self.tokens_out, self.chunks = prompt, completion, count

    @property
    def duration(self) -> float:
        end = self.ended if self.ended is not None else perf_counter()
        return end - self.started

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started


current: ContextVar[RequestRecord | None] = ContextVar("gateway_request", default=None)


def _tokens(usage: Any) -> tuple[int | None, int | None]:
    if usage is None or usage is msgspec.UNSET:
        return None, None
    # OpenAI's names, else Anthropic's and the Responses API's (a front door's answer).
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
    else:
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        if prompt is None and completion is None:
            prompt = getattr(usage, "input_tokens", None)
            completion = getattr(usage, "output_tokens", None)
    return (
        prompt if type(prompt) is int else None,
        completion if type(completion) is int else None,
    )


def usage_of(result: Any) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens an answer or a stream chunk reports."""
    usage = getattr(result, "usage", None)
    if usage.__class__ is Usage:  # a handler's ModelResponse: the common case, 5x faster
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        return (
            prompt if type(prompt) is int else None,
            completion if type(completion) is int else None,
        )
    if isinstance(result, msgspec.Raw):  # the HTTP app's pre-encoded chunks
        try:
            result = msgspec.json.decode(result)
        except msgspec.DecodeError:
            return None, None
    if isinstance(result, dict):
        return _tokens(result.get("usage"))
    return _tokens(getattr(result, "usage", None))


class _CountedStream:
    """A routed stream whose chunks are counted; its last chunk's usage (where
    ``include_usage`` or the handler puts it) is read once, at the end."""

    __slots__ = ("_gen", "_inner", "_record")

    def __init__(self, inner: Any, record: RequestRecord) -> None:
        self._inner = inner
        self._record = record
        self._gen = self._chunks()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen

    def __anext__(self) -> Awaitable[Any]:
        return self._gen.__anext__()

    async def _chunks(self) -> AsyncGenerator[Any, None]:
        count = 0
        chunk: Any = None
        try:
            async for chunk in self._inner:
                count += 1
                yield chunk
        finally:
            self._record._streamed(chunk, count)

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            await self._inner.aclose()
