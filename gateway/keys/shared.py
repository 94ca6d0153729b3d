"""A virtual key's counters shared through Redis, so its limits hold across instances.

Shared: requests and tokens in the last minute (``rpm_limit``, ``tpm_limit``), requests
in flight (``max_parallel_requests``) and the spend of the current budget period. The
request of a key with any of these limits awaits one round trip (``sync``) once its
model is known (none while its last read is under 20 ms old and under half of every
limit); that round trip reads the model group's shared router counters too, so the
router does not make a second one. What the request then adds (a request, its tokens,
its cost, a freed slot) is queued and sent with the next script call.

Spend here is a second, faster view of the database's: each instance adds its costs to
one Redis counter per key and budget period, and a budget is checked against the larger
of that and the database's figure (both only ever lag the truth). The database stays
the record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..router.redis_state import FRESH, RedisRouterState
from ..shared import SharedRedis

__all__ = ["KeyCounters", "KeyView"]

_DAY = 86400


def _far(e: Any, view: KeyView) -> bool:
    """Under half of every limit the key has."""
    return (
        (e.rpm is None or 2 * (view.requests + e.new_requests) < e.rpm)
        and (e.tpm is None or 2 * (view.tokens + e.new_tokens) < e.tpm)
        and (e.max_parallel is None or 2 * (view.in_flight + e.in_flight) < e.max_parallel)
        and (e.max_budget is None or 2 * max(view.spend, e.spend) < e.max_budget)
    )


class KeyView:
    """What the last sync read of one key, in the key manager's clock."""

    __slots__ = (
        "at",
        "in_flight",
        "requests",
        "requests_free",
        "spend",
        "tokens",
        "tokens_free",
    )

    def __init__(self, row: list[int], spend: float, now: float) -> None:
        self.at = now
        _, self.requests, self.tokens, wait_r, wait_t, self.in_flight = row
        self.requests_free = now + wait_r / 1000
        self.tokens_free = now + wait_t / 1000
        self.spend = spend


class KeyCounters:
    """The shared counters of every key, through one ``SharedRedis``."""

    def __init__(self, shared: SharedRedis) -> None:
        self.shared = shared

    def _keys(self, e: Any) -> list[str]:
        k = self.shared.key
        period = str(int(e.reset_at)) if e.reset_at is not None else "all"
        token = e.token
        return [
            k("k", token, "cd"),  # never set: keys have no cooldown, the read expects one
            k("k", token, "use"),
            k("k", token, "if"),
            k("k", token, "spend", period),
        ]

    async def sync(
        self, e: Any, now: float, router: Any = None, model: str = "", extra: Sequence[str] = ()
    ) -> list[Any] | None:
        """Read the key's shared counters into ``e.view`` (None: use local ones), unless
        the last read is fresh and far from every limit (the router's rule: see
        ``gateway.router.redis_state``). With ``router`` (a ``Router`` on this Redis),
        the same call reads ``model``'s group for it, and the ``extra`` string keys (a
        response cache's entry): their values, or None when nothing was read."""
        shared = self.shared
        view = e.view
        if view is not None and shared.up and now - view.at <= FRESH and _far(e, view):
            return None
        e.new_requests = e.new_tokens = 0
        keys = self._keys(e)
        spends = [*keys[3:], *extra] if extra else keys[3:]
        state = None if router is None else router.state
        if isinstance(state, RedisRouterState) and state.shared is shared:
            out = await state.sync_with(router.group(model), keys[:3], spends)
        else:
            out = await shared.sync(keys[:3], spends)
        try:
            e.view = None if out is None else KeyView(out[0], float(out[1]), now)
        except (TypeError, ValueError, IndexError) as exc:
            shared.failed(exc)
            e.view = None
            return None
        return None if out is None else out[2:]

    def admitted(self, e: Any) -> None:
        keys = self._keys(e)
        if e.rpm is not None:
            e.new_requests += 1
            self.shared.queue("r", keys[1], 1)
        if e.max_parallel is not None:
            self.shared.queue("f", keys[2], e.in_flight)

    def finished(self, e: Any, tokens: int, cost: float, now: float) -> None:
        shared = self.shared
        keys = self._keys(e)
        if e.max_parallel is not None:
            shared.queue("f", keys[2], e.in_flight)
        if tokens and e.tpm is not None:
            e.new_tokens += tokens
            shared.queue("t", keys[1], tokens)
        if cost and e.max_budget is not None:
            keep = int(e.reset_at - now) + 60 if e.reset_at is not None else _DAY
            shared.queue("s", keys[3], cost, max(keep, 60))
