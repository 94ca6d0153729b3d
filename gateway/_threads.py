"""Sync <-> async bridges, and the thread budget of sync handlers."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import math
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ._context import current_runtime

__all__ = [
    "DEFAULT_THREAD_LIMIT",
    "DONE",
    "Pull",
    "ThreadPool",
    "current_pool",
    "iterate_async",
    "iterate_in_thread",
    "run_async",
    "run_in_thread",
    "set_thread_limit",
]

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


_DEFAULT_POOL = ThreadPool()


def current_pool() -> ThreadPool:
    """The running app's pool, else the process's (the library API's)."""
    runtime = current_runtime.get()
    return runtime.threads if runtime is not None else _DEFAULT_POOL


def set_thread_limit(total: int, per_model: int | None = None) -> None:
    """How many sync handler calls may run on worker threads at once in the library
    API (the gateway app has its own, from ``gateway_settings``), and how many of them
    one model may hold (default: half)."""
    _DEFAULT_POOL.resize(total, per_model)


async def run_in_thread(func: Callable[..., T], *args: Any, lane: Hashable = None) -> T:
    """``func(*args)`` on a worker thread of the current pool, within ``lane``'s budget."""
    return await current_pool().run(func, *args, lane=lane)


class _LoopThread:
    """One asyncio loop on a daemon thread, for the process: where sync callers run
    async code.

    A loop per call would close under whatever a handler keeps between calls (an
    ``httpx.AsyncClient`` made on first use is bound to the loop it first ran on);
    this one lives as long as the process. A daemon thread, so a hung handler never
    keeps the process from exiting.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ident: int | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    self._ident = threading.get_ident()
                    ready.set()
                    loop.run_forever()

                threading.Thread(target=run, name="gateway-loop", daemon=True).start()
                ready.wait()
                self._loop = loop
            return self._loop

    def forget(self) -> None:
        # In a forked child the thread is gone; the next call starts a new one.
        self._lock = threading.Lock()
        self._loop = self._ident = None

    def running_here(self) -> bool:
        return self._ident == threading.get_ident()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop or self._start()
        # The caller's context variables go along, except the one naming the caller's
        # async library (a trio caller's would make anyio use trio on this loop).
        context = contextvars.copy_context()
        context.run(_forget_async_library)
        future = context.run(asyncio.run_coroutine_threadsafe, coro, loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # the caller was interrupted (KeyboardInterrupt): stop the call
            raise


def _forget_async_library() -> None:
    try:
        import sniffio
    except ImportError:  # anyio without sniffio detects asyncio by itself
        return
    sniffio.current_async_library_cvar.set(None)


_LOOP = _LoopThread()
os.register_at_fork(after_in_child=_LOOP.forget)


def run_async(func: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None) -> T:
    """Run an async function to completion from sync code, on the process's loop thread.

    Works in a plain thread and inside a running event loop alike, so a handler's
    ``async def`` may call the sync API, as the seed's handlers do. With ``timeout`` it
    is cancelled after that many seconds and ``TimeoutError`` is raised.
    """
    if timeout is not None:
        return run_async(_bounded, timeout, func, *args)
    if _LOOP.running_here():
        # Called by code on the loop thread itself, which cannot wait for its own loop:
        # a loop of its own on a helper thread.
        return _run_on_a_new_loop(func, *args)
    return _LOOP.call(func(*args))  # type: ignore[arg-type]


def _run_on_a_new_loop(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    result: list[Any] = []

    def target() -> None:
        try:
            result.append((True, anyio.run(func, *args)))
        except BaseException as exc:
            result.append((False, exc))

    thread = threading.Thread(target=target, name="gateway-run-async", daemon=True)
    thread.start()
    thread.join()
    ok, value = result[0]
    if ok:
        return value
    raise value


async def _bounded(timeout: float, func: Callable[..., Awaitable[T]], *args: Any) -> T:
    with anyio.fail_after(timeout):
        return await func(*args)


_END: Any = object()


async def _open(factory: Callable[[], Any]) -> Any:
    return factory()


async def _next(iterator: AsyncIterator[T], timeout: float | None) -> T:
    try:
        if timeout is None:
            return await iterator.__anext__()
        with anyio.fail_after(timeout):
            return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


def iterate_async(
    factory: Callable[[], AsyncIterator[T] | Awaitable[Any]], timeout: float | None = None
) -> Iterator[T]:
    """Iterate an async iterator from sync code, one item at a time, closing it at the end.

    It runs on the process's loop thread, as ``run_async`` does. With ``timeout``, each
    wait for an item is cancelled after that many seconds and ``TimeoutError`` is raised.
    """
    if _LOOP.running_here():
        yield from _iterate_on_a_new_loop(factory, timeout)
        return
    iterator = _LOOP.call(_open(factory))
    try:
        while True:
            item = _LOOP.call(_next(iterator, timeout))
            if item is _END:
                return
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            _LOOP.call(aclose())


def _iterate_on_a_new_loop(
    factory: Callable[[], AsyncIterator[T] | Awaitable[Any]], timeout: float | None
) -> Iterator[T]:
    with anyio.from_thread.start_blocking_portal() as portal:
        iterator = portal.call(_open, factory)
        try:
            while True:
                item = portal.call(_next, iterator, timeout)
                if item is _END:
                    return
                yield item
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                portal.call(aclose)


_DONE: Any = object()
DONE = _DONE  # what Pull.next returns at the end of its iterator


def iterate_in_thread(iterator: Iterator[T], timeout: float, lane: Hashable = None) -> Iterator[T]:
    """Items of a blocking iterator, pulled on the current pool's worker threads one
    at a time (nothing is read ahead), waiting at most ``timeout`` seconds for each.

    On expiry ``TimeoutError`` is raised; the thread inside ``next()`` keeps its slot
    and closes the iterator once its pending item arrives (Python cannot interrupt it
    sooner).
    """
    pool = current_pool()
    pull = Pull(iterator)
    try:
        while True:
            item = pool.run_blocking(pull.next, lane=lane, timeout=timeout)
            if item is _DONE:
                return
            yield item
    finally:
        pull.close()


class Pull:
    """A sync iterator pulled from worker threads, closed exactly once.

    A disconnect or timeout abandons the thread inside ``next()``, where the iterator
    cannot be closed (``ValueError: generator already executing``): that thread closes
    it as soon as ``next()`` returns, so its ``finally`` runs then, not whenever the
    garbage collector gets to it. ``next()`` returns ``DONE`` at the end.
    """

    __slots__ = ("_busy", "_closing", "_iterator", "_lock")

    def __init__(self, iterator: Iterator[Any]) -> None:
        self._iterator = iterator
        self._lock = threading.Lock()
        self._busy = self._closing = False

    def next(self) -> Any:
        with self._lock:
            self._busy = True
        try:
            return next(self._iterator, _DONE)
        finally:
            with self._lock:
                self._busy = False
                closing = self._closing
            if closing:
                self._close()

    def close(self) -> None:
        with self._lock:
            if self._busy:
                self._closing = True
                return
        self._close()

    def _close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()
