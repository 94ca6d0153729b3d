"""aiohttp's connector with a cap on idle keep-alive connections, and its protocol with
a read timeout that costs no timer per read (imported on first use): the pool under
``gateway.http_client()``, the handlers' client (the built-in provider has its own,
``gateway._h1``).

aiohttp caps connections in use (``limit``) but keeps every idle one until its
keep-alive expiry: after a burst of 1,000 streams it would hold 1,000 idle sockets.
``max_keepalive_connections`` caps them here. Not at the moment of release, as httpx's
``Limits`` do: under steady load the pool rotates (aiohttp reuses the longest idle
first), so more than the cap sit idle for a few milliseconds at a time, and closing
them there made a gateway at 256 connections reopen upstream connections all the
time (173 closed in 4 s against none for the bare forwarder, each a new connect later).
A connection beyond the cap is closed once it has been idle ``TRIM_AFTER`` seconds:
the cap holds at rest, within that time after a burst.

aiohttp's read timeout (``sock_read``: the wait for the first byte and every gap
between reads) cancels its timer and makes a new one on each read: under uvloop a timer
made and cancelled is ~4.6k instructions, paid per read: a JSON answer comes in one or
two, a stream in up to one per event (as many as arrive apart: more under load, when
the answer is slower). ``_ResponseHandler`` keeps one timer per wait instead: each read only
stamps the loop's clock, and the timer, when it fires, either times the read out or
re-arms for the time left since the last read (``gateway._aio.IdleTimeout``'s rule).

On Python 3.11 aiohttp writes every request that has a body from a task of its own
(``ClientRequest.write_bytes``); from 3.12 it starts that task eagerly, so a body that
fits the socket's buffer is written before ``send`` goes on. A task each upstream call
is a Task, a loop turn before the request leaves (behind every other ready callback: at
256 connections, a whole pass of the loop), and its frames alive meanwhile.
``eager_request_writes`` gives 3.11 the same through the loop's task factory: ~14k fewer
instructions a proxied request (``benchmarks.instructions --upstream oneshot``: 561,859
-> 547,886), and at 256 connections a third fewer cache misses (628 against 931 a request,
``benchmarks.concurrency``). Every other task is made as the loop would, for ~1k
instructions more each (the factory is a Python call), so it is set only on a loop an
aiohttp session is made on, and only by the ``gateway`` command, as it tunes the
collector: a loop it does not own keeps its factory.

This reaches into the connector's pool (``_conns``, ``_acquired``, ``_waiters``, the
protocol ``_factory``), the protocol's timer (``_read_timeout_handle``,
``_reschedule_timeout``, ``_on_read_timeout``) and the request's ``write_bytes``; the
tests of the keep-alive cap, of ``pool_stats``, of the read timeouts and of the eager
writes fail if a new aiohttp moves them.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import sys
from collections.abc import Callable, Coroutine, Generator
from time import monotonic
from types import CodeType, CoroutineType
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest

from ._h1pool import TRIM_AFTER  # one rule for both pools

__all__ = ["TRIM_AFTER", "CappedConnector", "eager_factory", "eager_request_writes"]


class _ResponseHandler(ResponseHandler):
    """aiohttp's protocol; its read timeout re-armed when it fires, not on each read."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._read_at = 0.0  # the loop's time at the last read (or the wait's start)

    def _reschedule_timeout(self) -> None:
        timeout = self._read_timeout
        if not timeout:
            self._drop_timeout()
            return
        self._read_at = self._loop.time()
        if self._read_timeout_handle is None:
            self._read_timeout_handle = self._loop.call_at(
                self._read_at + timeout, self._read_timer_fired
            )

    def _read_timer_fired(self) -> None:
        self._read_timeout_handle = None
        timeout = self._read_timeout
        if not timeout:
            return
        due = self._read_at + timeout
        if self._loop.time() >= due:
            self._on_read_timeout()
        else:  # a read came since: wait for what is left of the gap after it
            self._read_timeout_handle = self._loop.call_at(due, self._read_timer_fired)


class CappedConnector(aiohttp.TCPConnector):
    def __init__(self, *, max_idle: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._factory = functools.partial(_ResponseHandler, loop=self._loop)  # type: ignore[assignment]
        self._max_idle = max_idle
        self._trim_handle: asyncio.TimerHandle | None = None

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        super()._release(key, protocol, should_close=should_close)
        # One count per release (a few hosts at most) and at most one timer at a time.
        if self._trim_handle is None and sum(map(len, self._conns.values())) > self._max_idle:
            self._trim_handle = self._loop.call_later(TRIM_AFTER, self._trim)

    def _trim(self) -> None:
        self._trim_handle = None
        if self.closed:
            return
        conns = self._conns
        idle = sum(map(len, conns.values()))
        due = monotonic() - TRIM_AFTER
        while idle > self._max_idle:
            # The longest idle connection of any host: each queue's oldest is its first.
            key = min(conns, key=lambda k: conns[k][0][1])
            queue = conns[key]
            proto, since = queue[0]
            if since > due:
                # Still rotating: look again when this one has been idle long enough.
                self._trim_handle = self._loop.call_later(since - due, self._trim)
                return
            queue.popleft()
            proto.close()
            idle -= 1
            if not queue:
                del conns[key]

    def stats(self) -> dict[str, int]:
        idle = sum(1 for q in self._conns.values() for proto, _ in q if proto.is_connected())
        active = len(self._acquired)
        waiting = sum(len(w) for w in self._waiters.values())
        return {
            "connections": idle + active,
            "idle": idle,
            "active": active,
            "requests": active + waiting,
            "waiting": waiting,
        }


TaskFactory = Callable[..., "asyncio.Future[Any]"]


def eager_request_writes(loop: asyncio.AbstractEventLoop) -> bool:
    """Start aiohttp's request writes eagerly on ``loop`` (Python 3.11; later versions
    do it themselves). False, and nothing changed, where the loop has a task factory."""
    if sys.version_info >= (3, 12) or loop.get_task_factory() is not None:
        return False
    loop.set_task_factory(eager_factory(ClientRequest.write_bytes.__code__))
    return True


def eager_factory(code: CodeType) -> TaskFactory:
    """A task factory that runs a coroutine of ``code`` at once, up to its first
    suspension, as Python 3.12's eager tasks do: finished there, it gets a done future
    and no task; else a task goes on from where it stopped. Other coroutines get the
    loop's own Task."""
    Task = asyncio.Task

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context | None = None,
    ) -> asyncio.Future[Any]:
        if coro.__class__ is not CoroutineType or coro.cr_code is not code:
            return Task(coro, loop=loop, context=context)
        if context is None:
            context = contextvars.copy_context()
        try:
            yielded = context.run(coro.send, None)
        except StopIteration as stop:
            done = loop.create_future()
            done.set_result(stop.value)
            return done
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            # As an eager task that failed: aiohttp sees it done and goes on; the
            # failure reached its protocol (the response read fails), not the future.
            done = loop.create_future()
            if isinstance(exc, asyncio.CancelledError):
                done.cancel()
            else:
                done.set_exception(exc)
                done.exception()  # retrieved: no "never retrieved" log
            return done
        task = Task(_resumed(coro, yielded), loop=loop, context=context)
        # Cancelled before its first step, the task never reaches ``coro``: closed here,
        # its cleanup (aiohttp closes the connection) runs now, not when it is collected.
        task.add_done_callback(lambda _: coro.close())
        return task

    return factory


class _Yield:
    """Awaiting it yields ``value`` to the task, as the coroutine that yielded it did."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.value)


async def _resumed(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Run ``coro``, suspended where it yielded ``yielded``, to its end: each value it
    yields goes to the task, and what the task sends or throws back goes to it."""
    while True:
        try:
            sent = await _Yield(yielded)
        except BaseException as exc:  # a cancellation: the coroutine sees it where it waits
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            yielded = coro.send(sent)
        except StopIteration as stop:
            return stop.value
