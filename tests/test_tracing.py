"""OpenTelemetry traces on a live gateway, captured with the SDK's in-memory exporter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

try:
    import opentelemetry.sdk  # noqa: F401
except ImportError:
    if os.environ.get("CI") == "true":  # in the test extra: CI must have it
        raise
    pytest.skip("OpenTelemetry SDK missing: pip install -e '.[test]'", allow_module_level=True)

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from gateway.app import create_app
from tests.fake_upstream import FakeUpstream, run_fake_upstream, serve_in_thread

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
AUTH = {"Authorization": "Bearer sk-otel"}


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider (set once) with an in-memory exporter on it; the
    gateway uses a provider the process already has, as with opentelemetry-instrument."""
    memory = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with run_fake_upstream() as fake:
        yield fake


def _config(upstream: FakeUpstream, **router: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {
                    "model": "openai/fake",
                    "api_base": upstream.base_url,
                    "api_key": "sk-up",
                },
                "model_info": {"id": "m-one"},
            }
        ],
        "general_settings": {"master_key": "sk-otel"},
        "gateway_settings": {"otel": True},
        "router_settings": router,
    }


def _by_kind(spans: list[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.kind == kind), key=lambda s: s.start_time or 0)


def test_server_and_attempt_spans_continue_the_callers_trace(
    spans: InMemorySpanExporter, upstream: FakeUpstream
) -> None:
    with serve_in_thread(create_app(_config(upstream))) as server:
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={**AUTH, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        assert r.status_code == 200
    finished = list(spans.get_finished_spans())
    (root,) = _by_kind(finished, SpanKind.SERVER)
    (attempt,) = _by_kind(finished, SpanKind.CLIENT)
    assert root.name == "POST /v1/chat/completions"
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID
    assert root.attributes["http.response.status_code"] == 200
    assert attempt.parent is not None and attempt.parent.span_id == root.context.span_id
    assert attempt.attributes["gateway.deployment"] == "m-one"
    assert attempt.attributes["gateway.model_group"] == "m"
    assert attempt.attributes["gateway.retry"] is False
    assert attempt.attributes["gateway.hedge"] is False
    assert attempt.attributes["http.response.status_code"] == 200
    # The upstream got this attempt's span as its parent, in the caller's trace.
    sent = upstream.requests_seen[-1].headers["traceparent"]
    attempt_id = format(attempt.context.span_id, "016x")
    assert sent == f"00-{TRACE_ID}-{attempt_id}-01"


def test_retries_are_sibling_attempt_spans_with_their_status(
    spans: InMemorySpanExporter, upstream: FakeUpstream
) -> None:
    config = _config(upstream, num_retries=1, retry_backoff=0)
    with serve_in_thread(create_app(config)) as server:
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "fake": {"status": 503},
            },
            headers=AUTH,
        )
        assert r.status_code == 503
    finished = list(spans.get_finished_spans())
    (root,) = _by_kind(finished, SpanKind.SERVER)
    first, second = _by_kind(finished, SpanKind.CLIENT)
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes["http.response.status_code"] == 503
    for span in (first, second):
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["http.response.status_code"] == 503
    assert (first.attributes["gateway.retry"], second.attributes["gateway.retry"]) == (False, True)
    assert [s.attributes["gateway.attempt"] for s in (first, second)] == [1, 2]
    # Without an incoming traceparent the server span starts a trace of its own.
    assert root.parent is None
    traceparents = [seen.headers["traceparent"] for seen in upstream.requests_seen]
    assert len(set(traceparents)) == 2  # one per attempt


def test_off_by_default_and_never_imported() -> None:
    code = textwrap.dedent(
        """
        import sys
        from gateway.app import create_app
        model = {"model_name": "m", "litellm_params": {"model": "mock/m"}}
        app = create_app({"model_list": [model]})
        assert app.runtime.tracing is None
        assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_hedge_is_an_attempt_span_of_its_own(
    spans: InMemorySpanExporter, upstream: FakeUpstream
) -> None:
    def deployment(name: str, delay: float) -> dict[str, Any]:
        return {
            "model_name": "m",
            "litellm_params": {
                "model": "openai/fake",
                "api_base": upstream.base_url,
                "api_key": "sk-up",
                "extra_body": {"fake": {"delay": delay}},
            },
            "model_info": {"id": name},
        }

    config = _config(upstream, hedge_after_ms=100)
    # Either may go first: the hedge starts after 100 ms and the 0.4 s one wins either way.
    config["model_list"] = [deployment("slow", 3.0), deployment("fast", 0.4)]
    with serve_in_thread(create_app(config)) as server:
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers=AUTH,
            timeout=10,
        )
        assert r.status_code == 200
    finished = list(spans.get_finished_spans())
    first, hedge = _by_kind(finished, SpanKind.CLIENT)
    assert (first.attributes["gateway.hedge"], hedge.attributes["gateway.hedge"]) == (False, True)
    assert hedge.attributes["gateway.attempt"] == 2
    winner = first if first.attributes.get("http.response.status_code") == 200 else hedge
    loser = hedge if winner is first else first
    assert winner.attributes["gateway.deployment"] == "fast"
    assert loser.attributes["gateway.cancelled"] is True
    assert loser.status.status_code != StatusCode.ERROR
