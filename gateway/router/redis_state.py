"""``RouterState`` shared through Redis: many gateway instances, one set of limits.

Shared: cooldowns, each deployment's requests and tokens in the last minute (rpm/tpm),
and its in-flight count. Per instance: latency averages, the failure count that leads
to a cooldown (the cooldown itself is shared), and ``max_in_flight``.

The router's methods stay synchronous. Before it picks a deployment of a group that has
limits or cooldowns, the router awaits ``sync``: one pipelined round trip that sends
this instance's queued writes and reads the group's shared counters (a Lua script, so
the read and its pruning are atomic). Between syncs, this instance adds its own new
requests to what it read. Two instances picking in the same instant may both see room
for the last request: the overshoot is bounded by the requests in flight in that one
round trip, and a request the instance admitted is never refused afterwards.

Times are Redis' own (``TIME``), so instances need no synchronized clocks. Requests
and tokens are counted in one-second buckets of a hash per deployment, summed over
the last 60. In-flight counts are one hash field per instance, rewritten whole (not
incremented) with an expiry a heartbeat renews, so a crashed instance leaks nothing.

If Redis is down or slow, every answer comes from this process's own counters
(``RouterState``, always kept), and sharing resumes when Redis is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..shared import SharedRedis
from .state import WINDOW, RouterState

__all__ = ["RedisRouterState"]

# An instance's in-flight entry lives this long without a heartbeat.
_IN_FLIGHT_TTL_MS = 30_000
_HEARTBEAT = 10.0

# KEYS: per deployment, its cooldown key, usage hash and in-flight hash.
# ARGV: this instance. Returns per deployment: cooldown ms left, requests and tokens in
# the window, ms until the oldest request and token buckets leave it, others' in flight.
_READ = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sec = tonumber(t[1])
local out = {}
for i = 1, #KEYS, 3 do
  local cd = redis.call('PTTL', KEYS[i])
  if cd < 0 then cd = 0 end
  local req, tok, old_r, old_t = 0, 0, -1, -1
  local h = redis.call('HGETALL', KEYS[i + 1])
  for j = 1, #h, 2 do
    local f = h[j]
    local s = tonumber(string.sub(f, 3))
    if s == nil or s <= sec - 60 then
      redis.call('HDEL', KEYS[i + 1], f)
    else
      local v = tonumber(h[j + 1])
      if string.sub(f, 1, 1) == 'r' then
        req = req + v
        if old_r < 0 or s < old_r then old_r = s end
      else
        tok = tok + v
        if old_t < 0 or s < old_t then old_t = s end
      end
    end
  end
  local wait_r, wait_t = 0, 0
  if old_r >= 0 then wait_r = (old_r + 61) * 1000 - now_ms end
  if old_t >= 0 then wait_t = (old_t + 61) * 1000 - now_ms end
  local busy = 0
  local f = redis.call('HGETALL', KEYS[i + 2])
  for j = 1, #f, 2 do
    local n, exp = string.match(f[j + 1], '(%d+):(%d+)')
    if n == nil or tonumber(exp) < now_ms then
      redis.call('HDEL', KEYS[i + 2], f[j])
    elseif f[j] ~= ARGV[1] then
      busy = busy + tonumber(n)
    end
  end
  table.insert(out, {cd, req, tok, wait_r, wait_t, busy})
end
return out
"""

# KEYS[1]: usage hash. ARGV: 'r' or 't', amount.
_COUNT = """
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':' .. t[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], 120)
return 1
"""

# KEYS[1]: in-flight hash. ARGV: instance, count, ttl ms.
_IN_FLIGHT = """
if tonumber(ARGV[2]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
local t = redis.call('TIME')
local exp = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. string.format('%d', exp))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1]: cooldown key. ARGV[1]: ms. The longer of the two cooldowns wins.
_COOL = """
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


class _View:
    """What the last sync read of one deployment, in this process's clock."""

    __slots__ = ("cool_until", "in_flight", "requests", "requests_free", "tokens", "tokens_free")

    def __init__(self, row: list[int], now: float) -> None:
        cd, self.requests, self.tokens, wait_r, wait_t, self.in_flight = row
        self.cool_until = now + cd / 1000
        self.requests_free = now + wait_r / 1000
        self.tokens_free = now + wait_t / 1000


class RedisRouterState(RouterState):
    """``RouterState`` whose limits and cooldowns hold across instances (see the module)."""

    def __init__(self, shared: SharedRedis, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.shared = shared
        self._clock = clock
        self._views: dict[str, _View] = {}
        # Requests and tokens this instance recorded since its last sync of the key.
        self._new_requests: dict[str, int] = {}
        self._new_tokens: dict[str, int] = {}
        self._keys: dict[str, tuple[str, str, str]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        shared.on_resume.append(self._resumed)
        self._read = shared.script("read", _READ)
        self._count = shared.script("count", _COUNT)
        self._set_in_flight = shared.script("in_flight", _IN_FLIGHT)
        self._cool = shared.script("cool", _COOL)

    def _redis_keys(self, key: str) -> tuple[str, str, str]:
        keys = self._keys.get(key)
        if keys is None:
            k = self.shared.key
            keys = self._keys[key] = (k("cd", key), k("use", key), k("if", key))
        return keys

    # -- the one await ----------------------------------------------------------------

    async def sync(self, ids: list[str]) -> None:
        """Read the shared counters of deployments ``ids`` (sending queued writes along)."""
        shared = self.shared
        if not shared.up:
            self._views.clear()
            return
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
            shared._tasks.add(self._heartbeat)
        keys: list[str] = []
        for key in ids:
            keys.extend(self._redis_keys(key))
            self._new_requests.pop(key, None)
            self._new_tokens.pop(key, None)
        results = await shared.execute([(self._read, keys, [shared.instance])])
        if results is None:
            self._views.clear()
            return
        now = self._clock()
        views = self._views
        try:
            for key, row in zip(ids, results[0], strict=True):
                views[key] = _View(row, now)
        except (TypeError, ValueError) as exc:  # not what our script returns: not our Redis
            shared.failed(exc)
            views.clear()

    def _view(self, key: str) -> _View | None:
        if not self.shared.up:
            return None
        return self._views.get(key)

    # -- in flight ----------------------------------------------------------------------

    def in_flight(self, key: str) -> int:
        view = self._view(key)
        mine = super().in_flight(key)
        return mine if view is None else mine + view.in_flight

    def start(self, key: str) -> None:
        super().start(key)
        self._send_in_flight(key)

    def finish(self, key: str) -> None:
        super().finish(key)
        self._send_in_flight(key)

    def _send_in_flight(self, key: str) -> None:
        shared = self.shared
        if shared.up:
            count = self._in_flight.get(key, 0)
            shared.queue(
                self._set_in_flight,
                [self._redis_keys(key)[2]],
                [shared.instance, count, _IN_FLIGHT_TTL_MS],
            )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(_HEARTBEAT)
            self._resumed()

    def _resumed(self) -> None:
        # After a restart of Redis (or an outage) our in-flight entries are gone: rewrite.
        for key, count in self._in_flight.items():
            if count > 0:
                self._send_in_flight(key)

    # -- usage ------------------------------------------------------------------------

    def record_request(self, key: str, now: float) -> None:
        super().record_request(key, now)
        shared = self.shared
        if shared.up:
            self._new_requests[key] = self._new_requests.get(key, 0) + 1
            shared.queue(self._count, [self._redis_keys(key)[1]], ["r", 1])

    def record_tokens(self, key: str, now: float, tokens: int) -> None:
        super().record_tokens(key, now, tokens)
        shared = self.shared
        if tokens > 0 and shared.up:
            self._new_tokens[key] = self._new_tokens.get(key, 0) + tokens
            shared.queue(self._count, [self._redis_keys(key)[1]], ["t", tokens])

    def usage(self, key: str, now: float) -> tuple[int, int]:
        view = self._view(key)
        if view is None:
            return super().usage(key, now)
        return (
            view.requests + self._new_requests.get(key, 0),
            view.tokens + self._new_tokens.get(key, 0),
        )

    def rate_wait(self, key: str, now: float, rpm: int | None, tpm: int | None) -> float:
        view = self._view(key)
        if view is None:
            return super().rate_wait(key, now, rpm, tpm)
        wait = 0.0
        if rpm is not None and view.requests + self._new_requests.get(key, 0) >= rpm:
            wait = view.requests_free - now
        if tpm is not None and view.tokens + self._new_tokens.get(key, 0) >= tpm:
            wait = max(wait, view.tokens_free - now)
        # Past the time the oldest bucket left the window the view is stale: let the
        # request through rather than refuse on old numbers (the next sync corrects).
        return min(max(wait, 0.0), WINDOW)

    # -- cooldowns ----------------------------------------------------------------------

    def cool_down(self, key: str, until: float) -> None:
        super().cool_down(key, until)
        shared = self.shared
        ms = int((until - self._clock()) * 1000)
        if ms > 0 and shared.up:
            shared.queue(self._cool, [self._redis_keys(key)[0]], [ms])
            view = self._views.get(key)
            if view is not None:
                view.cool_until = max(view.cool_until, until)

    def cooldown_remaining(self, key: str, now: float) -> float:
        mine = super().cooldown_remaining(key, now)
        view = self._view(key)
        if view is None or view.cool_until <= now:
            return mine
        return max(mine, view.cool_until - now)
