"""The runtime of one app: its config, router, thread pool, HTTP clients, keys, metrics,
callbacks and shared state, started and stopped with the app's lifespan."""

from __future__ import annotations

import contextlib
import hmac
import os
import time
from typing import Any

import anyio
import msgspec
from starlette.types import Receive, Scope

from ._aio import ClientGone, served_by
from ._context import current_runtime
from ._threads import ThreadPool
from .errors import (
    AuthenticationError,
    RequestTooLargeError,
)
from .http import HTTPClients
from .metrics import METRICS_DIR_ENV, Metrics, Snapshots
from .router import Router as ModelRouter

_encode = msgspec.json.Encoder().encode


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

    def body_at_hand(self, receive: Receive) -> bytes | None:
        """The whole body if the gateway's own server has it already (most requests:
        it came with the head), without ``read_body``'s coroutine and ``receive``'s;
        None: call ``read_body``."""
        server = served_by(receive)
        if server is None:
            return None
        body = server.take_body()
        if body is not None and len(body) > self.body_limit:
            raise self._too_large()
        return body

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
