"""What failures teach: cooldowns, whether and when to retry, and where to fall back."""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Callable

from ..config import RouterSettings
from ..errors import ContextWindowExceededError, GatewayError
from .deployments import Deployment, Group
from .events import RouterEvents
from .state import RouterState

__all__ = ["Policy", "retry_after"]

logger = logging.getLogger("gateway.router")


def retry_after(exc: GatewayError, cap: float) -> float | None:
    """Seconds from a ``Retry-After`` (or OpenAI's ``retry-after-ms``) header, at most
    ``cap``; None when there is none or it is not a number or a date."""
    for name, value in exc.headers.items():
        lowered = name.lower()
        try:
            if lowered == "retry-after-ms":
                seconds = float(value) / 1000
            elif lowered == "retry-after":
                try:
                    seconds = float(value)
                except ValueError:
                    when = email.utils.parsedate_to_datetime(str(value))
                    seconds = when.timestamp() - time.time()
            else:
                continue
        except (TypeError, ValueError, OverflowError):
            return None
        if math.isnan(seconds):
            return None
        return min(max(seconds, 0.0), cap)
    return None


def _is_context_window(exc: GatewayError) -> bool:
    return isinstance(exc, ContextWindowExceededError) or exc.code == "context_length_exceeded"


class Policy:
    """Retries, cooldowns and fallbacks of one router."""

    def __init__(
        self,
        settings: RouterSettings,
        state: RouterState,
        clock: Callable[[], float],
        events: RouterEvents | None = None,
    ) -> None:
        self._events = events if events is not None else RouterEvents()
        self._settings = settings
        self._state = state
        self._clock = clock
        self._record_latency = settings.routing_strategy == "latency-based"

    def failed(self, d: Deployment, exc: GatewayError, elapsed: float, *, cut: bool) -> None:
        """Count a failed attempt toward the deployment's cooldown.

        Only retryable failures count (never 400/401/404: the request, not the
        deployment, was wrong), and not a timeout the caller's own deadline caused.
        """
        if not exc.retryable or cut:
            return
        state = self._state
        if self._record_latency:
            # A deployment that fails (fast, or by hanging) must not look fast: a failure
            # counts as at least twice its usual latency.
            for first_token in (False, True):
                usual = state.latency(d.id, first_token=first_token)
                penalty = max(elapsed, 2 * usual) if usual is not None else max(elapsed, 1.0)
                state.record_latency(d.id, penalty, first_token=first_token)
        if not d.group.can_cool:
            return
        now = self._clock()
        s = self._settings
        wait = retry_after(exc, s.max_retry_after)
        if exc.status_code == 429 and wait:
            state.cool_down(d.id, now + wait)
            self._events.add("cooldown", d.group.name, d.id)
            return
        if state.record_failure(d.id, now) > s.allowed_fails:
            state.cool_down(d.id, now + s.cooldown_time)
            self._events.add("cooldown", d.group.name, d.id)
            logger.warning(
                "deployment %s cooling down for %g s after repeated failures (last: %s)",
                d.id,
                s.cooldown_time,
                exc.message,
            )

    def retry_delay(
        self, n: int, exc: GatewayError, group: Group, tried: list[Deployment]
    ) -> float | None:
        """Seconds to wait before retry ``n`` (0-based); None: do not retry."""
        # Another deployment that this request has not tried and that is not cooling
        # down: go at once.
        now = self._clock()
        for d in group.deployments:
            if d not in tried and d.error is None:
                if not group.can_cool or self._state.cooldown_remaining(d.id, now) == 0:
                    return 0.0
        s = self._settings
        cap = min(s.retry_backoff_max, s.retry_backoff * 2**n)
        delay = cap / 2 + random.uniform(0, cap / 2)
        wait = retry_after(exc, s.max_retry_after)
        if wait is not None:
            if wait > s.retry_backoff_max:
                return None
            delay = max(delay, wait)
        return delay

    @staticmethod
    def fallbacks(group: Group, exc: GatewayError) -> list[Group]:
        """The groups to try, in order, after ``group`` failed with ``exc``."""
        if _is_context_window(exc):
            return group.context_fallbacks
        if not exc.retryable and exc.status_code in (400, 404, 413, 422):
            return []  # the request itself is wrong; another model will not fix it
        return group.fallbacks
