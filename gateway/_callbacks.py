"""Callbacks (LiteLLM's ``CustomLogger``): proxy hooks on the request path, logging off it.

Logging events wait in a bounded queue and are run by one task per app, after the
response is sent: a slow or failing callback never delays or fails a request. A full
queue drops the event and counts it (``Callbacks.dropped``, the
``gateway_callback_events_dropped`` metric). Sync methods run on a worker thread of
their own, never on the event loop. Library calls' callbacks (``gateway.callbacks``) are
in ``_callbacks_library``.

With no callbacks configured none of this exists: the app checks one attribute.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import logging
import random
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import anyio
import msgspec

from .caching.dual_cache import DualCache
from .errors import GatewayError, as_gateway_error
from .integrations.custom_logger import CustomLogger
from .keys.spend import Prices, chunk_usage, result_usage
from .proxy._types import UserAPIKeyAuth
from .request_id import request_id

__all__ = ["CALLBACK_METHODS", "Callbacks", "Event", "RequestLog", "build_kwargs", "hook_error"]

logger = logging.getLogger("gateway.callbacks")

_getrandbits = random.getrandbits  # ids to match log lines, not secrets

DEFAULT_MAX_QUEUE = 10_000
# Seconds an idle callback task waits before running newly queued events: it then runs
# all that arrived meanwhile, so a busy gateway wakes it 20 times a second, not per request.
BATCH_DELAY = 0.05

_LOG_METHODS = (
    "log_success_event",
    "log_failure_event",
    "async_log_success_event",
    "async_log_failure_event",
)
CALLBACK_METHODS = (*_LOG_METHODS, "async_pre_call_hook", "async_post_call_success_hook")

# Routes of the HTTP gateway -> LiteLLM's call_type, as its proxy hooks receive it.
CALL_TYPES = {
    "chat_completions": "completion",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "images_generations": "image_generation",
    "responses": "responses",
    "messages": "anthropic_messages",
}


def _overrides(callback: Any, name: str) -> bool:
    """Whether ``callback`` has its own ``name`` (not CustomLogger's no-op)."""
    method = getattr(type(callback), name, None)
    if method is None:
        return callable(getattr(callback, name, None))  # duck-typed, or set on the instance
    return method is not getattr(CustomLogger, name, None)


def hook_error(exc: BaseException) -> GatewayError:
    """What the client gets when a hook raises: a gateway error as it is; else the
    exception's ``status_code`` (FastAPI's ``HTTPException`` and the like, 400-599) and
    its ``detail`` or text; else a 400."""
    if isinstance(exc, GatewayError):
        return exc
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or not 400 <= status <= 599:
        status = 400
    detail = getattr(exc, "detail", None)
    if isinstance(detail, dict):
        detail = detail.get("error") or detail.get("message") or detail
    message = str(detail if detail is not None else exc) or type(exc).__name__
    kind = "invalid_request_error" if status < 500 else "api_error"
    return GatewayError(message, status_code=status, type=kind, retryable=False)


def new_call_id() -> str:
    """A random (version 4) UUID string, as LiteLLM's call ids: uuid.uuid4() reads
    os.urandom, a system call, and costs several times this."""
    bits = (_getrandbits(128) & ~(0xF000 << 64) & ~(0xC << 60)) | (0x4000 << 64) | (0x8 << 60)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _datetime(epoch: float) -> datetime.datetime:
    # LiteLLM hands callbacks naive local datetimes (datetime.datetime.now()).
    return datetime.datetime.fromtimestamp(epoch)


def _plain(value: Any) -> Any:
    """A response as plain data, for the logging object."""
    if value is None or isinstance(value, dict | list | str | int | float):
        return value
    if isinstance(value, msgspec.Raw):
        return msgspec.json.decode(value)
    try:
        return msgspec.to_builtins(value)
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def _request_id(scope: Any) -> str:
    """The request's id: as the request-id feature stored it, else ``request_id``'s
    (the caller's safe ``x-request-id``, or a new one)."""
    rid = scope.get("gateway.request_id")
    return str(rid) if rid is not None else request_id(scope)


class Event:
    """One finished call, as handed to logging callbacks: ``(kwargs, response, start,
    end)``, the times being ``kwargs``' own ``start_time`` and ``end_time``."""

    __slots__ = ("args", "prefer_async", "success")

    def __init__(
        self, success: bool, kwargs: dict[str, Any], response: Any, prefer_async: bool = True
    ) -> None:
        self.success = success
        self.args = (kwargs, response, kwargs["start_time"], kwargs["end_time"])
        self.prefer_async = prefer_async

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.args[0]

    @property
    def response(self) -> Any:
        return self.args[1]


class _Pending:
    """An HTTP request's event, to be built by the task that runs the callbacks."""

    __slots__ = ("ended", "error", "log", "status")

    def __init__(self, log: RequestLog, status: int, error: BaseException | None, ended: float):
        self.log, self.status, self.error, self.ended = log, status, error, ended

    def resolve(self) -> Event:
        return self.log.event(self.status, self.error, self.ended)


def _methods(callback: Any, event: Event) -> tuple[str, str]:
    if event.success:
        return "async_log_success_event", "log_success_event"
    return "async_log_failure_event", "log_failure_event"


def _pick(callback: Any, success: bool) -> tuple[str, bool]:
    """(method name, is async) a logging event of that outcome calls; ("", False): none."""
    kind = "success" if success else "failure"
    if _overrides(callback, f"async_log_{kind}_event"):
        return f"async_log_{kind}_event", True
    if _overrides(callback, f"log_{kind}_event"):
        return f"log_{kind}_event", False
    return "", False


def _report(callback: Any, name: str) -> None:
    logger.warning("callback %s.%s failed", type(callback).__name__, name, exc_info=sys.exc_info())


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
        self.runtime = runtime  # the app's (gateway.app.Runtime), for callbacks' context
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
        self._queue: deque[Event | _Pending] = deque()
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None  # set while the task is idle
        self._wake_pending = False
        # Sync methods: one thread at a time, apart from anyio's default pool.
        self._thread_limiter: anyio.CapacityLimiter | None = None

    # -- queueing -------------------------------------------------------------------

    def emit(self, event: Event | _Pending) -> None:
        """Queue ``event`` for the logging callbacks; never blocks, never raises."""
        if not self.loggers:
            return
        if len(self._queue) >= self.max_queue:
            self._drop()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no asyncio loop (a trio host): the library's thread
            from ._callbacks_library import drain

            drain().put(self, event)
            return
        self._queue.append(event)
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            # One task for the app's life, not one per event: a task and its context
            # cost more than the rest of queueing. A context of its own: not that of the
            # request that happened to start it (its trace span, its key).
            self._waiter = None
            self._task = loop.create_task(self._drain(), context=self._context())
        elif self._waiter is not None and not self._wake_pending:
            # Idle: wake it a moment later, for all the events queued by then, rather
            # than once per event (a wake-up costs as much as queueing the event).
            self._wake_pending = True
            loop.call_later(BATCH_DELAY, self._wake)

    def _wake(self) -> None:
        self._wake_pending = False
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
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            while queue:
                await self.run(queue.popleft())
            self._waiter = waiter = loop.create_future()
            await waiter

    async def run(self, event: Event | _Pending) -> None:
        """Every logging callback for ``event``, one after another; failures are logged."""
        if isinstance(event, _Pending):
            try:
                event = event.resolve()
            except Exception:
                logger.exception("building a callback event failed")
                return
        for callback, methods in self._methods:
            name, is_async = methods[event.success]
            if not name:
                continue
            try:
                if is_async:
                    await getattr(callback, name)(*event.args)
                else:
                    if self._thread_limiter is None:
                        self._thread_limiter = anyio.CapacityLimiter(1)
                    await anyio.to_thread.run_sync(
                        _call_sync,
                        getattr(callback, name),
                        event,
                        limiter=self._thread_limiter,
                        abandon_on_cancel=True,
                    )
            except Exception:
                _report(callback, name)

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
        self._task = self._waiter = None

    def collector(self) -> Any:
        """A prometheus-client collector of this app's dropped events."""
        return _DropsCollector(self)

    # -- per request ----------------------------------------------------------------

    def request(self, scope: Any, route: str) -> RequestLog:
        return RequestLog(self, scope, route)


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


def _user(scope: Any) -> UserAPIKeyAuth:
    grant = scope.get("gateway.key")
    entry = getattr(grant, "entry", None)
    if entry is None:
        return UserAPIKeyAuth()
    return UserAPIKeyAuth(
        api_key=entry.token,
        key_alias=entry.alias,
        models=sorted(entry.models) if entry.models else [],
        spend=entry.spend,
        max_budget=entry.max_budget,
    )


class RequestLog:
    """One HTTP request as the callbacks see it: made after auth, finished in the
    endpoint's ``finally`` (after the response went out)."""

    __slots__ = (
        "cached_body",
        "call_id",
        "call_type",
        "callbacks",
        "called",
        "data",
        "deployment",
        "error",
        "first_token_at",
        "response",
        "route",
        "scope",
        "started",
        "stream_chunks",
        "stream_usage",
        "user",
    )

    def __init__(self, callbacks: Callbacks, scope: Any, route: str) -> None:
        self.callbacks = callbacks
        self.scope = scope
        self.route = route
        self.call_type = CALL_TYPES.get(route, route)
        self.started = time.time()
        self.call_id = ""  # made with the event, off the request path
        self.data: dict[str, Any] = {}
        self.user: UserAPIKeyAuth | None = None
        self.called = False
        self.deployment: str | None = None
        self.response: Any = None
        self.error: BaseException | None = None
        self.first_token_at: float | None = None
        self.stream_chunks: list[Any] | None = None
        self.stream_usage: tuple[int, int] | None = None
        self.cached_body: bytes | None = None

    async def before(self, data: dict[str, Any]) -> dict[str, Any]:
        """The pre-call hooks, in order; each may return a changed body or raise."""
        self.data = data
        callbacks = self.callbacks
        if not callbacks.pre_call:
            return data
        self.user = user = _user(self.scope)
        for callback in callbacks.pre_call:
            try:
                changed = await callback.async_pre_call_hook(
                    user, callbacks.cache, data, self.call_type
                )
            except Exception as exc:
                raise hook_error(exc) from exc
            if changed is not None:
                if not isinstance(changed, dict):
                    raise GatewayError(
                        f"callback {type(callback).__name__}.async_pre_call_hook returned "
                        f"{type(changed).__name__}, not the request body (a dict)",
                        status_code=500,
                        type="api_error",
                    )
                data = changed
        self.data = data
        return data

    def tap(self, call: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        """``call`` (returning a ``Routed``) with its answer noted and the post-call hooks run."""

        async def tapped() -> Any:
            self.called = True
            try:
                routed = await call()
            except Exception as exc:
                self.error = exc
                await self._failed(exc)
                raise
            self.deployment = routed.deployment
            result = routed.result
            if hasattr(result, "__aiter__") and hasattr(result, "aclose"):
                self.first_token_at = time.time()
                if self.callbacks.loggers:
                    self.stream_chunks = []
                    routed.result = _LoggedStream(result, self)
                return routed
            for callback in self.callbacks.post_success:
                if self.user is None:
                    self.user = _user(self.scope)
                try:
                    changed = await callback.async_post_call_success_hook(
                        self.data, self.user, result
                    )
                except Exception as exc:
                    raise hook_error(exc) from exc
                if changed is not None:
                    result = changed
            routed.result = self.response = result
            return routed

        return tapped

    def cached(self, body: bytes) -> None:
        """The answer came from the response cache (``body``, JSON or a stream's events):
        a success event with LiteLLM's ``cache_hit: true`` and no cost. Decoded later,
        by the callback task."""
        self.called = True
        self.cached_body = body

    async def _failed(self, exc: BaseException) -> None:
        for callback in self.callbacks.post_failure:
            if self.user is None:
                self.user = _user(self.scope)
            try:
                await callback.async_post_call_failure_hook(self.data, exc, self.user)
            except Exception:
                _report(callback, "async_post_call_failure_hook")

    def finish(self, status: int, error: BaseException | None) -> None:
        """The response is out: queue the success or failure event. Its kwargs are built
        later, by the task that runs the callbacks, not on the request's time."""
        if not self.called and error is None:
            return  # answered without a model call (count_tokens): nothing to log
        error = self.error or error
        if error is None and status >= 400:
            error = GatewayError(f"request ended with HTTP {status}", status_code=status)
        self.callbacks.emit(_Pending(self, status, error, time.time()))

    def event(self, status: int, error: BaseException | None, ended: float) -> Event:
        response = self.response
        body = self.cached_body
        if body is not None:
            try:
                if body.startswith(b"data: "):
                    self.stream_chunks = [
                        msgspec.json.decode(line[6:])
                        for line in body.split(b"\n\n")
                        if line.startswith(b"data: {")
                    ]
                else:
                    from .types import EmbeddingResponse, ModelResponse

                    kind = {"completion": ModelResponse, "embeddings": EmbeddingResponse}
                    response = msgspec.json.decode(body, type=kind.get(self.call_type, Any))
            except msgspec.MsgspecError:
                logger.warning("could not decode a cached answer for callbacks", exc_info=True)
        chunks = self.stream_chunks
        if chunks is not None:
            from .streaming import stream_chunk_builder

            try:
                chunks = [_chunk_data(c) for c in chunks]
                for chunk in reversed(chunks):
                    usage, _ = chunk_usage(chunk)
                    if usage is not None:
                        self.stream_usage = usage
                        break
                if error is None:
                    response = stream_chunk_builder(chunks, self.data.get("model"))
            except Exception:
                logger.warning("could not rebuild a stream's answer for callbacks", exc_info=True)
                response = None
        kwargs = self.kwargs(status, error, response, ended)
        return Event(error is None, kwargs, response or error)

    def kwargs(
        self, status: int, error: BaseException | None, response: Any, ended: float
    ) -> dict[str, Any]:
        self.call_id = self.call_id or new_call_id()
        data = self.data
        callbacks = self.callbacks
        group = data.get("model")
        if group.__class__ is not str:
            group = None
        deployment = self.deployment
        model, api_base = callbacks.deployments.get(deployment or "", (group, None))
        usage = self.stream_usage
        if usage is None and error is None:
            usage = result_usage(response)
        prompt, completion = usage or (0, 0)
        entry = getattr(self.scope.get("gateway.key"), "entry", None)
        requested = data.get("metadata")
        return build_kwargs(
            call_id=self.call_id,
            call_type=self.call_type,
            model=model or group,
            group=group,
            deployment=deployment,
            api_base=api_base,
            messages=data.get("messages", data.get("input", data.get("prompt"))),
            optional={k: v for k, v in data.items() if k not in _NOT_OPTIONAL},
            requester_metadata=dict(requested) if requested.__class__ is dict else {},
            stream=data.get("stream") is True,
            status=status,
            error=error,
            response=response,
            prompt=prompt,
            completion=completion,
            cost=callbacks.prices.cost(group or "", deployment, prompt, completion),
            cache_hit=self.cached_body is not None,
            started=self.started,
            ended=ended,
            first_token_at=self.first_token_at,
            request_id=_request_id(self.scope),
            key_alias=getattr(entry, "alias", None),
            key_hash=getattr(entry, "token", None),
        )


_NOT_OPTIONAL = frozenset({"model", "messages", "input", "prompt", "metadata"})


def build_kwargs(
    *,
    call_id: str,
    call_type: str,
    model: str | None,
    group: str | None,
    deployment: str | None,
    api_base: str | None,
    messages: Any,
    optional: dict[str, Any],
    requester_metadata: dict[str, Any],
    stream: bool,
    status: int,
    error: BaseException | None,
    response: Any,
    prompt: int,
    completion: int,
    cost: float,
    started: float,
    ended: float,
    first_token_at: float | None,
    request_id: str | None,
    key_alias: str | None,
    key_hash: str | None = None,
    custom_llm_provider: str | None = None,
    cache_hit: bool = False,
) -> dict[str, Any]:
    """The ``kwargs`` LiteLLM gives logging callbacks, with its ``standard_logging_object``.

    Built for every event of every request: one pass of dict literals, no helpers."""
    error_info = None
    if error is not None:
        mapped = error if isinstance(error, GatewayError) else as_gateway_error(error)
        error_info = {
            "error_code": str(mapped.status_code),
            "error_class": type(error).__name__,
            "error_message": mapped.message,
        }
    metadata = {
        **requester_metadata,
        "user_api_key_alias": key_alias,
        "user_api_key_hash": key_hash,
        "model_group": group,
        "deployment": deployment,
    }
    end_time = _datetime(ended)
    first = first_token_at if first_token_at is not None else ended
    # LiteLLM's accounting of a cache hit: it cost nothing, and saved what it would have.
    saved = 0.0
    if cache_hit:
        saved, cost = cost, 0.0
    return {
        "model": model,
        "messages": messages,
        "optional_params": optional,
        "litellm_params": {
            "metadata": metadata,
            "model_info": {"id": deployment},
            "api_base": api_base,
            "custom_llm_provider": custom_llm_provider,
            "litellm_call_id": call_id,
        },
        "call_type": call_type,
        "stream": stream,
        "response_cost": cost,
        "cache_hit": cache_hit,
        "litellm_call_id": call_id,
        "start_time": _datetime(started),
        "end_time": end_time,
        "completion_start_time": end_time if first_token_at is None else _datetime(first),
        "exception": error,
        "standard_logging_object": {
            "id": call_id,
            "trace_id": request_id or call_id,
            "request_id": request_id,
            "call_type": call_type,
            "stream": stream,
            "status": "success" if error is None else "failure",
            "status_code": status,
            "model": model,
            "model_group": group,
            "model_id": deployment,
            "deployment": deployment,
            "api_base": api_base,
            "custom_llm_provider": custom_llm_provider,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "response_cost": cost,
            "cache_hit": cache_hit,
            "saved_cache_cost": saved,
            "startTime": started,
            "endTime": ended,
            "completionStartTime": first,
            "metadata": {
                "user_api_key_alias": key_alias,
                "user_api_key_hash": key_hash,
                "requester_metadata": requester_metadata,
            },
            "messages": messages,
            "response": _plain(response) if error is None else None,
            "model_parameters": optional,
            "error_str": None if error is None else str(error),
            "error_information": error_info,
            "hidden_params": {"model_id": deployment, "api_base": api_base},
        },
    }


def _chunk_data(chunk: Any) -> Any:
    """A kept stream chunk as the chunk builder reads it: the HTTP app's pre-encoded
    chunks decoded, a front door's text chunks (plain strings) as their delta."""
    if chunk.__class__ is msgspec.Raw:
        return msgspec.json.decode(chunk)
    if chunk.__class__ is str:
        return {"choices": [{"delta": {"content": chunk}}]}
    return chunk


class _LoggedStream:
    """A routed stream whose chunks are kept, to rebuild the answer and its usage for
    the event. Costs a list append per chunk, only with logging callbacks."""

    __slots__ = ("_gen", "_inner", "_log")

    def __init__(self, inner: Any, log: RequestLog) -> None:
        self._inner = inner
        self._log = log
        self._gen = self._chunks()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen

    def __anext__(self) -> Awaitable[Any]:
        return self._gen.__anext__()

    async def _chunks(self) -> AsyncIterator[Any]:
        log = self._log
        kept = log.stream_chunks
        assert kept is not None
        try:
            async for chunk in self._inner:
                kept.append(chunk)  # decoded and counted later, by the callback task
                yield chunk
        except Exception as exc:
            log.error = exc
            raise

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()  # type: ignore[attr-defined]
        finally:
            await self._inner.aclose()
