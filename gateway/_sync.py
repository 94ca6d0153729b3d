"""Bridges between sync callers and async code, and the sync-handler thread limiter."""

from __future__ import annotations

import asyncio
import contextlib
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


def deadline(timeout: float) -> contextlib.AbstractAsyncContextManager[Any] | Any:
    """A cancel scope that raises ``TimeoutError`` after ``timeout`` seconds.

    On asyncio (always, under uvicorn) this is ``asyncio.timeout``: it costs 3 us where
    ``anyio.fail_after`` costs 8 us, on a path every request takes. Other anyio
    backends get ``anyio.fail_after``. Use as ``async with deadline(t):``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _AnyioDeadline(timeout)
    return asyncio.timeout(timeout)


class _AnyioDeadline:
    __slots__ = ("_scope",)

    def __init__(self, timeout: float) -> None:
        self._scope = anyio.fail_after(timeout)

    async def __aenter__(self) -> Any:
        return self._scope.__enter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return self._scope.__exit__(*exc_info)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_async(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run an async function to completion from sync code.

    Works in a plain thread and inside a running event loop alike (where it runs a
    loop of its own on a helper thread), so a handler's ``async def`` may call the
    sync API, as the seed's handlers do.
    """
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


def iterate_async(factory: Callable[[], AsyncIterator[T] | Awaitable[Any]]) -> Iterator[T]:
    """Iterate an async iterator from sync code, one item at a time, closing it at the end."""
    with anyio.from_thread.start_blocking_portal() as portal:

        async def open_() -> Any:
            return factory()

        iterator = portal.call(open_)
        try:
            while True:
                try:
                    yield portal.call(iterator.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                portal.call(aclose)
