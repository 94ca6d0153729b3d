"""``ThreadPool``: the worker threads of sync handlers, with a true cap and a budget per
model. One per app (``Runtime.threads``); the library API's is in ``gateway._threads``,
with the bridges that use it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

__all__ = ["DEFAULT_THREAD_LIMIT", "ThreadPool"]

T = TypeVar("T")

DEFAULT_THREAD_LIMIT = 64
_IDLE_SECONDS = 10.0  # an idle worker thread ends after this long


class _Call:
    """One function run on a worker thread, and what became of its caller."""

    __slots__ = ("abandoned", "args", "deliver", "done", "func", "lane", "started")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], lane: Hashable) -> None:
        self.func = func
        self.args = args
        self.lane = lane
        self.started = False
        self.done = False
        self.abandoned = False  # the caller gave up while it ran: "stuck"
        self.deliver: Callable[[bool, Any], object] | None = None


class _Waiter:
    __slots__ = ("granted", "lane", "wake")

    def __init__(self, lane: Hashable, wake: Callable[[], object]) -> None:
        self.lane = lane
        self.wake = wake
        self.granted = False


_POOLS: weakref.WeakSet[ThreadPool] = weakref.WeakSet()


def _forget_threads() -> None:
    for pool in list(_POOLS):
        pool._reset()


os.register_at_fork(after_in_child=_forget_threads)


class ThreadPool:
    """Worker threads for sync handlers: a true cap, and a budget per model.

    Python cannot stop a thread, so a call whose caller gives up (a timeout, a
    disconnect) keeps its slot until its thread really returns, and counts as
    ``stuck`` meanwhile: hung handlers cannot grow the threads past ``total``. Each
    lane (one model of one provider) holds at most ``per_lane`` slots, so one hung
    model leaves room for the others; a call past either limit waits for a slot
    (bounded by its request's deadline). Workers are daemon threads, so a hung one
    never keeps the process alive after SIGTERM. Dedicated threads, never anyio's
    default pool that Starlette and others share.
    """

    def __init__(self, total: int = DEFAULT_THREAD_LIMIT, per_lane: int | None = None) -> None:
        self.total = total
        self.per_lane = per_lane or max(1, total // 2)
        self._reset()
        _POOLS.add(self)

    def _reset(self) -> None:
        # Also in a forked child, where none of the parent's threads exist.
        self._lock = threading.Lock()
        self.busy = 0
        self.stuck = 0
        self._lanes: dict[Hashable, int] = {}
        self._waiters: deque[_Waiter] = deque()
        self._idle: list[queue.SimpleQueue[_Call | None]] = []
        self._limiter: anyio.CapacityLimiter | None = None  # for non-asyncio backends

    def resize(self, total: int, per_lane: int | None = None) -> None:
        with self._lock:
            self.total = total
            self.per_lane = per_lane or max(1, total // 2)
            woken = self._grant_waiting()
        for waiter in woken:
            waiter.wake()

    async def run(self, func: Callable[..., T], *args: Any, lane: Hashable = None) -> T:
        """``func(*args)`` on a worker thread; a cancelled caller leaves it running."""
        with self._lock:
            free = self._has_room(lane)
            if free:
                self._take(lane)
        if not free:
            await self._wait_for_slot(lane)
        call = _Call(func, args, lane)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return await self._run_anyio(call)
        # asyncio: our own daemon workers and a future, set from the worker thread.
        future: asyncio.Future[T] = loop.create_future()
        call.deliver = lambda ok, value: loop.call_soon_threadsafe(_settle, future, ok, value)
        self._dispatch(call)
        try:
            return await future
        except asyncio.CancelledError:
            self._abandon(call)
            raise

    def run_blocking(
        self, func: Callable[..., T], *args: Any, lane: Hashable = None, timeout: float
    ) -> T:
        """``run`` for sync callers: ``TimeoutError`` after ``timeout`` seconds, the
        thread left running in its slot."""
        deadline = time.monotonic() + timeout
        granted = threading.Event()
        waiter = _Waiter(lane, granted.set)
        with self._lock:
            free = self._has_room(lane)
            if free:
                self._take(lane)
            else:
                self._waiters.append(waiter)
        if not free and not granted.wait(timeout):
            with self._lock:
                if not waiter.granted:
                    self._waiters.remove(waiter)
                    raise TimeoutError(f"no worker thread free within {timeout:g} s")
        call = _Call(func, args, lane)
        results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        call.deliver = lambda ok, value: results.put((ok, value))
        self._dispatch(call)
        try:
            ok, value = results.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            self._abandon(call)
            raise TimeoutError(f"no answer within {timeout:g} s") from None
        if ok:
            return value
        raise value

    async def _run_anyio(self, call: _Call) -> Any:
        if self._limiter is None:
            # Our slots are the real cap; anyio's limiter only keeps its default one
            # (shared with Starlette) out of this.
            self._limiter = anyio.CapacityLimiter(math.inf)
        try:
            return await anyio.to_thread.run_sync(
                self._execute, call, abandon_on_cancel=True, limiter=self._limiter
            )
        except anyio.get_cancelled_exc_class():
            self._abandon(call)
            raise

    def _execute(self, call: _Call) -> Any:
        if not self._begin(call):
            return None
        try:
            return call.func(*call.args)
        finally:
            self._finished(call)

    def _begin(self, call: _Call) -> bool:
        with self._lock:
            if call.done:
                return False  # its caller gave up before it started: never run it
            call.started = True
            return True

    def _abandon(self, call: _Call) -> None:
        woken: list[_Waiter] = []
        with self._lock:
            if call.done:
                return
            if call.started:
                call.abandoned = True
                self.stuck += 1
            else:  # not started yet (trio cancels before starting the thread): free now
                call.done = True
                woken = self._give_back(call.lane)
        for waiter in woken:
            waiter.wake()

    # slots

    def _has_room(self, lane: Hashable) -> bool:
        return self.busy < self.total and self._lanes.get(lane, 0) < self.per_lane

    def _take(self, lane: Hashable) -> None:
        self.busy += 1
        self._lanes[lane] = self._lanes.get(lane, 0) + 1

    def _give_back(self, lane: Hashable) -> list[_Waiter]:
        self.busy -= 1
        left = self._lanes[lane] - 1
        if left:
            self._lanes[lane] = left
        else:
            del self._lanes[lane]
        return self._grant_waiting() if self._waiters else []

    def _grant_waiting(self) -> list[_Waiter]:
        woken = []
        for waiter in list(self._waiters):
            if self.busy >= self.total:
                break
            if self._lanes.get(waiter.lane, 0) < self.per_lane:
                self._waiters.remove(waiter)
                self._take(waiter.lane)
                waiter.granted = True
                woken.append(waiter)
        return woken

    async def _wait_for_slot(self, lane: Hashable) -> None:
        waiting: Awaitable[Any]
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            event = anyio.Event()
            token = anyio.lowlevel.current_token()
            wake: Callable[[], object] = functools.partial(
                _set_event, event, token, threading.get_ident()
            )
            waiting = event.wait()
        else:
            future: asyncio.Future[None] = loop.create_future()
            wake = lambda: loop.call_soon_threadsafe(_settle, future, True, None)  # noqa: E731
            waiting = future
        waiter = _Waiter(lane, wake)
        with self._lock:
            self._waiters.append(waiter)
        try:
            await waiting
        except BaseException:
            with self._lock:
                if not waiter.granted:
                    self._waiters.remove(waiter)
                    woken: list[_Waiter] = []
                else:
                    woken = self._give_back(lane)
            for other in woken:
                other.wake()
            raise

    # workers (asyncio)

    def _dispatch(self, call: _Call) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is not None:
            inbox.put(call)
            return
        inbox = queue.SimpleQueue()
        thread = threading.Thread(
            target=self._work, args=(call, inbox), name="gateway-sync-handler", daemon=True
        )
        thread.start()

    def _work(self, call: _Call | None, inbox: queue.SimpleQueue[_Call | None]) -> None:
        while call is not None:
            if self._begin(call):
                try:
                    ok, value = True, call.func(*call.args)
                except BaseException as exc:
                    ok, value = False, exc
                self._finished(call)
                assert call.deliver is not None
                try:
                    call.deliver(ok, value)
                except RuntimeError:
                    pass  # the caller's loop is closed: nobody is waiting
                del value
            del call
            with self._lock:
                self._idle.append(inbox)
            try:
                call = inbox.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                call = inbox.get()  # handed work just as the wait ended

    def _finished(self, call: _Call) -> None:
        with self._lock:
            call.done = True
            if call.abandoned:
                self.stuck -= 1
            woken = self._give_back(call.lane)
        for waiter in woken:
            waiter.wake()


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _set_event(event: anyio.Event, token: Any, loop_thread: int) -> None:
    if threading.get_ident() == loop_thread:  # a slot given back by a cancelled waiter
        event.set()
        return
    with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
        anyio.from_thread.run_sync(event.set, token=token)
