"""The HTTP gateway: OpenAI-compatible routes as pure ASGI endpoints.

Starlette only routes. Each endpoint reads the body, decodes it with msgspec, asks the
router, and writes the answer itself: no Request/Response objects and no middleware
on the hot path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import logging
import os
import sys
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from logging import INFO
from time import perf_counter
from typing import Annotated, Any, Literal

import anyio
import msgspec
from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from ._aio import ClientGone, Deadline, until_disconnect
from ._context import current_runtime
from ._threads import ThreadPool
from .errors import (
    AuthenticationError,
    BadRequestError,
    GatewayError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
    ServiceUnavailableError,
    Timeout,
)
from .http import HTTPClients
from .logs import access_log
from .metrics import METRICS_DIR_ENV, Metrics, Snapshots
from .record import SCOPE_KEY, RequestRecord, current
from .request_id import new_request_id, request_id
from .router import Routed
from .router import Router as ModelRouter
from .streaming import RelayHint, relay_hint

__all__ = ["GatewayApp", "app_from_env", "create_app"]

logger = logging.getLogger("gateway.app")
access_logger = logging.getLogger("gateway.access")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]\n\n"


# Request bodies. Only what the gateway itself needs is typed; every other field is
# passed to the handler as-is in ``optional_params``.


# A request's own timeout in seconds: positive and finite (else a 400 naming it).
_Seconds = Annotated[float, msgspec.Meta(gt=0, le=1e7)]


# Counts a client chooses, bounded where OpenAI bounds them: each multiplies what one call
# costs the operator or builds in memory (a 400 naming the field beyond).
_ChatChoices = Annotated[int, msgspec.Meta(ge=1, le=128)]
_TopLogprobs = Annotated[int, msgspec.Meta(ge=0, le=20)]
_Images = Annotated[int, msgspec.Meta(ge=1, le=10)]
_Dimensions = Annotated[int, msgspec.Meta(ge=1, le=65536)]


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


# What the endpoints check beyond the Structs, said in the OpenAPI document too
# (``extra_json_schema`` is schema only: no cost when decoding).
_Message = Annotated[
    dict[str, Any],
    msgspec.Meta(
        extra_json_schema={"required": ["role"], "properties": {"role": {"type": "string"}}}
    ),
]
# A non-empty list of strings, of token ids, or of token-id lists (checked below).
_EmbeddingList = Annotated[
    list[Any],
    msgspec.Meta(
        extra_json_schema={
            "minItems": 1,
            "anyOf": [
                {"items": {"type": "string"}},
                {"items": {"type": "integer"}},
                {"items": {"type": "array", "items": {"type": "integer"}}},
            ],
        }
    ),
]


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[_Message]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    timeout: _Seconds | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: _ChatChoices | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: _TopLogprobs | None = None
    logit_bias: dict[str, float] | None = None
    parallel_tool_calls: bool | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: str | _EmbeddingList
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: _Dimensions | None = None
    user: str | None = None
    timeout: _Seconds | None = None


class ImageRequest(msgspec.Struct):
    model: str
    prompt: str
    n: _Images | None = None
    size: str | None = None
    quality: str | None = None
    style: str | None = None
    response_format: str | None = None
    user: str | None = None
    timeout: _Seconds | None = None


_NOT_OPTIONAL = frozenset({"model", "messages", "stream", "stream_options", "timeout"})
_NOT_OPTIONAL_OTHER = frozenset({"model", "input", "prompt", "timeout"})


def _validation_error(exc: msgspec.ValidationError) -> BadRequestError:
    message = str(exc)
    param = None
    if "missing required field `" in message:
        param = message.split("`")[1]
    elif "- at `$." in message:
        param = message.rsplit("- at `$.", 1)[1].rstrip("`").split("[")[0].split(".")[0]
    return BadRequestError(f"Invalid request: {message}", param=param)


def _decode_body(body: bytes, kind: type[Any]) -> tuple[Any, dict[str, Any]]:
    try:
        data = _decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"Request body is not valid JSON: {exc}") from None
    except RecursionError:
        # msgspec recurses per nesting level; deeper than Python's limit is never a real
        # request (100,000 levels of [ fit in 200 KB).
        raise BadRequestError("Request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequestError("Request body must be a JSON object")
    return _convert_body(data, kind)


def _convert_body(data: dict[str, Any], kind: type[Any]) -> tuple[Any, dict[str, Any]]:
    try:
        return msgspec.convert(data, kind), data
    except msgspec.ValidationError as exc:
        error = exc
    # JSON does not tell 8.0 from 8 (JSON Schema's "integer" takes both, and some
    # clients write every number as a float): integral floats in integer fields are
    # read as ints. Only on this error path, so a normal request pays nothing.
    if _integral_floats_to_ints(data, kind):
        try:
            return msgspec.convert(data, kind), data
        except msgspec.ValidationError as exc:
            error = exc
    raise _validation_error(error) from None


_INT_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _integral_floats_to_ints(data: dict[str, Any], kind: type[Any]) -> bool:
    names = _INT_FIELDS.get(kind)
    if names is None:
        import msgspec.inspect  # first bad request only: not at start-up

        names = _INT_FIELDS[kind] = tuple(
            f.encode_name
            for f in msgspec.inspect.type_info(kind).fields  # type: ignore[attr-defined]
            if _takes_int(f.type)
        )
    changed = False
    for name in names:
        value = data.get(name)
        if isinstance(value, float) and value.is_integer():
            data[name] = int(value)
            changed = True
    return changed


def _takes_int(info: Any) -> bool:
    if isinstance(info, msgspec.inspect.UnionType):
        return any(isinstance(t, msgspec.inspect.IntType) for t in info.types)
    return isinstance(info, msgspec.inspect.IntType)


# Wire helpers.


async def _send_json(send: Send, status: int, payload: bytes, extra: list[Any] = ()) -> None:  # type: ignore[assignment]
    headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _error_headers(exc: GatewayError) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), str(v).encode()) for k, v in exc.headers.items()]


# Errors as a client may see them. Only the error path pays for any of this.


def _unexpected(scope: Scope, exc: BaseException, logged: bool = False) -> GatewayError:
    """A generic 500 for an exception nobody meant a client to read; its text and
    traceback go to the log (once: the router logs a failed attempt's itself) under a
    request id that the client also gets."""
    rid = request_id(scope)
    if not logged:
        logger.error(
            "unexpected error on %s %s [request id %s]",
            scope.get("method"),
            scope.get("path"),
            rid,
            exc_info=exc,
        )
    # Through GatewayApp every response carries the id already (unless ids are off).
    record = scope.get(SCOPE_KEY)
    headers = {} if record is not None and record.id is not None else {"x-request-id": rid}
    return GatewayError(f"Internal server error (request id {rid})", headers=headers)


def _public(scope: Scope, exc: GatewayError) -> GatewayError:
    """``exc`` as the client may see it: an error status, no unexpected exception's text."""
    if exc.internal:
        logged = getattr(exc, "_gateway_logged", False)
        return _unexpected(scope, exc.__cause__ or exc, logged)
    if not 400 <= exc.status_code <= 599:
        # Set on an error after it was made (CustomLLMError checks its own): never a 2xx.
        return GatewayError(exc.message, param=exc.param, code=exc.code, headers=exc.headers)
    return exc


def _is_cancellation(exc: BaseException) -> bool:
    """A real cancellation, not a handler raising ``CancelledError`` itself."""
    if isinstance(exc, asyncio.CancelledError):
        try:
            task = asyncio.current_task()
        except RuntimeError:  # not asyncio: its own cancellation is another class
            return False
        return task is None or task.cancelling() > 0
    return isinstance(exc, anyio.get_cancelled_exc_class())


_CUT = ServiceUnavailableError(
    "The stream was cut short: the gateway is shutting down", code="stream_cut"
)
_CANCELLED = ServiceUnavailableError(
    "The request was cancelled: the gateway is shutting down",
    code="request_cancelled",
    headers={"connection": "close"},
)


def _sse_error(exc: GatewayError) -> bytes:
    return b"data: " + _encode(exc.to_dict()) + b"\n\n"


class Runtime:
    """Everything one app holds at run time, made once from the config."""

    def __init__(self, config: Any) -> None:
        settings = config.settings
        self.config = config
        self.settings = settings
        self.master_key = config.master_key.encode() if config.master_key else None
        self.body_limit = settings.max_request_body_bytes
        self.router = ModelRouter.from_config(config)
        self.unavailable = self.router.unavailable()
        self.started = int(time.time())
        # This app's own threads for sync handlers: two apps in a process share none.
        self.threads = ThreadPool(
            settings.sync_worker_threads, settings.sync_worker_threads_per_model
        )
        self.metrics = Metrics(self.router.model_names(), self.router, self.threads)
        self.metrics_auth = settings.metrics_auth
        # What reads a request's record: with neither (nor the access log) none is made.
        self.count_requests = settings.metrics
        self.request_ids = settings.request_ids
        metrics_dir = os.environ.get(METRICS_DIR_ENV)
        if metrics_dir:  # several workers: each scrape answers for all of them
            self.metrics.snapshots = Snapshots(self.metrics, metrics_dir)
        self.models_payload = _encode(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": self.started, "owned_by": "gateway"}
                    for name in self.router.model_names()
                ],
            }
        )
        self.http = HTTPClients(settings.upstream)
        # Redis shared by instances (router_settings.redis_url), if configured.
        self.shared: Any = getattr(self.router.state, "shared", None)
        if self.shared is not None:
            self.metrics.collectors.append(self.shared)
        self.cache: Any = None  # a cache.ResponseCache with litellm_settings.cache: true
        if config.cache is not None:
            from .cache import ResponseCache

            self.cache = ResponseCache(config.cache, self.shared)
            self.metrics.collectors.append(self.cache)
        self.keys: Any = None  # a keys.KeyManager when the config has a database_url
        if config.database_url:
            from .keys import KeyManager

            self.keys = KeyManager.from_config(config)
            if self.shared is not None:
                self.keys.use_redis(self.shared)
            self.metrics.collectors.append(self.keys.collector())
        self.callbacks: Any = None  # a callbacks.Callbacks with litellm_settings.callbacks
        if config.callbacks:
            from ._callbacks import Callbacks

            self.callbacks = Callbacks(
                config.callbacks,
                model_list=config.model_list,
                max_queue=settings.callback_queue_size,
                runtime=self,
            )
            self.metrics.collectors.append(self.callbacks.collector())
        self.tracing: Any = None  # a tracing.Tracing with gateway_settings.otel
        if settings.otel:
            from .tracing import Tracing

            self.tracing = Tracing()
            self.router.trace_attempts(self.tracing)

    def check_auth(self, scope: Scope) -> bytes | None:
        """Raises if the request may not pass; a key other than the master key, for the
        key cache to check (with virtual keys on), else None."""
        if self.master_key is None:
            return None
        presented = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                presented = token.strip() if scheme.lower() == b"bearer" else value
                break
            if name in (b"api-key", b"x-api-key"):
                presented = value.strip()
        if presented is None:
            raise AuthenticationError(
                "Missing API key: pass 'Authorization: Bearer <key>'", code="invalid_api_key"
            )
        if not hmac.compare_digest(presented, self.master_key):
            if self.keys is not None:
                return presented
            raise AuthenticationError("Invalid API key", code="invalid_api_key")
        return None

    async def read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.body_limit
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    raise self._too_large()
                break
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > limit:
                raise self._too_large()
            return body
        parts = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                raise self._too_large()
            parts.append(part)
            if not message.get("more_body"):
                return b"".join(parts)

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(f"Request body is larger than {self.body_limit} bytes")

    async def write_snapshots(self) -> None:
        """This worker's metrics for the others to read, about once a second."""
        snapshots = self.metrics.snapshots
        if snapshots is None:
            return
        n = 0
        while True:
            snapshots.write(force=n % 10 == 0)  # gauges move without requests too
            n += 1
            await anyio.sleep(1.0)

    async def startup(self) -> None:
        if self.keys is not None:
            await self.keys.start()
        # Providers starting up see this runtime's clients, as its requests do.
        token = current_runtime.set(self)
        try:
            for provider in self.router.providers():
                await provider.astart(self.settings)
        finally:
            current_runtime.reset(token)

    async def shutdown(self) -> None:
        if self.callbacks is not None:
            await self.callbacks.aclose()
        if self.metrics.snapshots is not None:
            self.metrics.snapshots.write(force=True)  # its counters outlive it
        if self.keys is not None:
            await self.keys.stop()
        if self.cache is not None:
            await self.cache.aclose()
        if self.shared is not None:
            await self.shared.aclose()
        for provider in self.router.providers():
            with contextlib.suppress(Exception):
                await provider.aclose()
        await self.http.aclose()
        if self.tracing is not None:
            self.tracing.shutdown()


def _timeout_header(scope: Scope) -> float | None:
    for name, value in scope["headers"]:
        if name == b"x-gateway-timeout":
            try:
                seconds = float(value)
            except ValueError:
                seconds = 0.0
            if not 0 < seconds <= 1e7:
                raise BadRequestError(
                    "x-gateway-timeout must be a positive number of seconds", param="timeout"
                )
            return seconds
    return None


_ROUTED_HEADERS: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}


def _routed_headers(routed: Routed) -> list[tuple[bytes, bytes]]:
    key = (routed.deployment, routed.attempts)
    headers = _ROUTED_HEADERS.get(key)
    if headers is None:
        headers = [
            (b"x-gateway-deployment", routed.deployment.encode()),
            (b"x-gateway-attempts", str(routed.attempts).encode()),
        ]
        if len(_ROUTED_HEADERS) < 4096:  # deployments x attempt counts: small
            _ROUTED_HEADERS[key] = headers
    return headers


class _Endpoint:
    """A pure ASGI endpoint: method check, auth, error rendering at the edge."""

    methods: tuple[str, ...] = ("POST",)
    auth = True
    route = ""  # the metrics label

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        allow = ", ".join(self.methods).encode()
        self._allow = [(b"allow", allow)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Errors reach here only before a response started: streams report theirs
        # in the stream.
        runtime = self.runtime
        metrics = runtime.metrics if runtime.count_requests else None
        record: RequestRecord | None = scope.get(SCOPE_KEY)
        if record is None and metrics is not None:  # called bare, not through GatewayApp
            rid = new_request_id(scope["headers"]) if runtime.request_ids else None
            record = scope[SCOPE_KEY] = RequestRecord(rid, perf_counter(), None)
        if metrics is not None:
            metrics.in_flight += 1
        rid = None
        if record is not None:
            record.route = self.route
            rid = record.id
        status = 200
        grant = None
        error: BaseException | None = None
        try:
            if scope["method"] not in self.methods:
                status = 405
                exc = GatewayError(
                    f"Method {scope['method']} not allowed; use {', '.join(self.methods)}",
                    status_code=405,
                    type="invalid_request_error",
                )
                await _send_json(send, 405, self.render_error(exc, rid), self._allow)
                return
            if self.auth:
                presented = self.runtime.check_auth(scope)
                if self.runtime.keys is not None:
                    grant = scope["gateway.key"] = await self.runtime.keys.authenticate(presented)
            status = await self.handle(scope, receive, send) or 200
        except ClientGone:
            status = 499
        except GatewayError as exc:
            exc = _public(scope, exc)
            status = exc.status_code
            error = exc
            if record is not None:
                record.error = exc
            await self._send_error(send, exc, rid)
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt or CancelledError from a handler too: a 500,
            # and the server stays up. A real cancellation goes on.
            if _is_cancellation(exc):
                # The server gave up on the request (graceful_timeout on shutdown): an
                # answer in OpenAI's shape, not uvicorn's plain-text 500. If a response
                # (a stream) already started, uvicorn refuses this one, harmlessly.
                status = 503
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self._send_error(send, _CANCELLED, rid)
                raise
            status = 500
            error = exc
            if record is not None:
                record.error = exc
            unexpected = _unexpected(scope, exc)
            await self._send_error(send, unexpected, rid or unexpected.headers.get("x-request-id"))
        finally:
            if record is not None:
                record.status = status
                if metrics is not None:
                    metrics.in_flight -= 1
                    metrics.observe(record, perf_counter())
            if grant is not None:
                grant.finish(status)
            # Callbacks' events, queued now the answer is out (one `if` when none are set).
            if self.runtime.callbacks is not None and "gateway.log" in scope:
                scope["gateway.log"].finish(status, error)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> int | None:
        """Answer the request; the status if not 200 (a stream that ended in an error)."""
        raise NotImplementedError

    def render_error(self, exc: GatewayError, request_id: str | None = None) -> bytes:
        """The error body, with the request's id; a front door of another API renders
        that API's shape."""
        body = exc.to_dict()
        if request_id is not None:
            body["error"]["request_id"] = request_id
        return _encode(body)

    async def _send_error(self, send: Send, exc: GatewayError, request_id: str | None) -> None:
        body = self.render_error(exc, request_id)
        await _send_json(send, exc.status_code, body, _error_headers(exc))

    async def read(
        self, scope: Scope, receive: Receive, kind: type[Any]
    ) -> tuple[Any, dict[str, Any], float | None]:
        """The request body as ``kind`` and as a dict, and the request's own timeout."""
        body = await self.runtime.read_body(scope, receive)
        request, data = _decode_body(body, kind)
        callbacks = self.runtime.callbacks
        if callbacks is not None:
            log = scope["gateway.log"] = callbacks.request(scope, self.route)
            if callbacks.pre_call:  # hooks may change the body, in place or not
                request, data = _convert_body(await log.before(data), kind)
            else:
                log.data = data
        record = scope.get(SCOPE_KEY)
        if record is not None:
            record.model = request.model
        grant = scope.get("gateway.key")
        if grant is not None:  # with Redis: reads the key's and the group's counters at once
            await grant.admit(request.model, self.runtime.router)
        header = _timeout_header(scope)  # checked even when the body's timeout wins
        return request, data, request.timeout if request.timeout is not None else header


async def _answer(receive: Receive, send: Send, call: Callable[[], Awaitable[Routed]]) -> None:
    """Run a non-streaming call; if the client goes away it is cancelled, nothing is sent."""
    record = current.get()
    started = perf_counter()
    routed = await until_disconnect(receive, call)
    if record is not None:
        record.answered(routed, started)
    await _send_json(send, 200, _encode(routed.result), _routed_headers(routed))


class ChatCompletions(_Endpoint):
    route = "chat_completions"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> int | None:
        request, data, timeout = await self.read(scope, receive, ChatRequest)
        for i, message in enumerate(request.messages):
            if not isinstance(message.get("role"), str):
                raise BadRequestError(f"messages[{i}] has no `role`", param=f"messages[{i}].role")
        stream = bool(request.stream)
        cache = self.runtime.cache
        control = data.pop("cache", None) if cache is not None else None
        optional = {k: v for k, v in data.items() if k not in _NOT_OPTIONAL and v is not None}
        if stream:
            optional["stream"] = True
            if data.get("stream_options") is not None:
                optional["stream_options"] = data["stream_options"]
        if cache is not None:
            lookup = cache.lookup(request.model, request.messages, optional, stream, control)
            if lookup is not None:
                keeping = await _from_cache(scope, send, cache, lookup, stream)
                if keeping is None:
                    return None
                send = keeping
        router = self.runtime.router
        if not stream:
            await _answer(
                receive,
                send,
                _tapped(
                    scope,
                    lambda: router.chat(request.model, request.messages, optional, timeout=timeout),
                ),
            )
            return None
        return await _stream(
            scope,
            receive,
            send,
            _tapped(
                scope,
                lambda: router.chat(
                    request.model,
                    request.messages,
                    optional,
                    stream=True,
                    timeout=timeout,
                ),
                request.messages,
            ),
            timeout=timeout,
        )


async def _from_cache(
    scope: Scope, send: Send, cache: Any, lookup: Any, stream: bool
) -> Send | None:
    """Answer from the response cache (None: answered; the callbacks see a hit), else
    ``send`` that keeps a good answer for the next request."""
    from .cache import HIT

    body = await cache.get(lookup)
    if body is None:
        return cache.capture(send, lookup)
    if not stream:
        await _send_json(send, 200, body, [HIT])
    else:
        start = {"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, HIT]}
        await send(start)
        await send({"type": "http.response.body", "body": body})
    log = scope.get("gateway.log")
    if log is not None:
        log.cached(body)
    return None


def _tapped(scope: Scope, call: Callable[[], Awaitable[Routed]], prompt: Any = None) -> Any:
    """``call``, with its usage noted for the request's virtual key (if any) and its
    answer seen by the callbacks (if any)."""
    grant = scope.get("gateway.key")
    if grant is not None:
        call = grant.tap(call, prompt)
    log = scope.get("gateway.log")
    return call if log is None else log.tap(call)


async def _stream(
    scope: Scope,
    receive: Receive,
    send: Send,
    call: Callable[[], Awaitable[Routed]],
    write: Callable[[Send, Routed], Awaitable[int]] | None = None,
    timeout: float | None = None,
) -> int:
    """Server-sent events, written as the handler yields them (by ``write``: a front
    door writes its own API's events); the status to count.

    Headers go out once the first chunk exists, so a failure before it is a plain
    HTTP error. A failure after it is an SSE error event. A disconnect cancels the
    handler's stream; its ``finally`` runs. The request's own ``timeout`` bounds the
    whole stream (the router bounds each wait between chunks).
    """
    if write is None:
        write = functools.partial(_write_stream, scope)
    # Set before the call: the first upstream read, made before the first chunk is
    # returned, often holds the whole stream. One context variable set and reset.
    token = relay_hint.set(RelayHint())
    opened: list[Routed] = []
    start = time.monotonic() if timeout is not None else 0.0
    record = scope.get(SCOPE_KEY)

    async def run() -> int:
        started = perf_counter()
        routed = await call()
        if record is not None:
            record.streaming(routed, started)
        if timeout is not None:
            routed.result = _Deadlined(routed.result, Deadline(timeout, start))
        opened.append(routed)
        return await write(send, routed)

    try:
        return await until_disconnect(receive, run)
    finally:
        relay_hint.reset(token)
        # Closed once the watch has stopped, so no disconnect can cut the close short.
        if opened:
            with anyio.CancelScope(shield=True):
                await opened[0].result.aclose()


class _Deadlined:
    """A stream's chunks under the request's deadline: past it, the next chunk is a
    ``Timeout`` (a gateway error, so every writer ends with its own error event)."""

    __slots__ = ("_chunks", "_deadline")

    def __init__(self, chunks: Any, deadline: Deadline) -> None:
        self._chunks = chunks
        self._deadline = deadline

    def __aiter__(self) -> _Deadlined:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._deadline.wait(self._chunks.__anext__())
        except TimeoutError:
            raise Timeout(f"Request timed out after {self._deadline.seconds:g} s") from None

    async def aclose(self) -> None:
        self._deadline.close()
        await self._chunks.aclose()


async def _write_stream(scope: Scope, send: Send, routed: Routed) -> int:
    status = 200
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_SSE_HEADERS, *_routed_headers(routed)],
        }
    )
    # Chunks a provider marks as having another right behind them (one upstream read
    # brought several events) go out with the next: one send, not one each. Costs an
    # identity test per chunk.
    hint = relay_hint.get() or RelayHint()
    held: list[bytes] = []
    try:
        async for chunk in routed.result:
            data = b"data: " + _encode(chunk) + b"\n\n"
            if chunk is hint.held:
                hint.held = None
                held.append(data)
                continue
            if held:
                held.append(data)
                data = b"".join(held)
                held.clear()
            await send({"type": "http.response.body", "body": data, "more_body": True})
        tail = _DONE
    except GatewayError as exc:
        exc = _public(scope, exc)
        status = exc.status_code
        tail = _sse_error(exc)
    except OSError:
        raise ClientGone from None  # the server saw the client go while we wrote
    except BaseException as exc:
        if _is_cancellation(exc):
            # The server cut the stream (its graceful_timeout ran out on shutdown): say
            # so rather than just stop. After a client left, this send is a no-op.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                body = b"".join([*held, _sse_error(_CUT)])
                await send({"type": "http.response.body", "body": body})
            raise
        status = 500
        tail = _sse_error(_unexpected(scope, exc))
    if held:
        tail = b"".join([*held, tail])
    try:
        await send({"type": "http.response.body", "body": tail, "more_body": False})
    except OSError:
        raise ClientGone from None
    return status


def _other_optional(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in _NOT_OPTIONAL_OTHER and v is not None}


def _embedding_input(value: Any) -> Any:
    """``input`` checked: a string, or a non-empty list of strings, ids or id lists."""
    if isinstance(value, str):
        return value
    if not value:
        raise BadRequestError("`input` must not be empty", param="input")
    if all(isinstance(v, str) for v in value) or all(type(v) is int for v in value):
        return value
    if all(isinstance(v, list) and all(type(t) is int for t in v) for v in value):
        return value
    ids = _integral_ids(value)  # token ids written as 8.0: ids all the same
    if ids is not None:
        return _embedding_input(ids)
    raise BadRequestError(
        "`input` must be a string, a list of strings, a list of token ids, or a list of "
        "token-id lists",
        param="input",
    )


def _integral_ids(value: list[Any]) -> list[Any] | None:
    """``value`` with its integral floats as ints, or None when it has none."""
    found = False

    def as_int(v: Any) -> Any:
        nonlocal found
        if isinstance(v, float) and v.is_integer():
            found = True
            return int(v)
        return v

    ids = [[as_int(t) for t in v] if isinstance(v, list) else as_int(v) for v in value]
    return ids if found else None


class Embeddings(_Endpoint):
    route = "embeddings"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, data, timeout = await self.read(scope, receive, EmbeddingRequest)
        inputs = _embedding_input(request.input)
        router = self.runtime.router
        cache = self.runtime.cache
        control = data.pop("cache", None) if cache is not None else None
        optional = _other_optional(data)
        if cache is not None:
            lookup = cache.lookup(request.model, inputs, optional, False, control, "embeddings")
            if lookup is not None:
                keeping = await _from_cache(scope, send, cache, lookup, False)
                if keeping is None:
                    return
                send = keeping
        if request.encoding_format != "base64":
            await _answer(
                receive,
                send,
                _tapped(
                    scope,
                    lambda: router.embed(request.model, inputs, optional, timeout=timeout),
                ),
            )
            return

        async def call() -> Routed:
            routed = await router.embed(request.model, inputs, optional, timeout=timeout)
            for item in routed.result.data:
                item.embedding = _base64_floats(item.embedding)
            return routed

        await _answer(receive, send, _tapped(scope, call))


def _base64_floats(embedding: list[float] | str) -> str:
    """An embedding as OpenAI's ``base64`` encoding: little-endian float32, base64.

    A handler or upstream that already honoured ``encoding_format`` sent a string: kept.
    """
    if isinstance(embedding, str):
        return embedding
    values = array("f", embedding)
    if sys.byteorder != "little":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode()


class ImageGenerations(_Endpoint):
    route = "images_generations"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, data, timeout = await self.read(scope, receive, ImageRequest)
        router = self.runtime.router
        optional = _other_optional(data)
        await _answer(
            receive,
            send,
            _tapped(
                scope,
                lambda: router.image(request.model, request.prompt, optional, timeout=timeout),
            ),
        )


class Models(_Endpoint):
    route = "models"
    methods = ("GET", "HEAD")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        grant = scope.get("gateway.key")
        if grant is not None and grant.entry.models is not None:
            await _send_json(send, 200, self.runtime.keys.models_payload(grant.entry, self.runtime))
            return
        await _send_json(send, 200, self.runtime.models_payload)


class Liveliness(_Endpoint):
    route = "health"
    methods = ("GET", "HEAD")
    auth = False
    _payload = _encode("I'm alive!")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, self._payload)


class Readiness(_Endpoint):
    route = "health"
    methods = ("GET", "HEAD")
    auth = False

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> int | None:
        runtime = self.runtime
        models = runtime.router.model_names()
        if runtime.unavailable:
            broken = [{"deployment": d, "error": why} for d, why in runtime.unavailable]
            payload = {"status": "unhealthy", "models": models, "unavailable": broken}
            await _send_json(send, 503, _encode(payload))
            return 503
        answer: dict[str, Any] = {"status": "healthy", "models": models}
        shared = runtime.shared
        if shared is not None:
            # Still 200 without Redis: this instance serves, on its own counters.
            answer["redis"] = shared.status
            if not shared.up:
                answer["status"] = "degraded"
        await _send_json(send, 200, _encode(answer))
        return None


class MetricsEndpoint(_Endpoint):
    """Prometheus metrics. No key needed, like health (scrapers rarely carry one), unless
    ``gateway_settings.metrics_auth`` asks for the master key."""

    methods = ("GET", "HEAD")
    auth = False
    route = "metrics"
    _headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        if runtime.metrics_auth:
            _check_master(runtime, scope)
        payload = runtime.metrics.render()
        headers = [*self._headers, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _check_master(runtime: Runtime, scope: Scope) -> None:
    """Only the master key passes (not a virtual key)."""
    if runtime.check_auth(scope) is not None:
        raise PermissionDeniedError("Only the master key may read this", code="master_key_required")


class RouterStateEndpoint(_Endpoint):
    """``GET /router/state``: every deployment as this worker's router sees it."""

    methods = ("GET", "HEAD")
    auth = False
    route = "router_state"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        _check_master(runtime, scope)
        metrics = runtime.metrics
        deployments = runtime.router.report()
        for entry in deployments:
            # This worker's means since it started, whatever the routing strategy.
            where = (entry["model_group"], entry["deployment"])
            entry["latency_mean_s"] = metrics.deployment_mean("upstream", *where)
            entry["ttft_mean_s"] = metrics.deployment_mean("ttft", *where)
        payload = {"pid": os.getpid(), "deployments": deployments}
        await _send_json(send, 200, _encode(payload))


class OpenAPIEndpoint(_Endpoint):
    """The OpenAPI document of the app's routes. No key needed: it holds no secret."""

    methods = ("GET", "HEAD")
    auth = False
    route = "openapi"

    def __init__(self, runtime: Runtime, routes: list[Route]) -> None:
        super().__init__(runtime)
        self._routes = routes
        self._payloads: dict[str, bytes] = {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Built on first use (a few ms, and the module is not imported before), once per
        # mount point: the root path is the app's placement, not the client's choice.
        root_path = scope.get("root_path", "")
        payload = self._payloads.get(root_path)
        if payload is None:
            from .openapi import build_document

            payload = _encode(
                build_document(
                    [(route.path, route.endpoint) for route in self._routes],
                    model_names=self.runtime.router.model_names(),
                    auth=self.runtime.master_key is not None,
                    root_path=root_path,
                )
            )
            if len(self._payloads) < 16:
                self._payloads[root_path] = payload
        await _send_json(send, 200, payload)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    exc = NotFoundError(f"No route for {scope['method']} {scope['path']}", code="not_found")
    body = exc.to_dict()
    record = scope.get(SCOPE_KEY)
    if record is not None and record.id is not None:
        body["error"]["request_id"] = record.id
    await _send_json(send, exc.status_code, _encode(body))


class GatewayApp(Router):
    """The gateway's ASGI app: a Starlette router over pure ASGI endpoints.

    Serve it directly or mount it in another Starlette/FastAPI app. Its lifespan
    starts and stops providers; if a host app never runs it, providers start lazily.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        endpoints: list[tuple[str, _Endpoint]] = [
            ("/chat/completions", ChatCompletions(runtime)),
            ("/images/generations", ImageGenerations(runtime)),
            ("/embeddings", Embeddings(runtime)),
            ("/models", Models(runtime)),
        ]
        from .frontdoors.endpoints import routes as frontdoor_routes

        endpoints += frontdoor_routes(runtime)
        routes = []
        for path, endpoint in endpoints:
            routes.append(Route("/v1" + path, endpoint))
            routes.append(Route(path, endpoint))
        routes.append(Route("/health/liveliness", Liveliness(runtime)))
        routes.append(Route("/health/liveness", Liveliness(runtime)))
        routes.append(Route("/health/readiness", Readiness(runtime)))
        if runtime.count_requests:
            routes.append(Route("/metrics", MetricsEndpoint(runtime)))
        routes.append(Route("/router/state", RouterStateEndpoint(runtime)))
        if runtime.keys is not None:
            from .keys.admin import admin_routes

            routes.extend(admin_routes(runtime))
        routes.append(Route("/openapi.json", OpenAPIEndpoint(runtime, routes)))
        super().__init__(routes, default=_not_found, lifespan=self._lifespan)
        self._exact: dict[str, Any] = {
            route.path: route.endpoint for route in routes if "{" not in route.path
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # What this app owns, for whatever serves the request: its HTTP clients
        # (providers, handlers calling gateway.http_client()) and its threads for sync
        # handlers. ~0.1 us a request for the set and reset.
        token = current_runtime.set(self.runtime)
        try:
            if scope["type"] != "http":  # lifespan
                await super().__call__(scope, receive, send)
                return
            await self._http(scope, receive, send)
        finally:
            current_runtime.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        record = token = None
        if runtime.count_requests or runtime.request_ids or access_logger.isEnabledFor(INFO):
            # The request's record: its id echoed on the response, in its log lines, to
            # handlers and upstreams; what metrics and the access log read when it ends.
            # With none of them on, none is made: no context variable, no send wrapper.
            client = scope.get("client")
            rid = new_request_id(scope["headers"]) if runtime.request_ids else None
            record = scope[SCOPE_KEY] = RequestRecord(
                rid, perf_counter(), client[0] if client else None
            )
            header = None if rid is None else (b"x-request-id", rid.encode())
            inner = send

            def send(message: Message) -> Awaitable[None]:
                # When and with what status the response started; the id on its headers.
                if message["type"] == "http.response.start":
                    record.responded = perf_counter()
                    record.status = message["status"]
                    if header is not None:
                        message["headers"] = [*message.get("headers", ()), header]
                return inner(message)

            token = current.set(record)
        try:
            if runtime.tracing is not None:
                route = self._route_of(scope)
                await runtime.tracing.server(scope, receive, send, self._dispatch, route)
                return
            # Exact paths go straight to their endpoint: Starlette's route matching costs
            # 1 us a request (7% of a whole request here). Everything else (prefixes from
            # a host app's Mount, unknown paths) goes through Starlette's routing. Inline,
            # not a call to _dispatch: a coroutine less per request.
            endpoint = None if scope.get("root_path") else self._exact.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
            else:
                await super().__call__(scope, receive, send)
        finally:
            if record is not None:
                current.reset(token)  # type: ignore[arg-type]
                if access_logger.isEnabledFor(INFO):
                    access_log(record, scope)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            endpoint = self._exact.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _route_of(self, scope: Scope) -> str | None:
        # A span's name: a known route, never the raw path of an unknown URL (unbounded).
        path = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :]
        return path if path in self._exact else None

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        await self.runtime.startup()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.runtime.write_snapshots)
                yield
                tg.cancel_scope.cancel()
        finally:
            await self.runtime.shutdown()


def create_app(config_or_path: Any) -> GatewayApp:
    """The gateway as an ASGI app, from a ``Config``, a config.yaml path, or a dict."""
    from .config import Config, load_config, parse_config

    if isinstance(config_or_path, Config):
        config = config_or_path
    elif isinstance(config_or_path, dict | bytes):
        config = parse_config(config_or_path)
    else:
        config = load_config(config_or_path)
    return GatewayApp(Runtime(config))


def app_from_env() -> GatewayApp:
    """App factory for uvicorn workers: reads the config path from ``GATEWAY_CONFIG``."""
    return create_app(os.environ["GATEWAY_CONFIG"])
