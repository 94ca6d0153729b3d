"""The HTTP gateway's ASGI app: the routes, the per-request record and id, the lifespan.

Starlette only routes. Each endpoint reads the body, decodes it with msgspec, asks the
router, and writes the answer itself: no Request/Response objects and no middleware
on the hot path. The endpoints live beside this module: ``edge`` (the base every endpoint
shares), ``chat``, ``endpoints`` (the other routes), ``frontdoors``, ``keys.admin``;
request bodies in ``bodies``, the app's state in ``runtime``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable
from logging import INFO
from time import perf_counter
from typing import Any

import anyio
from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from ._aio import SCOPE_DISCONNECT
from ._context import current_runtime
from .chat import ChatCompletions
from .edge import _Endpoint
from .endpoints import (
    Embeddings,
    ImageGenerations,
    Liveliness,
    MetricsEndpoint,
    Models,
    OpenAPIEndpoint,
    Readiness,
    RouterStateEndpoint,
    _not_found,
)
from .logs import access_log
from .record import SCOPE_KEY, RequestRecord, current
from .request_id import new_request_id
from .runtime import Runtime

__all__ = ["GatewayApp", "app_from_env", "create_app"]

access_logger = logging.getLogger("gateway.access")


class GatewayApp(Router):
    """The gateway's ASGI app: a Starlette router over pure ASGI endpoints.

    Serve it directly or mount it in another Starlette/FastAPI app. Its lifespan
    starts and stops providers; if a host app never runs it, providers start lazily.
    """

    # Set by the ``gateway`` command, whose process this is: the lifespan then tunes the
    # garbage collector after startup (gateway/_gc.py). A mounted app leaves it alone.
    owns_process = False

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

    def own_process(self) -> None:
        """Make this app its process's only one (the ``gateway`` command's): its
        lifespan tunes the garbage collector, and its runtime is the current one in this
        context, which the server's connections and their requests inherit."""
        self.owns_process = True
        current_runtime.set(self.runtime)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # What this app owns, for whatever serves the request: its HTTP clients
        # (providers, handlers calling gateway.http_client()) and its threads for sync
        # handlers. Set only where it is not already (own_process): a set and reset
        # cost ~0.5 us a request.
        runtime = self.runtime
        runtime_token = None if current_runtime.get() is runtime else current_runtime.set(runtime)
        # A server that made this request's task for it alone (gateway._server_httptools)
        # needs no reset of what is set here: the task's context ends with it.
        served = scope.get(SCOPE_DISCONNECT)
        own_task = served is not None and served.own_task
        try:
            if scope["type"] != "http":  # lifespan
                await super().__call__(scope, receive, send)
                return
            # The request itself, inline: a coroutine of its own was one frame more on
            # every request (~1.4k instructions).
            record = token = None
            logged = access_logger.isEnabledFor(INFO)  # asked once a request: 0.7k instructions
            if runtime.count_requests or runtime.request_ids or logged:
                # The request's record: its id echoed on the response, in its log lines,
                # to handlers and upstreams; what metrics and the access log read when it
                # ends. With none of them on, none is made: no context variable, no send
                # wrapper.
                client = scope.get("client")
                rid = new_request_id(scope["headers"]) if runtime.request_ids else None
                record = scope[SCOPE_KEY] = RequestRecord(
                    rid, perf_counter(), client[0] if client else None
                )
                if served is not None and served.notes_response:
                    served.record = record  # the server notes the response start
                else:
                    send = _noting(send, record)
                token = current.set(record)
            try:
                if runtime.tracing is not None:
                    route = self._route_of(scope)
                    await runtime.tracing.server(scope, receive, send, self._dispatch, route)
                    return
                # Exact paths go straight to their endpoint: Starlette's route matching
                # costs 1 us a request (7% of a whole request here). Everything else
                # (prefixes from a host app's Mount, unknown paths) goes through
                # Starlette's routing. Inline, not a call to _dispatch: a coroutine less
                # per request.
                endpoint = None if scope.get("root_path") else self._exact.get(scope["path"])
                if endpoint is not None:
                    await endpoint(scope, receive, send)
                else:
                    await super().__call__(scope, receive, send)
            finally:
                if record is not None:
                    if not own_task:
                        current.reset(token)  # type: ignore[arg-type]
                    if logged:
                        access_log(record, scope)
        finally:
            if runtime_token is not None and not own_task:
                current_runtime.reset(runtime_token)

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
        # The command's process: aiohttp's writes start eagerly on the loops its sessions
        # (gateway.http_client()'s) are made on (gateway/_pool.py).
        self.runtime.http.eager_writes = self.owns_process
        await self.runtime.startup()
        if self.owns_process and self.runtime.config.settings.gc_tuning:
            from . import _gc

            _gc.tune()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.runtime.write_snapshots)
                yield
                tg.cancel_scope.cancel()
        finally:
            await self.runtime.shutdown()


def _noting(send: Send, record: RequestRecord) -> Send:
    """``send`` noting when and with what status the response started, with the
    request's id added to its headers (for servers that do not note it themselves)."""
    header = None if record.id is None else (b"x-request-id", record.id.encode())

    def noting(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            record.responded = perf_counter()
            record.status = message["status"]
            if header is not None:
                message["headers"] = [*message.get("headers", ()), header]
        return send(message)

    return noting


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
    app = create_app(os.environ["GATEWAY_CONFIG"])
    app.own_process()  # called in the worker's serving task, before it listens
    return app
