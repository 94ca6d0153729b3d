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

__all__ = ["SCOPE_KEY", "RequestRecord", "current", "usage_of"]

SCOPE_KEY = "gateway.request"


class RequestRecord:
    """One HTTP request as the gateway saw it. Times are ``perf_counter()`` seconds;
    ``None`` where a step never happened (no model: an admin call; no first token: not a
    stream, or it failed first)."""

    __slots__ = (
        "attempts",
        "chunks",
        "client",
        "deployment",
        "ended",
        "error",
        "first_token",
        "id",
        "model",
        "responded",
        "route",
        "started",
        "status",
        "stream",
        "tokens_in",
        "tokens_out",
        "upstream",
    )

    def __init__(self, request_id: str | None, started: float, client: str | None) -> None:
        self.id = request_id  # None with ``gateway_settings.request_ids: false``
        self.started = started
        self.client = client
        self.route: str | None = None  # the endpoint's metrics label
        self.model: str | None = None  # as the client asked: a label only if configured
        self.deployment: str | None = None  # the one that answered, else the last tried
        self.attempts = 0  # calls on deployments (retries and hedges included)
        self.status = 200
        self.stream = False
        self.responded: float | None = None  # when the response's headers went out
        self.first_token: float | None = None  # a stream's first chunk from the router
        self.ended: float | None = None
        self.upstream = 0.0  # seconds spent waiting on the router (handler or upstream)
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None
        self.chunks = 0  # a stream's chunks
        # The error that answered the request, if any (read by callbacks).
        self.error: BaseException | None = None

    def answered(self, routed: Any, started: float) -> None:
        """The routed call begun at ``started`` answered (a whole answer)."""
        self.upstream += perf_counter() - started
        self.deployment = routed.deployment
        self.tokens_in, self.tokens_out = usage_of(routed.result)

    def streaming(self, routed: Any, started: float) -> None:
        """The routed stream begun at ``started`` has its first chunk: its chunks are
        counted from here on."""
        self.first_token = now = perf_counter()
        self.upstream += now - started
        self.deployment = routed.deployment
        self.stream = True
        routed.result = _CountedStream(routed.result, self)

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
            record = self._record
            prompt, completion = usage_of(chunk) if count else (None, None)
            record.tokens_in, record.tokens_out, record.chunks = prompt, completion, count

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            await self._inner.aclose()
