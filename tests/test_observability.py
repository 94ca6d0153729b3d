"""Metrics labels, request ids, failure logs and /router/state on a live gateway."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import CustomLLM, CustomLLMError
from gateway.app import create_app
from tests.fake_upstream import run_fake_upstream, serve_in_thread

KEY = "sk-obs"
AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "the secret prompt"}]


class Seen(CustomLLM):
    """Answers, and keeps the headers it was given."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        self.headers.append(dict(kwargs["headers"]))
        return "the secret answer"


class Boom(CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("handler bug: do not show clients")


class Down(CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        raise CustomLLMError(503, "down for maintenance")


SEEN = Seen()


def config(**settings: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": "m", "litellm_params": {"model": "mock/m", "mock_response": "hi"}},
            {"model_name": "seen", "litellm_params": {"model": "seen/x"}},
            {"model_name": "boom", "litellm_params": {"model": "boom/x"}},
            # Two deployments: a group that can cool one down.
            {"model_name": "down", "litellm_params": {"model": "down/a"}},
            {"model_name": "down", "litellm_params": {"model": "down/b"}},
        ],
        "litellm_settings": {
            "custom_provider_map": [
                {"provider": "seen", "custom_handler": SEEN},
                {"provider": "boom", "custom_handler": Boom()},
                {"provider": "down", "custom_handler": Down()},
            ]
        },
        "router_settings": {"allowed_fails": 0, "cooldown_time": 60},
        "general_settings": {"master_key": KEY},
        "gateway_settings": settings,
    }


@pytest.fixture(scope="module", params=["command", "uvicorn"])
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    # The command's own protocol notes each response's start and adds its x-request-id
    # itself; served by uvicorn's, the app wraps ``send`` to do it.
    http = "httptools" if request.param == "command" else "auto"
    with serve_in_thread(create_app(config()), loop="uvloop", http=http) as handle:
        yield handle.url


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def chat(url: str, model: str, **more: Any) -> httpx.Response:
    headers = {**AUTH, **more.pop("headers", {})}
    body = {"model": model, "messages": USER, **more}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def test_made_request_ids_stay_unique_32_hex_digits_across_blocks() -> None:
    from gateway.request_id import new_request_id

    # Ids are made 4096 at a time from a block's head: cross two block boundaries.
    made = [new_request_id([]) for _ in range(2 * 4096 + 10)]
    assert len(set(made)) == len(made)
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in made)
    assert {rid[:20] for rid in made} == {made[0][:20]}  # this process's prefix


def test_request_id_is_honoured_or_made_and_echoed_everywhere(server: str) -> None:
    mine = "client-req:42_a.b-c"
    r = chat(server, "m", headers={"x-request-id": mine})
    assert r.status_code == 200
    assert r.headers.get_list("x-request-id") == [mine]  # once

    made = chat(server, "m").headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0
    assert chat(server, "m").headers["x-request-id"] != made

    # Unsafe or too long: replaced, never echoed.
    for bad in ("has space", "x" * 129, 'quote"d', ""):
        got = chat(server, "m", headers={"x-request-id": bad}).headers["x-request-id"]
        assert got != bad and len(got) == 32

    # Errors: the header and the body.
    r = chat(server, "nope", headers={"x-request-id": "err-1"})
    assert r.status_code == 404
    assert r.headers.get_list("x-request-id") == ["err-1"]
    assert r.json()["error"]["request_id"] == "err-1"
    r = httpx.post(f"{server}/v1/chat/completions", json={}, headers={"x-request-id": "no-key"})
    assert r.status_code == 401 and r.json()["error"]["request_id"] == "no-key"
    r = httpx.get(f"{server}/no/such/path", headers={"x-request-id": "lost"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "lost"
    assert r.json()["error"]["request_id"] == "lost"

    # Streams: on the response's headers.
    with httpx.stream(
        "POST",
        f"{server}/v1/chat/completions",
        json={"model": "m", "messages": USER, "stream": True},
        headers={**AUTH, "x-request-id": "stream-1"},
    ) as r:
        assert r.headers.get_list("x-request-id") == ["stream-1"]
        assert "[DONE]" in r.read().decode()


def test_handlers_and_upstreams_get_the_request_id(server: str) -> None:
    SEEN.headers.clear()
    assert chat(server, "seen", headers={"x-request-id": "to-handler"}).status_code == 200
    assert SEEN.headers == [{"x-request-id": "to-handler"}]

    with run_fake_upstream() as fake:
        upstream_config = {
            "model_list": [
                {
                    "model_name": "up",
                    "litellm_params": {
                        "model": "openai/gpt",
                        "api_base": fake.base_url,
                        "api_key": "sk-up",
                    },
                }
            ]
        }
        with serve_in_thread(create_app(upstream_config)) as gw:
            r = httpx.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "up", "messages": USER},
                headers={"x-request-id": "to-upstream"},
            )
            assert r.status_code == 200, r.text
        assert fake.requests_seen[-1].headers["x-request-id"] == "to-upstream"


def test_a_failing_handler_is_logged_with_its_traceback_not_answered_with_it(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway"):
        r = chat(server, "boom", headers={"x-request-id": "boom-1"})
        assert r.status_code == 500
        assert "Traceback" not in r.text and "boom.py" not in r.text
        assert r.json()["error"]["request_id"] == "boom-1"
        deadline = time.monotonic() + 5
        while not [x for x in caplog.records if x.exc_info] and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "handler bug" not in r.text
    # Logged once, by the router that saw the attempt fail; not again at the edge.
    failures = [x for x in caplog.records if x.exc_info]
    assert len(failures) == 1, [x.getMessage() for x in caplog.records]
    assert failures[0].name == "gateway.router"
    (failure,) = failures
    assert failure.levelno == logging.ERROR
    assert failure.exc_info is not None
    assert "handler bug" in str(failure.exc_info[1])
    # Tagged where it was logged, with the id the client got.
    assert failure.request_id == "boom-1"  # type: ignore[attr-defined]


def test_metrics_have_route_model_deployment_and_status(server: str) -> None:
    def read() -> dict[Any, float]:
        return samples(httpx.get(f"{server}/metrics").text)

    before = read()
    for _ in range(3):
        assert chat(server, "m").status_code == 200
    assert chat(server, "not-configured-xyz").status_code == 404
    with httpx.stream(
        "POST",
        f"{server}/v1/chat/completions",
        json={"model": "m", "messages": USER, "stream": True},
        headers=AUTH,
    ) as r:
        r.read()
    assert chat(server, "down").status_code == 503
    after = read()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    chat_m = {"route": "chat_completions", "model_group": "m", "deployment": "m/0"}
    assert delta("gateway_requests_total", **chat_m, status="200") == 4
    unknown = {"route": "chat_completions", "model_group": "unknown", "deployment": ""}
    assert delta("gateway_requests_total", **unknown, status="404") == 1
    assert not [k for k in after if "not-configured-xyz" in str(k)]  # never a raw name
    duration = {"route": "chat_completions", "model_group": "m"}
    assert delta("gateway_request_duration_seconds_count", **duration) == 4
    assert delta("gateway_overhead_seconds_count", route="chat_completions") == 6
    where = {"model_group": "m", "deployment": "m/0"}
    # mock_response answers report 10 prompt and 20 completion tokens.
    assert delta("gateway_tokens_total", **where, direction="input") >= 30
    assert delta("gateway_tokens_total", **where, direction="output") >= 60
    assert delta("gateway_time_to_first_token_seconds_count", **where) == 1
    assert delta("gateway_deployment_latency_seconds_count", **where) == 4
    assert after[("gateway_deployment_in_flight", tuple(sorted(where.items())))] == 0
    # The failed call on `down`: an upstream error by class, and a cooldown.
    errors = [
        k
        for k in after
        if k[0] == "gateway_upstream_errors_total" and ("model_group", "down") in k[1]
    ]
    assert errors and all(("error", "ServiceUnavailableError") in k[1] for k in errors)
    cooldowns = [
        v
        for k, v in after.items()
        if k[0] == "gateway_router_events_total" and ("event", "cooldown") in k[1]
    ]
    assert sum(cooldowns) >= 1


def test_router_state_shows_a_cooldown(server: str) -> None:
    assert chat(server, "down").status_code in (503, 429)
    assert httpx.get(f"{server}/router/state").status_code == 401
    r = httpx.get(f"{server}/router/state", headers=AUTH)
    assert r.status_code == 200
    by_id = {d["deployment"]: d for d in r.json()["deployments"]}
    assert set(by_id) == {"m/0", "seen/1", "boom/2", "down/3", "down/4"}
    cooling = [d for d in by_id.values() if d["cooling_down_until"] is not None]
    assert cooling and {d["model_group"] for d in cooling} == {"down"}
    for d in cooling:
        assert 0 < d["cooldown_remaining_s"] <= 60
        assert d["cooling_down_until"] > time.time()
    assert by_id["m/0"]["in_flight"] == 0
    assert by_id["m/0"]["cooling_down_until"] is None
    assert by_id["m/0"]["latency_mean_s"] is not None


def test_metrics_auth_asks_for_the_master_key() -> None:
    with serve_in_thread(create_app(config(metrics_auth=True))) as handle:
        assert httpx.get(f"{handle.url}/metrics").status_code == 401
        assert (
            httpx.get(f"{handle.url}/metrics", headers={"Authorization": "Bearer x"}).status_code
            == 401
        )
        r = httpx.get(f"{handle.url}/metrics", headers=AUTH)
        assert r.status_code == 200 and "gateway_requests_total" in r.text


def test_metrics_and_request_ids_can_be_switched_off() -> None:
    app = create_app(config(metrics=False, request_ids=False))
    with serve_in_thread(app) as handle:
        r = chat(handle.url, "m", headers={"x-request-id": "mine"})
        assert r.status_code == 200 and "x-request-id" not in r.headers
        assert httpx.get(f"{handle.url}/metrics", headers=AUTH).status_code == 404
        r = chat(handle.url, "nope", headers={"x-request-id": "err-1"})
        assert r.status_code == 404 and "x-request-id" not in r.headers
        assert "request_id" not in r.json()["error"]
        SEEN.headers.clear()
        assert chat(handle.url, "seen", headers={"x-request-id": "x"}).status_code == 200
        assert SEEN.headers == [{}]  # nothing passed on (the handler gets the headers it had)
        r = chat(handle.url, "boom")
        assert r.status_code == 500 and "Traceback" not in r.text
    # Nothing counted: no record was made.
    assert app.runtime.metrics.series == {} and app.runtime.metrics.in_flight == 0

    # Either alone: ids without metrics, metrics without ids.
    with serve_in_thread(create_app(config(metrics=False))) as handle:
        assert chat(handle.url, "m", headers={"x-request-id": "kept"}).headers["x-request-id"] == (
            "kept"
        )
        assert httpx.get(f"{handle.url}/metrics", headers=AUTH).status_code == 404
    with serve_in_thread(create_app(config(request_ids=False))) as handle:
        assert "x-request-id" not in chat(handle.url, "m").headers
        text = httpx.get(f"{handle.url}/metrics").text
        assert 'model_group="m"' in text and 'status="200"' in text
