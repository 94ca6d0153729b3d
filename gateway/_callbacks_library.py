"""Callbacks for library calls: ``gateway.callbacks = [...]``, read at call time as
LiteLLM reads ``litellm.callbacks``.

``completion``, ``acompletion``, ``embedding`` and friends (and ``gateway.Router``'s)
hand their events to one daemon thread, which runs sync methods itself and ``async_``
ones on an event loop of its own: a sync call has no loop that outlives it, and an
``asyncio.run`` caller's loop may be gone before the callback runs.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ._callback_events import Event, _methods, _overrides, _report, build_kwargs, new_call_id
from ._callback_requests import RequestLog
from ._callbacks import DEFAULT_MAX_QUEUE, Callbacks
from .api import _logging
from .errors import GatewayError
from .keys.spend import result_usage

__all__ = ["call_async", "call_sync", "drain", "flush"]

logger = logging.getLogger("gateway.callbacks")


class _Drain:
    """The daemon thread and its bounded queue."""

    def __init__(self, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self._queue: queue.Queue[tuple[Callbacks, Event | RequestLog]] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, callbacks: Callbacks, event: Event | RequestLog) -> None:
        try:
            self._queue.put_nowait((callbacks, event))
        except queue.Full:
            callbacks._drop()
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._work, name="gateway-callbacks", daemon=True
                    )
                    self._thread.start()

    def _work(self) -> None:
        loop = asyncio.new_event_loop()
        while True:
            callbacks, event = self._queue.get()
            try:
                loop.run_until_complete(_run(callbacks, event))
            except Exception:
                logger.exception("callback event failed")
            finally:
                self._queue.task_done()

    def join(self) -> None:
        self._queue.join()


async def _run(callbacks: Callbacks, event: Event | RequestLog) -> None:
    event = event.resolve()
    for callback in callbacks.loggers:
        async_name, sync_name = _methods(callback, event)
        first, second = (async_name, sync_name) if event.prefer_async else (sync_name, async_name)
        name = first if _overrides(callback, first) else second
        if not _overrides(callback, name):
            continue
        try:
            result = getattr(callback, name)(*event.args)
            if name.startswith("async_"):
                await result
        except Exception:
            _report(callback, name)


_drain: _Drain | None = None
_drain_lock = threading.Lock()
_library: Callbacks | None = None


def drain() -> _Drain:
    global _drain
    if _drain is None:
        with _drain_lock:
            if _drain is None:
                _drain = _Drain()
    return _drain


def flush() -> None:
    """Wait until every queued library callback event has run (e.g. before a script exits)."""
    if _drain is not None:
        _drain.join()


def _callbacks(listed: list[Any]) -> Callbacks:
    global _library
    current = _library
    if current is None or current.callbacks != tuple(listed):
        current = _library = Callbacks(listed)
    return current


class _Call:
    """One logged library call."""

    __slots__ = (
        "call_type",
        "callbacks",
        "group",
        "kw",
        "model",
        "payload",
        "prefer_async",
        "started",
    )

    def __init__(
        self,
        listed: list[Any],
        call_type: str,
        model: str | None,
        payload: Any,
        kw: dict[str, Any],
        prefer_async: bool,
    ) -> None:
        self.callbacks = _callbacks(listed)
        self.call_type = call_type
        self.model = model
        self.payload = payload
        self.group = kw.pop("model_group", None)
        self.kw = kw
        self.prefer_async = prefer_async
        self.started = time.time()

    def done(self, response: Any, error: BaseException | None, first: float | None = None) -> None:
        if self.callbacks.loggers:
            drain().put(self.callbacks, self.event(response, error, first, time.time()))

    def event(
        self, response: Any, error: BaseException | None, first: float | None, ended: float
    ) -> Event:
        kw = self.kw
        usage = result_usage(response) if response is not None else None
        prompt, completion = usage or (0, 0)
        try:
            cost = prompt * float(kw.get("input_cost_per_token") or 0) + completion * float(
                kw.get("output_cost_per_token") or 0
            )
        except (TypeError, ValueError):
            cost = 0.0
        metadata = kw.get("metadata")
        status = 200
        if error is not None:
            status = error.status_code if isinstance(error, GatewayError) else 500
        built = build_kwargs(
            call_id=str(kw.get("litellm_call_id") or new_call_id()),
            call_type=self.call_type,
            model=self.model,
            group=self.group,
            deployment=None,
            api_base=kw.get("api_base"),
            messages=self.payload,
            optional={k: v for k, v in kw.items() if k != "metadata" and v is not None},
            requester_metadata=dict(metadata) if isinstance(metadata, dict) else {},
            stream=bool(kw.get("stream")),
            status=status,
            error=error,
            response=response,
            prompt=prompt,
            completion=completion,
            cost=cost,
            started=self.started,
            ended=ended,
            first_token_at=first,
            request_id=None,
            key_alias=None,
            custom_llm_provider=kw.get("custom_llm_provider"),
        )
        result = response if error is None else error
        return Event(error is None, built, result, self.prefer_async)

    def sync_stream(self, chunks: Iterator[Any]) -> Iterator[Any]:
        from .streaming import stream_chunk_builder

        kept: list[Any] = []
        first: float | None = None
        try:
            for chunk in chunks:
                if first is None:
                    first = time.time()
                kept.append(chunk)
                yield chunk
        except Exception as exc:
            self.done(None, exc, first)
            raise
        self.done(stream_chunk_builder(kept, self.model), None, first)

    async def async_stream(self, chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
        from .streaming import stream_chunk_builder

        kept: list[Any] = []
        first: float | None = None
        try:
            async for chunk in chunks:
                if first is None:
                    first = time.time()
                kept.append(chunk)
                yield chunk
        except Exception as exc:
            self.done(None, exc, first)
            raise
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        self.done(stream_chunk_builder(kept, self.model), None, first)


def call_sync(
    listed: list[Any],
    call_type: str,
    func: Callable[..., Any],
    model: str | None,
    payload: Any,
    **kw: Any,
) -> Any:
    """``func(model, payload, **kw)``, a sync library call, with its events logged."""
    call = _Call(listed, call_type, model, payload, kw, prefer_async=False)
    token = _logging.set(True)
    try:
        result = func(model, payload, **kw)
    except Exception as exc:
        call.done(None, exc)
        raise
    finally:
        _logging.reset(token)
    if kw.get("stream"):
        return call.sync_stream(result)
    call.done(result, None)
    return result


async def call_async(
    listed: list[Any],
    call_type: str,
    func: Callable[..., Any],
    model: str | None,
    payload: Any,
    **kw: Any,
) -> Any:
    """``await func(model, payload, **kw)``, an async library call, with its events logged.
    ``model_group`` (not passed on): the ``gateway.Router`` group called."""
    call = _Call(listed, call_type, model, payload, kw, prefer_async=True)
    token = _logging.set(True)
    try:
        result = await func(model, payload, **kw)
    except Exception as exc:
        call.done(None, exc)
        raise
    finally:
        _logging.reset(token)
    if kw.get("stream"):
        return call.async_stream(result)
    call.done(result, None)
    return result
