"""Admission: slots under ``max_in_flight`` and per-deployment limits, and the bounded
queue a request waits in when none is free.

A request takes a deployment's slot when it is picked and gives it back when its
attempt (or stream) ends; every release wakes the waiters, which look again. Nothing
here sleeps longer than ``queue_timeout`` or the request's own deadline.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio

from ..config import RouterSettings
from ..errors import GatewayError, RateLimitError, ServiceUnavailableError
from .deployments import Deployment, Group
from .state import RouterState
from .strategies import Chooser

__all__ = ["Admission", "Blocked", "retry_after_header"]


def retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class Blocked:
    """Why no deployment of a group could be taken: the shortest cooldown left, the
    shortest wait for a busy one, and a deployment's build error."""

    __slots__ = ("busy", "cooling", "error")

    def __init__(self) -> None:
        self.cooling: float | None = None
        self.busy: float | None = None
        self.error: GatewayError | None = None


class Admission:
    """Slots and the wait queue of one router."""

    def __init__(
        self,
        settings: RouterSettings,
        state: RouterState,
        clock: Callable[[], float],
        chooser: Chooser,
    ) -> None:
        self._settings = settings
        self._state = state
        self._clock = clock
        self._chooser = chooser
        self._waiters: dict[anyio.Event, None] = {}
        self._queued = 0

    # slots

    def take(self, d: Deployment) -> Deployment:
        self._state.start(d.id)
        if d.track_usage:
            self._state.record_request(d.id, self._clock())
        return d

    def release(self, d: Deployment) -> None:
        self._state.finish(d.id)
        if self._waiters:
            self._wake()

    def release_global(self) -> None:
        self._state.leave()
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        for event in self._waiters:
            event.set()

    # picking

    def _scan(self, group: Group, now: float, why: Blocked | None = None) -> list[Deployment]:
        """The group's deployments that can take a request now; ``why`` learns about
        the others."""
        state = self._state
        eligible: list[Deployment] = []
        for d in group.deployments:
            if d.error is not None:
                if why is not None:
                    why.error = d.error
                continue
            if group.can_cool:
                remaining = state.cooldown_remaining(d.id, now)
                if remaining > 0:
                    if why is not None:
                        why.cooling = _least(why.cooling, remaining)
                    continue
            if d.max_parallel is not None and state.in_flight(d.id) >= d.max_parallel:
                if why is not None:
                    why.busy = _least(why.busy, 1.0)
                continue
            if d.rpm or d.tpm:
                wait = state.rate_wait(d.id, now, d.rpm, d.tpm)
                if wait > 0:
                    if why is not None:
                        why.busy = _least(why.busy, wait)
                    continue
            eligible.append(d)
        return eligible

    def try_pick(
        self, group: Group, tried: list[Deployment], stream: bool, *, fresh_only: bool = False
    ) -> Deployment | None:
        """A deployment with its slot taken, preferring ones the request has not tried;
        None if none is free (with ``fresh_only``: none it has not tried)."""
        if group.simple:
            if fresh_only and group.deployments[0] in tried:
                return None
            return self.take(group.deployments[0])
        eligible = self._scan(group, self._clock())
        if eligible:
            fresh = [d for d in eligible if d not in tried] if tried else eligible
            if fresh:
                return self.take(self._chooser.choose(group, fresh, stream))
            if not fresh_only:
                return self.take(self._chooser.choose(group, eligible, stream))
        return None

    def blocked(self, group: Group) -> Blocked:
        """Why ``try_pick`` found no deployment of ``group``."""
        why = Blocked()
        self._scan(group, self._clock(), why)
        return why

    # waiting

    async def acquire(
        self, group: Group, tried: list[Deployment], stream: bool, deadline: float | None
    ) -> Deployment:
        """Wait in the queue for a deployment of the group, after ``try_pick`` found none."""
        queue_timeout = self._settings.queue_timeout
        queue_end = anyio.current_time() + queue_timeout
        queued = False
        try:
            while True:
                why = self.blocked(group)
                busy, cooling = why.busy, why.cooling
                if busy is None:
                    if cooling is not None:
                        raise ServiceUnavailableError(
                            f"Every deployment of `{group.name}` is cooling down after "
                            f"failures; retry in {math.ceil(cooling)} s",
                            code="deployments_cooling_down",
                            headers=retry_after_header(cooling),
                        )
                    if why.error is not None:
                        raise why.error
                    raise ServiceUnavailableError(f"No deployment of `{group.name}` is available")
                if not queued:
                    self.enter_queue(busy, f"Model `{group.name}` is at capacity")
                    queued = True
                wait = min(queue_end - anyio.current_time(), busy)
                if cooling is not None:
                    wait = min(wait, cooling)
                if deadline is not None:
                    wait = min(wait, deadline - self._clock())
                if wait <= 0 or not await self._wait(wait):
                    if anyio.current_time() >= queue_end or (
                        deadline is not None and self._clock() >= deadline
                    ):
                        raise RateLimitError(
                            f"Model `{group.name}` is at capacity and the request waited "
                            f"{queue_timeout:g} s; retry later",
                            code="capacity_exceeded",
                            headers=retry_after_header(busy),
                        )
                picked = self.try_pick(group, tried, stream)
                if picked is not None:
                    return picked
        finally:
            if queued:
                self._queued -= 1

    def enter_queue(self, retry_after: float, what: str) -> None:
        if self._queued >= self._settings.max_queue:
            raise RateLimitError(
                f"{what} and its wait queue is full; retry later",
                code="capacity_exceeded",
                headers=retry_after_header(retry_after),
            )
        self._queued += 1

    async def _wait(self, seconds: float) -> bool:
        """Wait until a slot frees (True) or ``seconds`` pass (False)."""
        event = anyio.Event()
        self._waiters[event] = None
        try:
            with anyio.move_on_after(seconds):
                await event.wait()
                return True
            return False
        finally:
            del self._waiters[event]

    async def admit(self, limit: int, deadline: float | None) -> None:
        """Take a slot under ``max_in_flight`` (``limit``), waiting in the queue if needed."""
        state = self._state
        if state.try_admit(limit):
            return
        self.enter_queue(1.0, "The gateway is at capacity")
        try:
            queue_timeout = self._settings.queue_timeout
            end = anyio.current_time() + queue_timeout
            while not state.try_admit(limit):
                wait = end - anyio.current_time()
                if deadline is not None:
                    wait = min(wait, deadline - self._clock())
                if wait <= 0 or not await self._wait(wait):
                    raise RateLimitError(
                        "The gateway is at capacity and the request waited "
                        f"{queue_timeout:g} s; retry later",
                        code="capacity_exceeded",
                        headers=retry_after_header(1.0),
                    )
        finally:
            self._queued -= 1


def _least(current: float | None, value: float) -> float:
    return value if current is None else min(current, value)
