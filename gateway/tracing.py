"""OpenTelemetry traces: a server span per request, a child span per attempt.

Imported only when ``gateway_settings.otel`` is true (``pip install 'gateway[otel]'``).
The exporter is set up from the standard ``OTEL_*`` environment variables (OTLP over
HTTP by default; ``OTEL_TRACES_EXPORTER=console`` or ``none``), unless the process
already has a global tracer provider (``opentelemetry-instrument``, or one the host app
set), which is then used as it is. An incoming W3C ``traceparent`` is the parent of the
server span; each attempt's span is sent upstream as the request's ``traceparent``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import http as gateway_http
from .errors import GatewayError

__all__ = ["Tracing"]

_SCOPE_NAME = "gateway"


def _headers(scope: Any) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        if name in (b"traceparent", b"tracestate", b"baggage"):
            carrier[name.decode("latin-1")] = value.decode("latin-1")
    return carrier


def _provider_from_env() -> Any:
    """A tracer provider: the process's own if it set one, else one from ``OTEL_*``."""
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        return current
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create(
        {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "gateway"}
    )
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER is read here
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        name = name.strip().lower()
        if name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name not in ("none", ""):
            raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}")
    return provider


def _otlp_exporter() -> Any:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip().lower() == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter,
            )
        except ImportError:
            raise ValueError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc"
            ) from None
        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPExporter,
    )

    return HTTPExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*


def _inject(headers: dict[str, str]) -> None:
    propagate.inject(headers)


class Tracing:
    """The spans of one app."""

    def __init__(self, provider: Any = None) -> None:
        self._own = provider is None and isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider
        )
        self.provider = provider if provider is not None else _provider_from_env()
        self.tracer = self.provider.get_tracer(_SCOPE_NAME)
        # Attempts of one request in flight (keyed by the request object's id): a second
        # one running at once is a hedge.
        self._running: dict[int, int] = {}
        gateway_http.trace_headers = _inject

    async def server(
        self,
        scope: Any,
        receive: Any,
        send: Any,
        app: Callable[[Any, Any, Any], Awaitable[None]],
        route: str | None,
    ) -> None:
        """``app(scope, receive, send)`` inside the request's server span."""
        method = scope.get("method", "GET")
        parent = propagate.extract(_headers(scope))
        name = f"{method} {route}" if route else method
        status = 0

        async def traced_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER)
        span.set_attribute("http.request.method", method)
        if route:
            span.set_attribute("http.route", route)
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            await app(scope, receive, traced_send)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            context.detach(token)
            if status:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()

    async def attempt(self, run: Callable[[Any, Any], Awaitable[Any]], d: Any, req: Any) -> Any:
        """One attempt of ``req`` on deployment ``d`` in a child span."""
        key = id(req)
        running = self._running.get(key, 0)
        self._running[key] = running + 1
        span = self.tracer.start_span(f"attempt {d.group.name}", kind=SpanKind.CLIENT)
        span.set_attribute("gateway.model_group", d.group.name)
        span.set_attribute("gateway.deployment", d.id)
        span.set_attribute("gateway.attempt", req.attempts)
        span.set_attribute("gateway.retry", running == 0 and req.attempts > 1)
        span.set_attribute("gateway.hedge", running > 0)
        span.set_attribute("gateway.stream", bool(req.stream))
        token = context.attach(trace.set_span_in_context(span))
        try:
            result = await run(d, req)
            span.set_attribute("http.response.status_code", 200)
        except GatewayError as exc:
            span.set_attribute("http.response.status_code", exc.status_code)
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, exc.message[:200]))
            raise
        except anyio.get_cancelled_exc_class():
            # A hedge's loser, or the client went away: not an upstream failure.
            span.set_attribute("gateway.cancelled", True)
            raise
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            context.detach(token)
            span.end()
            left = self._running[key] - 1
            if left:
                self._running[key] = left
            else:
                del self._running[key]
        return result

    def shutdown(self) -> None:
        if self._own:
            self.provider.shutdown()
