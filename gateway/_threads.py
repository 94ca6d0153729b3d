"""Sync <-> async bridges, and the thread budget of sync handlers."""

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
