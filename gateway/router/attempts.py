"""One attempt: a call on one deployment whose slot is taken, under the timeouts that
apply, and what the router records when it ends (latency, usage, failures, the slot).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import RouterSettings
from ..errors import GatewayError, Timeout
from .admission import Admission
from .deployments import Deployment
from .events import RouterEvents
from .policy import Policy
from .state import RouterState
from .streams import NOTHING, RoutedStream, first_chunk, usage_tokens

__all__ = ["Attempts", "RoutedRequest"]


class RoutedRequest:
    """One routed request: how to call a deployment, its limits, and what it tried
    (deployments and attempts, across groups)."""

    __slots__ = ("attempts", "deadline", "prompt_chars", "run", "stream", "timeout", "tried")

    def __init__(
        self,
        run: Callable[[Deployment, float], Any],
        stream: bool,
        timeout: float | None,
        prompt_chars: int,
    ) -> None:
        self.run = run  # (deployment, timeout) -> awaitable answer, or a stream's chunks
        self.stream = stream
        self.timeout = timeout
        self.deadline: float | None = None
        self.prompt_chars = prompt_chars
        self.attempts = 0
        self.tried: list[Deployment] = []


class Attempts:
    """Runs attempts for one router; the owner its ``RoutedStream``s report to."""

    def __init__(
        self,
        settings: RouterSettings,
        state: RouterState,
        clock: Callable[[], float],
        admission: Admission,
        policy: Policy,
        events: RouterEvents | None = None,
    ) -> None:
        self._events = events if events is not None else RouterEvents()
        self._stream_timeout = settings.stream_timeout
        self._record_latency = settings.routing_strategy == "latency-based"
        self._state = state
        self._clock = clock
        self._admission = admission
        self._policy = policy

    async def run(self, d: Deployment, req: RoutedRequest) -> Any:
        """One call on ``d``; its slot is freed when the call (or its stream) ends."""
        clock = self._clock
        started = clock()
        timeout = d.attempt_timeout
        stream = req.stream
        if stream and req.timeout is not None and req.timeout < timeout:
            timeout = req.timeout  # a stream's request timeout bounds each chunk wait too
        # The first wait: the whole answer, or a stream's first chunk.
        limit = timeout
        if stream:
            limit = d.stream_timeout or self._stream_timeout or timeout
        cut = False  # whether the caller's deadline, not the deployment's limit, applies
        deadline = req.deadline
        if deadline is not None:
            remaining = deadline - started
            if remaining <= 0:
                self._admission.release(d)
                raise Timeout("Request timed out before a deployment could answer")
            if remaining < limit:
                limit, cut = remaining, True
        try:
            if not stream:
                result = await req.run(d, limit)
            else:
                chunks = req.run(d, timeout)
                if limit < timeout:
                    first = await first_chunk(chunks, limit)
                else:
                    try:
                        first = await chunks.__anext__()
                    except StopAsyncIteration:
                        first = NOTHING
        except BaseException as exc:
            self._admission.release(d)
            if isinstance(exc, GatewayError):
                self._events.failed(d.group.name, d.id, exc)
                elapsed = clock() - started
                self._policy.failed(d, exc, elapsed, cut=cut and isinstance(exc, Timeout))
            raise
        if stream:
            if self._record_latency:
                self._state.record_latency(d.id, clock() - started, first_token=True)
            return RoutedStream(self, d, first, chunks, started, req.prompt_chars)
        if self._record_latency:
            self._state.record_latency(d.id, clock() - started)
        if d.track_usage:
            usage = getattr(result, "usage", None)
            self._state.record_tokens(d.id, clock(), usage_tokens(usage) or 0)
        self._admission.release(d)
        return result

    # StreamOwner

    def stream_ended(
        self, d: Deployment, started: float, tokens: int | None, error: GatewayError | None
    ) -> None:
        if tokens is not None:
            self._state.record_tokens(d.id, self._clock(), tokens)
        if error is not None:
            self._events.failed(d.group.name, d.id, error)
            self._policy.failed(d, error, self._clock() - started, cut=False)
        self._admission.release(d)

    def release_admission(self) -> None:
        self._admission.release_global()
