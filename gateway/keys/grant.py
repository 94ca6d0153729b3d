"""A request's view of its virtual key: admission to a model, and what it cost."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import AuthenticationError, PermissionDeniedError, RateLimitError
from .entry import Entry, _iso
from .spend import chunk_usage, result_usage, text_chars

if TYPE_CHECKING:
    from .cache import KeyManager

__all__ = ["Grant"]


class Grant:
    """The key one request came with; admits it to a model and records what it cost."""

    __slots__ = (
        "chars",
        "deployment",
        "entry",
        "estimated",
        "first_at",
        "manager",
        "messages",
        "model",
        "started",
        "usage",
    )

    def __init__(self, manager: KeyManager, entry: Entry) -> None:
        self.manager = manager
        self.entry = entry
        self.model: str | None = None
        self.deployment: str | None = None
        self.usage: tuple[int, int] | None = None
        self.messages: Any = None
        self.chars = 0
        self.first_at: float | None = None
        self.started = 0.0

    @property
    def is_master(self) -> bool:
        return self.entry.master

    async def admit(
        self, model: str, router: Any = None, extra: Sequence[str] = ()
    ) -> list[Any] | None:
        """Check this key may call ``model`` now; raises the error to answer if not.

        A key whose counters are shared through Redis reads them here, where the model
        is known, in the same round trip as ``router``'s group and the ``extra`` keys
        (see ``shared``); their values, or None if that round trip was not needed."""
        e = self.entry
        manager = self.manager
        now = manager.clock()
        read = None
        if not e.master:
            if e.expires is not None and now >= e.expires:
                raise AuthenticationError(
                    f"API key expired at {_iso(e.expires)}", code="expired_key"
                )
            if e.models is not None and model not in e.models:
                raise PermissionDeniedError(
                    f"This API key is not allowed to call model `{model}`; it may call: "
                    f"{', '.join(sorted(e.models))}",
                    param="model",
                    code="model_not_allowed",
                )
            if e.reset_at is not None and now >= e.reset_at:
                manager.reset_budget(e, now)
            counters = manager.counters
            if counters is not None and e.shares:
                read = await counters.sync(e, now, router, model, extra)  # one round trip
            view = e.view
            if view is not None and view.spend > e.spend:
                e.spend = view.spend  # other instances' costs, ahead of the database
            if e.max_budget is not None and e.spend >= e.max_budget:
                headers = {}
                if e.reset_at is not None:
                    headers = {"Retry-After": str(max(1, math.ceil(e.reset_at - now)))}
                raise RateLimitError(
                    f"Budget exceeded: this key spent {e.spend:.6f} of its max_budget "
                    f"{e.max_budget}"
                    + (f"; it resets at {_iso(e.reset_at)}" if e.reset_at is not None else ""),
                    type="insufficient_quota",
                    code="budget_exceeded",
                    headers=headers,
                    retryable=False,
                )
            if view is not None:
                self._admit_shared(e, view, now)
            else:
                self._admit_local(e, now)
        e.in_flight += 1
        self.model = model
        self.started = now
        counters = manager.counters
        if counters is not None and e.shares:
            counters.admitted(e)
        return read

    def _admit_shared(self, e: Entry, view: Any, now: float) -> None:
        if e.max_parallel is not None and e.in_flight + view.in_flight >= e.max_parallel:
            raise _limited(f"max_parallel_requests ({e.max_parallel})", 1.0)
        if e.rpm is not None and view.requests + e.new_requests >= e.rpm:
            raise _limited(f"rpm_limit ({e.rpm})", view.requests_free - now)
        if e.tpm is not None and view.tokens + e.new_tokens >= e.tpm:
            raise _limited(f"tpm_limit ({e.tpm})", view.tokens_free - now)
        if e.rpm is not None:
            e.requests.append(now)  # the local window too: it answers if Redis goes

    def _admit_local(self, e: Entry, now: float) -> None:
        if e.max_parallel is not None and e.in_flight >= e.max_parallel:
            raise _limited(f"max_parallel_requests ({e.max_parallel})", 1.0)
        if e.rpm is not None:
            requests = e.requests
            while requests and requests[0] <= now - 60.0:
                requests.popleft()
            if len(requests) >= e.rpm:
                raise _limited(f"rpm_limit ({e.rpm})", requests[0] + 60.0 - now)
        if e.tpm is not None:
            tokens = e.tokens
            while tokens and tokens[0][0] <= now - 60.0:
                e.token_sum -= tokens.popleft()[1]
            if e.token_sum >= e.tpm:
                raise _limited(f"tpm_limit ({e.tpm})", tokens[0][0] + 60.0 - now)
        if e.rpm is not None:
            e.requests.append(now)  # counted once admitted, not when refused

    def tap(self, call: Callable[[], Awaitable[Any]], messages: Any = None) -> Any:
        """``call`` (returning a ``Routed``), noting the deployment and usage of its answer."""
        self.messages = messages

        async def tapped() -> Any:
            routed = await call()
            self.deployment = routed.deployment
            result = routed.result
            if hasattr(result, "__aiter__") and hasattr(result, "aclose"):
                self.first_at = self.manager.clock()
                routed.result = _TappedStream(result, self)
            else:
                self.usage = result_usage(result)
            return routed

        return tapped

    def finish(self, status: int) -> None:
        """The request is over (``status`` as answered): free its slot, record its cost."""
        if self.model is None:
            return  # never admitted: an admin call, or refused before a model was known
        manager = self.manager
        e = self.entry
        e.in_flight -= 1
        now = manager.clock()
        estimated = False
        usage = self.usage
        if usage is None and self.first_at is not None:
            # A stream without usage: estimated, four characters a token.
            estimated = True
            usage = (text_chars(self.messages) // 4, self.chars // 4)
        prompt, completion = usage or (0, 0)
        total = prompt + completion
        if e.tpm is not None and total:
            e.tokens.append((now, total))
            e.token_sum += total
        cost = manager.prices.cost(self.model, self.deployment, prompt, completion)
        if cost and not e.master:
            e.spend += cost
        counters = manager.counters
        if counters is not None and e.shares:
            counters.finished(e, total, cost, now)
        ttft = None if self.first_at is None else self.first_at - self.started
        row = (
            manager.request_id(),
            e.token,
            e.alias,
            self.model,
            self.deployment,
            prompt,
            completion,
            total,
            int(estimated),
            cost,
            "success" if status < 400 else "failure",
            status,
            self.started,
            now,
            ttft,
            manager.day(self.started),
        )
        manager.writer.add(row, e.token, cost, e.charged)


def _limited(what: str, retry_after: float) -> RateLimitError:
    return RateLimitError(
        f"Rate limit reached for this API key: {what}",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


class _TappedStream:
    """A routed stream whose chunks are counted for the request's usage."""

    __slots__ = ("_gen", "_grant", "_inner")

    def __init__(self, inner: Any, grant: Grant) -> None:
        self._inner = inner
        self._grant = grant
        self._gen = self._chunks()

    def __aiter__(self) -> Any:
        return self._gen

    async def _chunks(self) -> Any:
        grant = self._grant
        async for chunk in self._inner:
            usage, chars = chunk_usage(chunk)
            if usage is not None:
                grant.usage = usage
            grant.chars += chars
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            await self._inner.aclose()
