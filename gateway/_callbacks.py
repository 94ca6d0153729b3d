"""Callbacks (LiteLLM's ``CustomLogger``): proxy hooks on the request path, logging off it.

Logging events wait in a bounded queue and are run by one task per app, after the
response is sent: a slow or failing callback never delays or fails a request. A full
queue drops the event and counts it (``Callbacks.dropped``, the
``gateway_callback_events_dropped`` metric). Sync methods run on a worker thread of
their own, never on the event loop. What an event carries is in ``_callback_events``,
a request's hooks and event in ``_callback_requests``, library calls' callbacks
(``gateway.callbacks``) in ``_callbacks_library``.

With no callbacks configured none of this exists: the app checks one attribute.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import anyio

from ._callback_events import (
    _LOG_METHODS,
    CALLBACK_METHODS,
    Event,
    _overrides,
    _pick,
    _report,
    build_kwargs,
    reads,
)
from ._callback_requests import _UNREAD, CALL_TYPES, RequestLog, hook_error
from .caching.dual_cache import DualCache
from .keys.spend import Prices
from .record import SCOPE_KEY

__all__ = [
    "CALLBACK_METHODS",
    "DEFAULT_MAX_QUEUE",
    "Callbacks",
    "Event",
    "RequestLog",
    "build_kwargs",
    "hook_error",
    "reads",
]

logger = logging.getLogger("gateway.callbacks")

DEFAULT_MAX_QUEUE = 10_000
# Seconds an idle callback task waits before running newly queued events: it then runs
# all that arrived meanwhile, so a busy gateway wakes it 20 times a second, not per request.
BATCH_DELAY = 0.05


class Callbacks:
    """The callbacks of one app: the hooks, and the queue and task that run the logging.

    ``deployments`` (the config's ``model_list``) gives each deployment id its model,
    api_base and prices for the logging object.
    """

    def __init__(
        self,
        callbacks: Iterable[Any],
        *,
        model_list: Iterable[Any] = (),
        max_queue: int = DEFAULT_MAX_QUEUE,
        runtime: Any = None,
    ) -> None:
        self.callbacks = tuple(callbacks)
        self.runtime = runtime  # the app's (gateway.runtime.Runtime), for callbacks' context
        self.pre_call = tuple(c for c in self.callbacks if _overrides(c, "async_pre_call_hook"))
        self.post_success = tuple(
            c for c in self.callbacks if _overrides(c, "async_post_call_success_hook")
        )
        self.post_failure = tuple(
            c for c in self.callbacks if _overrides(c, "async_post_call_failure_hook")
        )
        self.loggers = tuple(
            c for c in self.callbacks if any(_overrides(c, m) for m in _LOG_METHODS)
        )
        # Per logger and outcome: its async method if overridden, else its sync one.
        self._methods: tuple[tuple[Any, dict[bool, tuple[str, bool]]], ...] = tuple(
            (c, {ok: _pick(c, ok) for ok in (True, False)}) for c in self.loggers
        )
        # Per outcome (success?): (logger, method name, is async, the bound method) of
        # each that has one; bound once, as what it reads is decided once.
        self._calls = {
            ok: tuple(
                (c, m[ok][0], m[ok][1], getattr(c, m[ok][0])) for c, m in self._methods if m[ok][0]
            )
            for ok in (True, False)
        }
        # Per outcome, which of (kwargs, response_obj, start_time, end_time) any logger
        # reads: what nobody reads is never built.
        self.needs: dict[bool, tuple[bool, bool, bool, bool]] = {}
        for ok in (True, False):
            used = [reads(getattr(c, m[ok][0])) for c, m in self._methods if m[ok][0]]
            self.needs[ok] = tuple(any(u[i] for u in used) for i in range(4))  # type: ignore[assignment]
        self.reads_any = {ok: any(needs) for ok, needs in self.needs.items()}
        # A request's answer is watched (a coroutine around its call) only for a hook or
        # a logger that reads it; else the outcome the edge sees (status, error) is all.
        self.taps = bool(
            self.post_success or self.post_failure or self.reads_any[True] or self.reads_any[False]
        )
        # The event of a logger that reads none of its arguments: one per outcome, shared.
        self.unread = {ok: Event(ok, None, None, True, _UNREAD) for ok in (True, False)}
        # Nothing reads more than a request's outcome: one log shared by all requests.
        self.outcome = None if self.taps or self.pre_call else Outcome(self)
        # A stream's chunks are kept only to rebuild its answer for a logger that reads it.
        self.keep_chunks = any(self.needs[True][:2]) or self.needs[False][0]
        self.max_queue = max_queue
        self.dropped = 0
        self.cache = DualCache()
        model_list = list(model_list)
        self.prices = Prices(model_list)
        self.deployments: dict[str, tuple[str, str | None]] = {}
        for index, d in enumerate(model_list):
            info = d.model_info or {}
            self.deployments[str(info.get("id") or f"{d.model_name}/{index}")] = (
                d.model,
                d.api_base,
            )
        self._queue: deque[Event | RequestLog] = deque()
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None  # set while the task is idle
        # The loop on which the idle task's wake-up is due (None: none is).
        self._waking: asyncio.AbstractEventLoop | None = None
        # Sync methods: one thread at a time, apart from anyio's default pool.
        self._thread_limiter: anyio.CapacityLimiter | None = None

    # -- queueing -------------------------------------------------------------------

    def emit(self, event: Event | RequestLog) -> None:
        """Queue ``event`` for the logging callbacks; never blocks, never raises."""
        if not self.loggers:
            return
        if len(self._queue) >= self.max_queue:
            self._drop()
            return
        loop = asyncio._get_running_loop()  # None, not an exception, outside a loop
        if loop is None:  # no asyncio loop (a trio host): the library's thread
            from ._callbacks_library import drain

            drain().put(self, event)
            return
        self._queue.append(event)
        if self._waking is loop:  # a wake-up is due: it runs this event too (most calls)
            return
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            # One task for the app's life, not one per event: a task and its context
            # cost more than the rest of queueing. A context of its own: not that of the
            # request that happened to start it (its trace span, its key).
            self._waiter = None
            self._task = loop.create_task(self._drain(), context=self._context())
        elif self._waiter is not None:
            # Idle: wake it a moment later, for all the events queued by then, rather
            # than once per event (a wake-up costs as much as queueing the event).
            self._waking = loop
            loop.call_later(BATCH_DELAY, self._wake)

    def _wake(self) -> None:
        self._waking = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _context(self) -> contextvars.Context:
        context = contextvars.Context()
        if self.runtime is not None:  # gateway.http_client() in a callback: the app's
            from ._context import current_runtime

            context.run(current_runtime.set, self.runtime)
        return context

    def _drop(self) -> None:
        self.dropped += 1
        if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8...: logged, not flooded
            logger.warning(
                "callback queue full (%d events): %d events dropped so far",
                self.max_queue,
                self.dropped,
            )

    async def _drain(self) -> None:
        """Every logging callback for each queued event, one after another; failures
        are logged. (Inline, not a coroutine per event: this runs once per request.)"""
        loop = asyncio.get_running_loop()
        queue = self._queue
        calls = self._calls
        while True:
            while queue:
                event = queue.popleft()
                if isinstance(event, RequestLog):  # its event built now, off the request path
                    try:
                        event = event.resolve()
                    except Exception:
                        logger.exception("building a callback event failed")
                        continue
                args = event.args
                for callback, name, is_async, method in calls[event.success]:
                    try:
                        if is_async:
                            await method(*args)
                        else:
                            await self._run_sync(method, event)
                    except Exception:
                        _report(callback, name)
            self._waiter = waiter = loop.create_future()
            await waiter

    async def _run_sync(self, method: Callable[..., Any], event: Event) -> None:
        if self._thread_limiter is None:
            self._thread_limiter = anyio.CapacityLimiter(1)
        await anyio.to_thread.run_sync(
            _call_sync, method, event, limiter=self._thread_limiter, abandon_on_cancel=True
        )

    async def aclose(self, timeout: float = 5.0) -> None:
        """Let queued events run for up to ``timeout`` seconds (at shutdown), then stop."""
        task = self._task
        if task is None or task.done():
            return
        with anyio.move_on_after(timeout):
            while self._queue or self._waiter is None:  # events left, or one running
                await anyio.sleep(0.01)
        if self._queue or self._waiter is None:
            logger.warning("%d callback events not run at shutdown", len(self._queue))
        task.cancel()
        self._task = self._waiter = self._waking = None

    def collector(self) -> Any:
        """A prometheus-client collector of this app's dropped events."""
        return _DropsCollector(self)

    # -- per request ----------------------------------------------------------------

    def request(self, scope: Any, route: str) -> RequestLog:
        if not (self.taps or self.pre_call):  # nothing reads more than its outcome
            return RequestLog(self, None, None, route, route, 0.0)
        record = scope.get(SCOPE_KEY)
        return RequestLog(
            self,
            scope.get("gateway.key"),
            None if record is None else record.id,
            route,
            CALL_TYPES.get(route, route),
            time.time(),
        )


class Outcome:
    """The request log of every request when no hook is set and no logger reads any of
    its arguments: the success or failure event is all a logger sees of a request, and
    the edge's outcome (its error, or a status >= 400) decides which. Shared, so the
    request path makes nothing for the callbacks; only endpoints whose requests call a
    model (or answer from the cache) unless they fail use it (``_Endpoint.calls_model``)."""

    __slots__ = ("_callbacks",)

    def __init__(self, callbacks: Callbacks) -> None:
        self._callbacks = callbacks

    def tap(self, call: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        return call

    def cached(self, body: bytes) -> None:
        pass

    def finish(self, status: int, error: BaseException | None) -> None:
        callbacks = self._callbacks
        event = callbacks.unread[error is None and status < 400]
        queue = callbacks._queue
        # emit()'s common case inline (a call less a request): a wake-up is due on
        # this loop, so it runs this event too.
        waking = callbacks._waking
        if (
            waking is not None
            and waking is asyncio._get_running_loop()
            and len(queue) < callbacks.max_queue
        ):
            queue.append(event)
        else:
            callbacks.emit(event)


class _DropsCollector:
    def __init__(self, callbacks: Callbacks) -> None:
        self.callbacks = callbacks

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(
            "gateway_callback_events_dropped",
            "Callback logging events dropped because the callback queue was full",
            value=self.callbacks.dropped,
        )


def _call_sync(method: Callable[..., Any], event: Event) -> None:
    method(*event.args)
