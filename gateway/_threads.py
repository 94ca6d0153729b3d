"""Sync <-> async bridges: sync callers of async code (``run_async``, ``iterate_async``, on
the process's loop thread) and async callers of sync code (``run_in_thread``,
``iterate_in_thread``, on the current ``ThreadPool``). The pool itself, the thread budget
of sync handlers, is in ``gateway._thread_pool``."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.from_thread

from ._context import current_runtime
from ._thread_pool import DEFAULT_THREAD_LIMIT, ThreadPool

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
        with anyio.from_thread.start_blocking_portal() as portal:
            yield from _pull(portal.call, factory, timeout)
        return
    yield from _pull(lambda func, *args: _LOOP.call(func(*args)), factory, timeout)


def _pull(
    call: Callable[..., Any],
    factory: Callable[[], AsyncIterator[T] | Awaitable[Any]],
    timeout: float | None,
) -> Iterator[T]:
    # call(async_func, *args) runs it to completion on the loop that owns the iterator.
    iterator = call(_open, factory)
    try:
        while True:
            item = call(_next, iterator, timeout)
            if item is _END:
                return
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            call(aclose)


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
