"""The other OpenAI routes (embeddings, images, models) and the operator's (health,
metrics, router state, the OpenAPI document)."""

from __future__ import annotations

import base64
import os
import sys
from array import array
from collections.abc import Sequence
from typing import Any

import msgspec
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .bodies import _NOT_OPTIONAL_OTHER, EmbeddingRequest, ImageRequest
from .chat import _PREPARED, _from_cache, _prefetch_key, _tapped
from .edge import _answer, _Endpoint, _send_json
from .errors import (
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from .record import SCOPE_KEY
from .router import Routed
from .runtime import Runtime

_encode = msgspec.json.Encoder().encode


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

    def _prepared(self, scope: Scope, request: Any, data: dict[str, Any]) -> tuple[Any, ...]:
        """The inputs, optional params and cache lookup, made once per request."""
        prepared = scope.get(_PREPARED)
        if prepared is None:
            inputs = _embedding_input(request.input)
            cache = self.runtime.cache
            control = data.pop("cache", None) if cache is not None else None
            optional = _other_optional(data)
            lookup = None
            if cache is not None:
                lookup = cache.lookup(request.model, inputs, optional, False, control, "embeddings")
            prepared = scope[_PREPARED] = (inputs, optional, lookup)
        return prepared

    def prefetch(self, scope: Scope, request: Any, data: dict[str, Any]) -> Sequence[str]:
        return _prefetch_key(self.runtime.cache, self._prepared(scope, request, data)[2])

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, data, timeout = await self.read(scope, receive, EmbeddingRequest)
        inputs, optional, lookup = self._prepared(scope, request, data)
        router = self.runtime.router
        if lookup is not None:
            keeping = await _from_cache(scope, send, self.runtime.cache, lookup, False)
            if keeping is None:
                return
            send = keeping
        if request.encoding_format != "base64":
            await _answer(
                scope,
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

        await _answer(scope, receive, send, _tapped(scope, call))


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
            scope,
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
