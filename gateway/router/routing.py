"""One request through a model group: a deployment picked (or waited for), attempts
retried with backoff, a slow one hedged, a failed group falling back to others, and the
process-wide ``max_in_flight`` held and released. ``Router`` builds one ``Routing`` and
hands it each request with the group it names."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from ..errors import GatewayError, RateLimitError
from .admission import Admission
from .attempts import Attempts, RoutedRequest
from .deployments import Deployment, Group
from .events import RouterEvents
from .hedging import hedged
from .policy import Policy
from .streams import RoutedStream

__all__ = ["Routed", "Routing"]

logger = logging.getLogger("gateway.router")


class Routed(msgspec.Struct):
    """What a routed call produced, and where."""

    result: Any
    deployment: str
    attempts: int = 1


class Routing:
    """Runs routed requests for one router, on its admission, policy and attempts."""

    def __init__(
        self,
        *,
        num_retries: int,
        max_in_flight: int | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[Any]],
        sync: Callable[[Group], Awaitable[None]] | None,
        admission: Admission,
        policy: Policy,
        attempts: Attempts,
        events: RouterEvents,
    ) -> None:
        self._num_retries = num_retries
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._sleep = sleep
        # Shared state (Redis) is read once per request before picking; None: in-process.
        self._sync = sync
        self._admission = admission
        self._policy = policy
        self._attempts = attempts
        self.events = events

    async def _run_group(self, group: Group, req: RoutedRequest) -> tuple[Any, Deployment]:
        """Attempts on the group's deployments until one answers or retries are spent."""
        n = 0
        last: GatewayError | None = None
        if self._sync is not None and not group.simple:
            await self._sync(group)  # at most one round trip to Redis (see redis_state)
        while True:
            d = self._admission.try_pick(group, req.tried, req.stream)
            if d is None:
                try:
                    d = await self._admission.acquire(group, req.tried, req.stream, req.deadline)
                except GatewayError:
                    if last is not None:  # a retry found no room: report the real failure
                        raise last from None
                    raise
            req.tried.append(d)
            req.attempts += 1
            try:
                if group.hedge_after is not None:
                    return await self._hedged(group, d, req)
                return await self._attempts.run(d, req), d
            except GatewayError as exc:
                if not exc.retryable or n >= self._num_retries:
                    raise
                last = exc
                delay = self._policy.retry_delay(n, exc, group, req.tried)
                deadline = req.deadline
                if delay is None or (deadline is not None and self._clock() + delay >= deadline):
                    raise
                logger.info("retrying %s after %s: %s", group.name, d.id, exc.message)
                self.events.add("retry", group.name, d.id)
                if delay > 0:
                    await self._sleep(delay)
                n += 1

    async def _hedged(
        self, group: Group, first: Deployment, req: RoutedRequest
    ) -> tuple[Any, Deployment]:
        def second() -> Deployment | None:
            d = self._admission.try_pick(group, req.tried, req.stream, fresh_only=True)
            if d is not None:
                req.tried.append(d)
                req.attempts += 1
                self.events.add("hedge_started", group.name, d.id)
            return d

        result, d = await hedged(
            first, group.hedge_after or 0, lambda d: self._attempts.run(d, req), second
        )
        if d is not first:
            self.events.add("hedge_won", group.name, d.id)
        return result, d

    async def route(
        self,
        group: Group,
        run: Callable[[Deployment, float], Any],
        stream: bool,
        timeout: float | None,
        prompt_chars: int = 0,
    ) -> Routed:
        """``run`` on the group's deployments: admission, retries, hedging, fallbacks."""
        req = RoutedRequest(run, stream, timeout, prompt_chars)
        if timeout is not None:
            req.deadline = self._clock() + timeout
        if group.direct:
            d = self._admission.take(group.deployments[0])
            req.attempts = 1
            return Routed(await self._attempts.run(d, req), d.id)
        held = False
        if self._max_in_flight is not None:
            try:
                await self._admission.admit(self._max_in_flight, req.deadline)
            except RateLimitError:
                self.events.add("shed", group.name)
                raise
            held = True
        try:
            try:
                result, d = await self._run_group(group, req)
            except GatewayError as exc:
                chain = self._policy.fallbacks(group, exc)
                if not chain:
                    raise
                result, d = await self._fall_back(exc, chain, req)
        except BaseException as exc:
            if held:
                self._admission.release_global()
            if isinstance(exc, RateLimitError) and exc.code == "capacity_exceeded":
                self.events.add("shed", group.name)
            raise
        if held:
            if isinstance(result, RoutedStream):
                result.hold_admission()
            else:
                self._admission.release_global()
        return Routed(result, d.id, req.attempts)

    async def _fall_back(
        self, original: GatewayError, chain: list[Group], req: RoutedRequest
    ) -> tuple[Any, Deployment]:
        for group in chain:
            if req.deadline is not None and self._clock() >= req.deadline:
                break
            logger.info("falling back to %s after: %s", group.name, original.message)
            self.events.add("fallback", group.name)
            try:
                return await self._run_group(group, req)
            except GatewayError:
                continue
        raise original
