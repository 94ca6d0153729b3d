"""Deadlines and disconnect watching on the request path.

The rule: an asyncio fast path where a measurement showed one pays, anyio everywhere
else. Under uvicorn the loop is always asyncio, so each helper here first asks for the
running asyncio loop; a host app on another anyio backend (trio) gets the portable
twin, and the test suite runs both. The fast paths use bare loop handles and tasks,
made lazily on the first loop turn, because most calls answer without ever yielding,
or shared (measured under uvloop, per request: ``anyio.fail_after`` 8 us,
``asyncio.timeout`` 3 us, a lazy timer 1 us, a deadline in the loop's shared heap less;
a task group with a watcher 40 us, a lazy bare watcher task 3 us). They cancel with
``Task.cancel()`` and tell their own cancellation from anyone else's by
``Task.cancelling()``; that bookkeeping lives in ``_cancelled_by_us`` only.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec

if TYPE_CHECKING:
    from starlette.types import Receive

__all__ = [
    "SCOPE_DISCONNECT",
    "ClientGone",
    "Deadline",
    "Disconnect",
    "IdleTimeout",
    "deadline",
    "running_loop",
    "served_by",
    "until_disconnect",
    "within",
]

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before it got its whole answer."""


_here = threading.local()


def _forget_loop() -> None:
    global _here
    _here = threading.local()


# A forked child inherits the parent's loop marked as running; it is not its loop.
os.register_at_fork(after_in_child=_forget_loop)


def running_loop() -> asyncio.AbstractEventLoop:
    """``asyncio.get_running_loop()``, without its system call on each request.

    On Python 3.11 every ``get_running_loop()`` (and ``current_task()`` without a loop)
    calls ``getpid()``: 1.6-3 us on a VM, several times a request. The loop this thread
    ran last is kept per thread: while it is running it is this thread's running loop,
    as a thread runs one loop at a time and a running loop never changes threads.
    Raises ``RuntimeError`` when no asyncio loop runs, like ``get_running_loop``.
    """
    loop: asyncio.AbstractEventLoop | None = getattr(_here, "loop", None)
    if loop is not None and loop.is_running():
        return loop
    loop = _here.loop = asyncio.get_running_loop()
    return loop


# ``asyncio.current_task(loop)``: Python code on 3.11 (a frame a call, on every request),
# a lookup in the dict it reads; C from 3.12 on.
_task_of: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]
if sys.version_info < (3, 12):
    _task_of = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]
else:
    _task_of = asyncio.current_task


def _current_task() -> asyncio.Task[Any] | None:
    """The running asyncio task, or None on another backend."""
    try:
        return _task_of(running_loop())
    except RuntimeError:  # no asyncio loop running: trio, or another anyio backend
        return None


def _cancelled_by_us(task: asyncio.Task[Any], baseline: int) -> bool:
    """After our own ``task.cancel()``: whether it was the only cancel request since
    ``baseline`` (``task.cancelling()`` when we started). Takes our request back."""
    return task.uncancel() <= baseline


async def within(timeout: float, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``, cancelling it with ``TimeoutError`` after ``timeout`` seconds.

    On asyncio the deadline joins its loop's ``_Deadlines``: no timer of its own.
    """
    guard = deadline(timeout)
    if guard is None:
        with anyio.fail_after(timeout):
            return await awaitable
    try:
        return await awaitable
    except asyncio.CancelledError:
        if guard.timed_out():
            raise TimeoutError from None
        raise
    finally:
        guard.end()


def deadline(timeout: float) -> _Guard | None:
    """``within``'s deadline for a coroutine that awaits in its own frame: None where no
    asyncio task runs (use ``within`` there). Then ``guard.end()`` once the awaits are
    over, and on ``CancelledError`` ``guard.timed_out()`` tells this deadline's
    cancellation from anyone else's.

    For the request path's waits: every coroutine between a task and what it waits for
    is resumed, frame by frame, on each wake-up, and at hundreds of requests in flight
    each such frame is a cache miss or two (callgrind, 2 MB cache, 256 proxied requests
    in flight). ``within`` is such a frame; this is two calls, made and gone.
    """
    try:
        loop = running_loop()
    except RuntimeError:  # no asyncio loop running: trio, or another anyio backend
        return None
    task = _task_of(loop)
    if task is None:
        return None
    deadlines: _Deadlines | None = getattr(_here, "deadlines", None)
    if deadlines is None or deadlines.loop is not loop:
        deadlines = _here.deadlines = _Deadlines(loop)
    # _Deadlines.add inline: a Python frame less on every call.
    when = loop.time() + timeout
    guard = _Guard(task, task, task.cancelling(), deadlines)
    heapq.heappush(deadlines._heap, (when, deadlines._next(), guard))
    if when < deadlines._armed:
        deadlines._arm(when)
    return guard


class _Guard(msgspec.Struct):
    """One ``deadline()``: its task is cancelled when it comes, unless it ended.
    A Struct: made per call, in C (a class with an ``__init__`` was a Python frame)."""

    task: asyncio.Task[Any] | None  # None once ended or expired
    owner: asyncio.Task[Any]
    cancelling: int
    deadlines: _Deadlines
    expired: bool = False

    def timed_out(self) -> bool:
        """After a ``CancelledError``: whether this deadline cancelled the task (and
        nobody else did too); if so its cancel request is taken back."""
        return self.expired and _cancelled_by_us(self.owner, self.cancelling)

    def end(self) -> None:
        """The awaits are over: the deadline no longer applies (left in the heap until
        it reaches the top or the ended ones outnumber the rest)."""
        if self.task is not None:
            self.task = None
            deadlines = self.deadlines
            deadlines._ended += 1
            if deadlines._ended > 64:
                deadlines.compact()


class _Deadlines:
    """The ``within()`` deadlines of one loop: a heap, and one timer at its earliest.

    Every request runs under a deadline, and a timer made and cancelled per call costs
    ~6k instructions under uvloop (a lazily armed one, made on the loop's next turn, as
    much for every call that waits for I/O). Here a call pushes its deadline and marks
    it ended: the timer is made again only when a deadline earlier than the armed one
    comes, or when it fires. Ended entries stay in the heap until they reach its top
    or outnumber the live ones, then it is rebuilt: at most twice the calls in flight.
    """

    __slots__ = ("_armed", "_ended", "_heap", "_next", "_timer", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, _Guard]] = []
        self._next = itertools.count().__next__  # ties: the earlier call first
        self._timer: asyncio.TimerHandle | None = None
        self._armed = math.inf
        self._ended = 0

    # ``within`` pushes its (when, tie, guard) itself and counts the ended ones.

    def compact(self) -> None:
        """Drop the ended entries once they outnumber the live ones."""
        if self._ended * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].task is not None]
            heapq.heapify(self._heap)
            self._ended = 0

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed = math.inf
        heap = self._heap
        now = self.loop.time()
        while heap:
            when, _, guard = heap[0]
            task = guard.task
            if task is None:
                heapq.heappop(heap)
                self._ended -= 1
            elif when > now:  # (a timer may fire a little early)
                self._arm(when)
                return
            else:
                heapq.heappop(heap)
                guard.task = None
                guard.expired = True
                task.cancel()


class IdleTimeout:
    """Bounds each wait for a stream's next item with one timer for the whole stream.

    A deadline around every item would make and cancel a timer per chunk; here each
    chunk only stamps ``loop.time()``, and the timer re-arms itself when it fires.
    Usage: ``await idle.wait(iterator.__anext__())`` raises ``TimeoutError`` when one
    wait lasts ``timeout`` seconds. Other backends get a ``fail_after`` per wait.
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
        self._cancelling = 0

    async def wait(self, awaitable: Awaitable[T]) -> T:
        task = self._task
        if task is None or task.done():
            # Looked up once, not per chunk; again only if a stream moves on from a
            # task that ended (a hedged stream's first chunk comes from its own task).
            task = self._task = _current_task()
            if task is None:
                with anyio.fail_after(self.timeout):
                    return await awaitable
            self._loop = task.get_loop()
        loop = self._loop
        assert loop is not None
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
                if _cancelled_by_us(task, self._cancelling):
                    raise TimeoutError from None
            raise
        finally:
            self._waiting = False

    def _fire(self) -> None:
        self._timer = None
        if not self._waiting:
            return  # re-armed by the next wait
        assert self._loop is not None and self._task is not None
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


class Deadline:
    """One deadline for every wait of a stream, whenever the waits come.

    ``await deadline.wait(iterator.__anext__())`` raises ``TimeoutError`` if the
    deadline passes during the wait, or at once if it has passed since the last one
    (the stream was writing). One timer for the whole stream, armed at the first
    wait; nothing per chunk but a clock read. Other backends: ``fail_after`` per wait.
    """

    __slots__ = ("_cancelling", "_end", "_expired", "_task", "_timer", "_waiting", "seconds")

    def __init__(self, seconds: float, start: float | None = None) -> None:
        """``seconds`` from ``start`` (``time.monotonic()``; default: now)."""
        self.seconds = seconds
        self._end = (time.monotonic() if start is None else start) + seconds
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiting = False
        self._expired = False
        self._cancelling = 0

    async def wait(self, awaitable: Awaitable[T]) -> T:
        left = self._end - time.monotonic()
        if left <= 0:
            close = getattr(awaitable, "close", None)
            if close is not None:
                close()  # never awaited: say so to the iterator, not to the warnings
            raise TimeoutError
        task = self._task
        if task is None or task.done():
            task = self._task = _current_task()
            if task is None:
                with anyio.fail_after(left):
                    return await awaitable
        self._cancelling = task.cancelling()
        self._waiting = True
        if self._timer is None:
            self._timer = task.get_loop().call_later(left, self._fire)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if _cancelled_by_us(task, self._cancelling):
                    raise TimeoutError from None
            raise
        finally:
            self._waiting = False

    def _fire(self) -> None:
        self._timer = None
        if self._waiting:  # else the next wait finds the time up
            assert self._task is not None
            self._expired = True
            self._task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# The scope key under which a server that sees its connections close offers a
# ``Disconnect`` (the gateway's own uvicorn protocols, ``gateway._server``).
SCOPE_DISCONNECT = "gateway.disconnect"


class Disconnect:
    """A request's disconnect, told by the server that sees its connection close.

    With one in the scope, ``until_disconnect`` needs no watcher task reading
    ``receive``: the server calls ``fire()`` when the connection is lost and the task
    waiting in ``until_disconnect`` is cancelled at once. ``loop`` is the server's.
    """

    __slots__ = ("_baseline", "_cancelled", "_task", "_watched", "gone", "loop")

    # What a server may also do for the app, told by these class attributes:
    # ``notes_response``: when the response starts, it notes the time and status in
    # the ``RequestRecord`` put in its ``record`` and adds the record's ``x-request-id``
    # to the head, so the app needs no wrapper around ``send``; ``own_task``: the
    # request runs in a task made for it alone, whose context variables die with it.
    notes_response = False
    own_task = False

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.gone = False
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False

    # Shortcuts a server may offer for its own ``receive`` and ``send`` (called only
    # where the app was given them unwrapped: ``receive.__self__`` / ``send.__self__`` is
    # this object).

    def take_body(self) -> bytes | None:
        """The whole request body if it is already here and none of it was received;
        None: call ``receive()``."""
        return None

    def respond(self, status: int, headers: Any, body: bytes) -> bool:
        """Send a whole response (a start and a last body message) at once; False: use
        ``send()``."""
        return False

    def write(self, body: bytes, more: bool) -> bool:
        """Send a body message of a started response; False: use ``send()``."""
        return False

    def fire(self) -> None:
        """The client went away (called on the loop's thread, once or more)."""
        self.gone = True
        task = self._task
        if task is not None:
            self._task = None
            self._cancelled = True
            task.cancel()

    # ``until_disconnect`` for a coroutine that awaits in its own frame (a frame less for
    # its task to resume on each wake-up): ``watch()``, await, ``unwatch()`` in a
    # ``finally``; on ``CancelledError``, ``went()`` says whether the client's leaving
    # cancelled it (then raise ``ClientGone``).

    def watch(self) -> None:
        """Until ``unwatch``, the running task is cancelled if the client goes;
        ``ClientGone`` at once if it has gone."""
        if self.gone:
            raise ClientGone
        task = _task_of(self.loop)  # the loop given: no getpid()
        assert task is not None
        self._watched: asyncio.Task[Any] = task
        self._baseline = task.cancelling()
        self._task = task

    def unwatch(self) -> None:
        self._task = None

    def went(self) -> bool:
        """After a ``CancelledError`` while watched: whether the client's leaving
        cancelled the task, and nobody else (its cancel request is then taken back)."""
        if not self._cancelled:
            return False
        self._cancelled = False
        return _cancelled_by_us(self._watched, self._baseline)


def served_by(channel: Any) -> Disconnect | None:
    """The request's ``Disconnect`` if ``channel`` (the app's ``receive`` or ``send``) is
    its server's own, unwrapped: then its shortcuts (``take_body``, ``respond``,
    ``write``) stand for the channel. None for a wrapped channel or another server."""
    server = getattr(channel, "__self__", None)
    return server if isinstance(server, Disconnect) else None


async def until_disconnect(
    receive: Receive, body: Callable[[], Awaitable[T]], scope: Any = None
) -> T:
    """``await body()``, cancelling it if the client disconnects (then ``ClientGone``).

    The one disconnect watch of every endpoint, JSON and streams alike: the handler
    sees the cancellation at its current await and its ``finally`` runs. Reads
    ``receive`` only once the body has started, so call it after the request body
    was read. A server that offers a ``Disconnect`` in ``scope`` cancels the call
    itself; elsewhere a watcher task reads ``receive``.
    """
    signal: Disconnect | None = None if scope is None else scope.get(SCOPE_DISCONNECT)
    if signal is not None:
        signal.watch()
        try:
            return await body()
        except asyncio.CancelledError:
            if signal.went():
                raise ClientGone from None
            raise
        finally:
            signal.unwatch()
    task = _current_task()
    if task is None:
        return await _until_disconnect_anyio(receive, body)
    watch = _DisconnectWatch(task, receive)
    try:
        return await body()
    except asyncio.CancelledError:
        if watch.gone and _cancelled_by_us(task, watch.cancelling):
            raise ClientGone from None
        raise
    finally:
        watch.stop()


class _DisconnectWatch:
    """Cancels ``task`` when the client disconnects.

    A bare asyncio task started on the first loop turn, not a task group: a handler
    that answers at once needs no watcher at all.
    """

    __slots__ = ("_loop", "_receive", "_starting", "_task", "_watcher", "cancelling", "gone")

    def __init__(self, task: asyncio.Task[Any], receive: Receive) -> None:
        self._task = task
        self._receive = receive
        self._loop = task.get_loop()
        self._watcher: asyncio.Task[None] | None = None
        self.gone = False
        self.cancelling = task.cancelling()
        self._starting: asyncio.Handle | None = self._loop.call_soon(self._start)

    def _start(self) -> None:
        self._starting = None
        self._watcher = self._loop.create_task(self._watch())

    async def _watch(self) -> None:
        receive = self._receive
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self._task.cancel()

    def stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


async def _until_disconnect_anyio(receive: Receive, body: Callable[[], Awaitable[T]]) -> T:
    result: list[T] = []
    error: Exception | None = None
    gone = False

    async def watch(scope: anyio.CancelScope) -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, tg.cancel_scope)
        try:
            result.append(await body())
        except Exception as exc:
            # Raised outside the task group, so the caller sees it bare, not in a group.
            error = exc
        tg.cancel_scope.cancel()
    if gone and not result:
        raise ClientGone
    if error is not None:
        raise error
    return result[0]
