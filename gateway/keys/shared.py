"""A virtual key's counters shared through Redis, so its limits hold across instances.

Shared: requests and tokens in the last minute (``rpm_limit``, ``tpm_limit``), requests
in flight (``max_parallel_requests``) and the spend of the current budget period. The
request of a key with any of these limits awaits one round trip (``sync``) after its key
is known; what it then adds (a request, its tokens, its cost, a freed slot) is queued
and sent with the next pipeline, within one event-loop turn.

Spend here is a second, faster view of the database's: each instance adds its costs to
one Redis counter per key and budget period, and a budget is checked against the larger
of that and the database's figure (both only ever lag the truth). The database stays
the record.
"""

from __future__ import annotations

from typing import Any

from ..router.redis_state import _COUNT, _IN_FLIGHT, _READ
from ..shared import SharedRedis

__all__ = ["KeyCounters", "KeyView"]

# KEYS[1]: the spend counter. ARGV: cost, seconds to keep it.
_SPEND = """
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# The router's read of one deployment, applied to a key, plus the key's spend.
# KEYS: a cooldown key (unused), usage hash, in-flight hash, spend counter.
_KEY_READ = _READ.replace("for i = 1, #KEYS, 3 do", "for i = 1, 3, 3 do").replace(
    "return out",
    "table.insert(out, redis.call('GET', KEYS[4]) or '0')\nreturn out",
)

_IN_FLIGHT_TTL_MS = 30_000
_DAY = 86400


class KeyView:
    """What the last sync read of one key, in the key manager's clock."""

    __slots__ = ("in_flight", "requests", "requests_free", "spend", "tokens", "tokens_free")

    def __init__(self, row: list[int], spend: float, now: float) -> None:
        _, self.requests, self.tokens, wait_r, wait_t, self.in_flight = row
        self.requests_free = now + wait_r / 1000
        self.tokens_free = now + wait_t / 1000
        self.spend = spend


class KeyCounters:
    """The shared counters of every key, through one ``SharedRedis``."""

    def __init__(self, shared: SharedRedis) -> None:
        self.shared = shared
        self._read = shared.script("key_read", _KEY_READ)
        self._count = shared.script("count", _COUNT)
        self._in_flight = shared.script("in_flight", _IN_FLIGHT)
        self._spend = shared.script("spend", _SPEND)

    def _keys(self, e: Any) -> list[str]:
        k = self.shared.key
        period = str(int(e.reset_at)) if e.reset_at is not None else "all"
        return [
            k("k", e.token, "cd"),
            k("k", e.token, "use"),
            k("k", e.token, "if"),
            k("k", e.token, "spend", period),
        ]

    async def sync(self, e: Any, now: float) -> None:
        """Read the key's shared counters into ``e.view`` (None: use local ones)."""
        shared = self.shared
        e.new_requests = e.new_tokens = 0
        if not shared.up:
            e.view = None
            return
        results = await shared.execute([(self._read, self._keys(e), [shared.instance])])
        try:
            row, spend = results[0] if results is not None else (None, None)
            e.view = None if row is None else KeyView(row, float(spend), now)
        except (TypeError, ValueError) as exc:
            shared.failed(exc)
            e.view = None

    def admitted(self, e: Any) -> None:
        shared = self.shared
        if not shared.up:
            return
        keys = self._keys(e)
        if e.rpm is not None:
            e.new_requests += 1
            shared.queue(self._count, [keys[1]], ["r", 1])
        if e.max_parallel is not None:
            self.send_in_flight(e, keys)

    def send_in_flight(self, e: Any, keys: list[str] | None = None) -> None:
        shared = self.shared
        if shared.up:
            keys = keys or self._keys(e)
            shared.queue(
                self._in_flight, [keys[2]], [shared.instance, e.in_flight, _IN_FLIGHT_TTL_MS]
            )

    def finished(self, e: Any, tokens: int, cost: float, now: float) -> None:
        shared = self.shared
        if not shared.up:
            return
        keys = self._keys(e)
        if e.max_parallel is not None:
            self.send_in_flight(e, keys)
        if tokens and e.tpm is not None:
            e.new_tokens += tokens
            shared.queue(self._count, [keys[1]], ["t", tokens])
        if cost and e.max_budget is not None:
            keep = int(e.reset_at - now) + 60 if e.reset_at is not None else _DAY
            shared.queue(self._spend, [keys[3]], [repr(cost), max(keep, 60)])
