"""Bridges between sync callers and async code, and the sync-handler thread limiter."""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

T = TypeVar("T")

DEFAULT_THREAD_LIMIT = 64

_thread_limit = DEFAULT_THREAD_LIMIT
_limiters: weakref.WeakKeyDictionary[Any, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


def set_thread_limit(total: int) -> None:
    """How many sync handler calls may run on worker threads at once (per event loop)."""
    global _thread_limit
    _thread_limit = total
    for limiter in list(_limiters.values()):
        limiter.total_tokens = total


def thread_limiter() -> anyio.CapacityLimiter:
    """The limiter for sync handlers on this event loop.

    Dedicated, so sync handlers never starve anyio's default pool that Starlette and
    others share, and per loop, because a limiter belongs to the loop that made it.
    """
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(_thread_limit)
    return limiter


async def run_in_thread(func: Callable[..., T], *args: Any) -> T:
    # abandon_on_cancel: a timeout or disconnect frees the caller at once; the
    # thread finishes on its own (Python cannot kill it).
    return await anyio.to_thread.run_sync(
        func, *args, abandon_on_cancel=True, limiter=thread_limiter()
    )


async def within(timeout: float, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``, cancelling it with ``TimeoutError`` after ``timeout`` seconds.

    On asyncio (always, under uvicorn) the timer is armed only once the awaitable
    yields to the event loop: every request runs under a deadline and most fast
    handlers never yield, so the timer is usually never made. 1 us a call, where
    ``asyncio.timeout`` costs 3 us and ``anyio.fail_after`` 8 us (under uvloop).
    Other anyio backends get ``anyio.fail_after``.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        with anyio.fail_after(timeout):
            return await awaitable
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("within() must run inside a task")
    guard = _LazyTimer(loop, task, loop.time() + timeout)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if guard.expired and task.uncancel() <= guard.cancelling:
            raise TimeoutError from None
        raise
    finally:
        guard.stop()


class _LazyTimer:
    """Cancels ``task`` at ``when``; the timer itself is made on the next loop turn."""

    __slots__ = ("_arming", "_loop", "_task", "_timer", "_when", "cancelling", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], when: float):
        self._loop = loop
        self._task = task
        self._when = when
        self.cancelling = task.cancelling()
        self.expired = False
        self._timer: asyncio.TimerHandle | None = None
        self._arming: asyncio.Handle | None = loop.call_soon(self._arm)

    def _arm(self) -> None:
        self._arming = None
        self._timer = self._loop.call_at(self._when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.expired = True
        self._task.cancel()

    def stop(self) -> None:
        if self._arming is not None:
            self._arming.cancel()
        if self._timer is not None:
            self._timer.cancel()


class IdleTimeout:
    """Bounds each wait for a stream's next item with one timer for the whole stream.

    A deadline around every item would make and cancel a timer per
    chunk; here each chunk only stamps ``loop.time()``, and the timer re-arms itself
    when it fires. Usage: ``await idle.wait(iterator.__anext__())`` raises
    ``TimeoutError`` when one wait lasts ``timeout`` seconds. Other anyio backends fall
    back to a ``fail_after`` per wait.
    """

    __slots__ = (
        "_cancelling",
        "_expired",
        "_loop",
        "_since",
        "_task",
        "_timer",
        "_waiting",
        "timeout",
    )

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiting = False
        self._expired = False
        self._since = 0.0

    async def wait(self, awaitable: Awaitable[T]) -> T:
        loop = self._loop
        if loop is None:
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:
                with anyio.fail_after(self.timeout):
                    return await awaitable
        task = self._task
        if task is None or task.done():
            # Looked up once, not per chunk; again only if a stream moves on from a
            # task that ended (a hedged stream's first chunk comes from its own task).
            task = self._task = asyncio.current_task()
            assert task is not None
        self._cancelling = task.cancelling()
        self._since = loop.time()
        self._waiting = True
        if self._timer is None:
            self._timer = loop.call_at(self._since + self.timeout, self._fire)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if task.uncancel() <= self._cancelling:
                    raise TimeoutError from None
            raise
        finally:
            self._waiting = False

    def _fire(self) -> None:
        self._timer = None
        if not self._waiting:
            return  # re-armed by the next wait
        assert self._loop is not None
        due = self._since + self.timeout
        if self._loop.time() >= due:
            self._expired = True
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(due, self._fire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_async(func: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None) -> T:
    """Run an async function to completion from sync code.

    Works in a plain thread and inside a running event loop alike (where it runs a
    loop of its own on a helper thread), so a handler's ``async def`` may call the
    sync API, as the seed's handlers do. With ``timeout`` it is cancelled after that
    many seconds and ``TimeoutError`` is raised.
    """
    if timeout is not None:
        return run_async(_bounded, timeout, func, *args)
    if not _in_event_loop():
        return anyio.run(func, *args)
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


def iterate_async(
    factory: Callable[[], AsyncIterator[T] | Awaitable[Any]], timeout: float | None = None
) -> Iterator[T]:
    """Iterate an async iterator from sync code, one item at a time, closing it at the end.

    With ``timeout``, each wait for an item is cancelled after that many seconds and
    ``TimeoutError`` is raised.
    """
    with anyio.from_thread.start_blocking_portal() as portal:

        async def open_() -> Any:
            return factory()

        iterator = portal.call(open_)
        try:
            while True:
                try:
                    if timeout is None:
                        yield portal.call(iterator.__anext__)
                    else:
                        yield portal.call(_bounded, timeout, iterator.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                portal.call(aclose)


_DONE: Any = object()


def iterate_in_thread(iterator: Iterator[T], timeout: float) -> Iterator[T]:
    """Items of a blocking iterator, waiting at most ``timeout`` seconds for each.

    The iterator runs on a helper thread, one item per request, so nothing is read
    ahead. On expiry ``TimeoutError`` is raised and the thread is abandoned: it closes
    the iterator once its pending item arrives (Python cannot interrupt it sooner).
    """
    requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
    results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

    def produce() -> None:
        try:
            while requests.get():
                try:
                    item = next(iterator, _DONE)
                except BaseException as exc:
                    results.put((False, exc))
                    return
                results.put((True, item))
                if item is _DONE:
                    return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    threading.Thread(target=produce, name="gateway-stream", daemon=True).start()
    try:
        while True:
            requests.put(True)
            try:
                ok, item = results.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no stream item within {timeout:g} s") from None
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        requests.put(False)
