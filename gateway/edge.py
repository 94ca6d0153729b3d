"""The edge of every endpoint: the ``_Endpoint`` base (auth, body, request record, errors
rendered once), JSON writing, and what a client may see of an error.

Pure ASGI: an endpoint is called with (scope, receive, send) and writes its answer itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from typing import Any

import anyio
import msgspec
from starlette.types import Receive, Scope, Send

from ._aio import SCOPE_DISCONNECT, ClientGone, served_by, until_disconnect
from .bodies import _convert_body, _decode_body
from .errors import (
    BadRequestError,
    GatewayError,
    ServiceUnavailableError,
)
from .record import SCOPE_KEY, RequestRecord, current
from .request_id import new_request_id, request_id
from .router import Routed
from .runtime import Runtime

logger = logging.getLogger("gateway.app")

# Where ``_Endpoint.read`` leaves the values of the keys ``prefetch`` named.
PREFETCHED = "gateway.prefetched"

_encode = msgspec.json.Encoder().encode

_JSON_HEADERS = [(b"content-type", b"application/json")]

# Wire helpers.


async def _send_json(send: Send, status: int, payload: bytes, extra: list[Any] = ()) -> None:  # type: ignore[assignment]
    headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode()), *extra]
    # The gateway's own server writes it at once: two coroutines and messages less.
    server = served_by(send)
    if server is not None and server.respond(status, headers, payload):
        return
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
    # A request past ``read`` calls a model (or answers from the response cache) unless
    # it fails: callbacks that read only outcomes need no per-request log to tell.
    calls_model = True

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
                presented = runtime.check_auth(scope) if runtime.master_key is not None else None
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

    def prefetch(self, scope: Scope, request: Any, data: dict[str, Any]) -> Sequence[str]:
        """Redis keys to read in the request's shared-state round trip (their values
        land in ``scope[PREFETCHED]``): a cached endpoint's entry. Called with a cache."""
        return ()

    async def read(
        self, scope: Scope, receive: Receive, kind: type[Any]
    ) -> tuple[Any, dict[str, Any], float | None]:
        """The request body as ``kind`` and as a dict, and the request's own timeout."""
        body = self.runtime.body_at_hand(receive)
        if body is None:
            body = await self.runtime.read_body(scope, receive)
        request, data = _decode_body(body, kind)
        callbacks = self.runtime.callbacks
        if callbacks is not None:
            if callbacks.outcome is not None and self.calls_model:
                scope["gateway.log"] = callbacks.outcome  # nothing made per request
            else:
                log = scope["gateway.log"] = callbacks.request(scope, self.route)
                if callbacks.pre_call:  # hooks may change the body, in place or not
                    request, data = _convert_body(await log.before(data), kind)
                else:
                    log.data = data
        record = scope.get(SCOPE_KEY)
        if record is not None:
            record.model = request.model
        # With Redis, one round trip reads the key's and the group's counters and the
        # request's response cache entry.
        extra = self.prefetch(scope, request, data) if self.runtime.cache is not None else ()
        grant = scope.get("gateway.key")
        read = None
        if grant is not None:
            read = await grant.admit(request.model, self.runtime.router, extra)
        if extra and read is None:  # no key, or its counters needed no read
            read = await self.runtime.router.read_with(request.model, extra)
        if extra and read is not None:
            scope[PREFETCHED] = read[0]
        header = _timeout_header(scope)  # checked even when the body's timeout wins
        return request, data, request.timeout if request.timeout is not None else header


async def _answer(
    scope: Scope, receive: Receive, send: Send, call: Callable[[], Awaitable[Routed]]
) -> None:
    """Run a non-streaming call; if the client goes away it is cancelled, nothing is sent."""
    record = current.get()
    started = perf_counter()
    signal = scope.get(SCOPE_DISCONNECT)
    if signal is None:
        routed = await until_disconnect(receive, call, scope)
    else:  # until_disconnect in this frame: one coroutine less to resume on wake-ups
        signal.watch()
        try:
            routed = await call()
        except asyncio.CancelledError:
            if signal.went():
                raise ClientGone from None
            raise
        finally:
            signal.unwatch()
    if record is not None:
        record.answered(routed, started)
    await _send_json(send, 200, _encode(routed.result), _routed_headers(routed))
