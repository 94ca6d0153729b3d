"""GET /metrics: Prometheus text with request counts and durations."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from tests.fake_upstream import serve_in_thread

CONFIG = {
    "model_list": [
        {"model_name": "m", "litellm_params": {"model": "mock/m", "mock_response": "hi"}},
    ],
    "general_settings": {"master_key": "sk-metrics"},
}


@pytest.fixture
def server() -> Iterator[str]:
    with serve_in_thread(create_app(CONFIG)) as handle:
        yield handle.url


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_count_requests_by_route_and_status(server: str) -> None:
    auth = {"Authorization": "Bearer sk-metrics"}
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    for _ in range(3):
        assert httpx.post(f"{server}/v1/chat/completions", json=body, headers=auth).is_success
    assert httpx.post(f"{server}/v1/chat/completions", json=body).status_code == 401
    assert (
        httpx.post(f"{server}/v1/chat/completions", json={"model": "x"}, headers=auth).status_code
        == 400
    )

    r = httpx.get(f"{server}/metrics")  # no key needed, like health
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    route = ("route", "chat_completions")
    ok = (("deployment", "m/0"), ("model_group", "m"), route)
    assert got[("gateway_requests_total", (*ok, ("status", "200")))] == 3
    # Refused before the body was read: no model known.
    no_model = (("deployment", ""), ("model_group", ""), route)
    assert got[("gateway_requests_total", (*no_model, ("status", "401")))] == 1
    assert got[("gateway_requests_total", (*no_model, ("status", "400")))] == 1
    assert got[("gateway_request_duration_seconds_count", (("model_group", "m"), route))] == 3
    assert got[("gateway_request_duration_seconds_count", (("model_group", ""), route))] == 2
    inf = (("le", "+Inf"), ("model_group", "m"), route)
    assert got[("gateway_request_duration_seconds_bucket", inf)] == 3
    assert got[("gateway_requests_in_flight", ())] == 1  # this scrape
