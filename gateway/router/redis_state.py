"""``RouterState`` shared through Redis: many gateway instances, one set of limits.

Shared: cooldowns, each deployment's requests and tokens in the last minute (rpm/tpm),
and its in-flight count. Per instance: latency averages, the failure count that leads
to a cooldown (the cooldown itself is shared), and ``max_in_flight``.

The router's methods stay synchronous. Before it picks a deployment of a group that has
limits or cooldowns, the router awaits ``sync``: one script call (``gateway.shared``)
that applies this instance's queued writes and reads the group's shared counters,
atomically. Between syncs, this instance adds its own new requests to what it read.
Two instances picking in the same instant may both see room for the last request: the
overshoot is bounded by the requests that sync within one round trip of each other;
a request once admitted is never refused afterwards.

The bounded lag: a group's view younger than ``FRESH`` (20 ms), or older while a read of
it is under way, is used without a round trip while every deployment in it is under
half its rpm, tpm and max_parallel and none is cooling down. Far from its limits a busy
group so costs one round trip per 20 ms, not one per request; near them every request
reads the shared counts. (Other instances would have to add half a limit within 20 ms,
plus one round trip, to push past it.)

A request with a virtual key whose limits are shared reads the key's counters and its
group's in the same script call (``sync_with``, called where the model is known); the
router's own ``sync`` for that request then costs nothing: one round trip in all.

If Redis is down or slow, every answer comes from this process's own counters
(``RouterState``, always kept), and sharing resumes when Redis is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

from ..shared import IN_FLIGHT_TTL, SharedRedis
from .state import WINDOW, RouterState

__all__ = ["FRESH", "RedisRouterState"]

_HEARTBEAT = IN_FLIGHT_TTL / 3
FRESH = 0.02

# The group this request's ``sync_with`` already read (or found fresh), and when: the
# router's ``sync`` of it, moments later in the same request, is then skipped.
_joined: ContextVar[tuple[Any, float] | None] = ContextVar("gateway_router_joined", default=None)


class _View:
    """What the last sync read of one deployment, in this process's clock."""

    __slots__ = (
        "at",
        "cool_until",
        "in_flight",
        "requests",
        "requests_free",
        "tokens",
        "tokens_free",
    )

    def __init__(self, row: list[int], now: float) -> None:
        self.at = now
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
        self._group_keys: dict[str, list[str]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        # Groups with a read under way.
        self._syncing: set[str] = set()
        shared.on_resume.append(self._resumed)

    def _redis_keys(self, key: str) -> tuple[str, str, str]:
        keys = self._keys.get(key)
        if keys is None:
            k = self.shared.key
            keys = self._keys[key] = (k("cd", key), k("use", key), k("if", key))
        return keys

    # -- the one await ----------------------------------------------------------------

    async def sync(self, group: Any) -> None:
        """Read the shared counters of ``group``'s deployments (sending queued writes
        along), unless the last read is fresh and far from every limit."""
        shared = self.shared
        if not shared.up:
            self._views.clear()
            return
        joined = _joined.get()
        if joined is not None and joined[0] is group:
            _joined.set(None)
            if self._clock() - joined[1] <= FRESH:
                return
        name = group.name
        syncing = self._syncing
        if self._far_from_limits(group, name in syncing):
            return
        syncing.add(name)
        try:
            await self._read(group.ids, name)
        finally:
            syncing.discard(name)

    async def sync_with(
        self, group: Any, counted: Sequence[str], spends: Sequence[str]
    ) -> list[Any] | None:
        """``shared.sync(counted, spends)`` that reads ``group``'s counters too (unless
        its view is fresh and far from limits), so the router's ``sync`` of it for this
        request costs no second round trip. ``group`` None (an unknown model) or simple
        (nothing shared to read) adds nothing."""
        shared = self.shared
        if group is None or group.simple or not shared.up:
            return await shared.sync(counted, spends)
        _joined.set((group, self._clock()))
        name = group.name
        syncing = self._syncing
        if self._far_from_limits(group, name in syncing):
            return await shared.sync(counted, spends)
        syncing.add(name)
        try:
            return await self._read(group.ids, name, counted, spends)
        finally:
            syncing.discard(name)

    async def _read(
        self, ids: list[str], group: str, counted: Sequence[str] = (), spends: Sequence[str] = ()
    ) -> list[Any] | None:
        """Read the group's deployments (and ``counted``/``spends`` after them); what
        was read after the group's rows, or None if Redis failed."""
        shared = self.shared
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
            shared._tasks.add(self._heartbeat)
        keys = self._group_keys.get(group)
        if keys is None:
            keys = self._group_keys[group] = [k for key in ids for k in self._redis_keys(key)]
        for key in ids:
            self._new_requests.pop(key, None)
            self._new_tokens.pop(key, None)
        rows = await shared.sync([*keys, *counted] if counted else keys, spends)
        views = self._views
        if rows is None:
            views.clear()
            return None
        now = self._clock()
        try:
            for key, row in zip(ids, rows[: len(ids)], strict=True):
                views[key] = _View(row, now)
        except (TypeError, ValueError) as exc:  # not what our script returns: not our Redis
            shared.failed(exc)
            views.clear()
            return None
        return rows[len(ids) :]

    def _far_from_limits(self, group: Any, reading: bool) -> bool:
        """Whether the group's views can stand in for a read: under ``FRESH`` old (or a
        read is under way: requests arriving meanwhile wait for none), and far from
        every limit."""
        views = self._views
        now = self._clock()
        for d in group.deployments:
            view = views.get(d.id)
            if view is None or view.cool_until > now:
                return False
            if now - view.at > FRESH and not reading:
                return False
            if d.rpm and 2 * (view.requests + self._new_requests.get(d.id, 0)) >= d.rpm:
                return False
            if d.tpm and 2 * (view.tokens + self._new_tokens.get(d.id, 0)) >= d.tpm:
                return False
            if d.max_parallel and 2 * self.in_flight(d.id) >= d.max_parallel:
                return False
        return True

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
        self.shared.queue("f", self._redis_keys(key)[2], self._in_flight[key])

    def finish(self, key: str) -> None:
        super().finish(key)
        self.shared.queue("f", self._redis_keys(key)[2], self._in_flight[key])

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(_HEARTBEAT)
            self._resumed()

    def _resumed(self) -> None:
        # After a restart of Redis (or an outage) our in-flight entries are gone: rewrite.
        for key, count in self._in_flight.items():
            if count > 0:
                self.shared.queue("f", self._redis_keys(key)[2], count)

    # -- usage ------------------------------------------------------------------------

    def record_request(self, key: str, now: float) -> None:
        super().record_request(key, now)
        self._new_requests[key] = self._new_requests.get(key, 0) + 1
        self.shared.queue("r", self._redis_keys(key)[1], 1)

    def record_tokens(self, key: str, now: float, tokens: int) -> None:
        super().record_tokens(key, now, tokens)
        if tokens > 0:
            self._new_tokens[key] = self._new_tokens.get(key, 0) + tokens
            self.shared.queue("t", self._redis_keys(key)[1], tokens)

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
        ms = int((until - self._clock()) * 1000)
        if ms > 0:
            self.shared.queue("c", self._redis_keys(key)[0], ms)
            view = self._views.get(key)
            if view is not None:
                view.cool_until = max(view.cool_until, until)

    def cooldown_remaining(self, key: str, now: float) -> float:
        mine = super().cooldown_remaining(key, now)
        view = self._view(key)
        if view is None or view.cool_until <= now:
            return mine
        return max(mine, view.cool_until - now)
