"""The router through the HTTP gateway: real uvicorn servers, the fake OpenAI upstream,
and the real CLI for graceful shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from gateway import CustomLLM, CustomLLMError, create_app
from gateway.config import ConfigError
from tests.fake_upstream import ServerHandle, run_fake_upstream, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent


def _chunk(text: str) -> dict[str, Any]:
    return {
        "text": text,
        "tool_use": None,
        "is_finished": False,
        "finish_reason": "",
        "usage": None,
        "index": 0,
    }


class Shared:
    """What the deployments of one test share: the first ``fail_first`` calls to any of
    them fail before their first chunk."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail_first = 0
        self.lock = threading.Lock()


class Flaky(CustomLLM):
    """Streams two chunks; see ``Shared``; with ``break_mid_stream`` every call fails
    after its first chunk."""

    def __init__(self, name: str, shared: Shared) -> None:
        self.name = name
        self.shared = shared
        self.calls = 0
        self.break_mid_stream = False

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        shared = self.shared
        with shared.lock:
            self.calls += 1
            shared.calls += 1
            n = shared.calls
        if n <= shared.fail_first:
            raise CustomLLMError(503, f"{self.name} is not ready")
        yield _chunk(f"{self.name} ")
        if self.break_mid_stream:
            raise CustomLLMError(500, f"{self.name} broke mid-stream")
        yield _chunk("done")

    async def acompletion(self, *args: Any, **kwargs: Any) -> str:
        await anyio.sleep(1.0)  # slow enough to fill every slot
        return self.name


def _config(handlers: dict[str, Any], groups: dict[str, list[str]], **router: Any) -> Any:
    model_list = [
        {"model_name": group, "litellm_params": {"model": f"{name}/m"}}
        for group, names in groups.items()
        for name in names
    ]
    return {
        "model_list": model_list,
        "litellm_settings": {
            "custom_provider_map": [
                {"provider": name, "custom_handler": h} for name, h in handlers.items()
            ]
        },
        "router_settings": router,
    }


def _events(text: str) -> list[Any]:
    return [
        line[6:] if line[6:] == "[DONE]" else msgspec.json.decode(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


@pytest.fixture
def flaky() -> dict[str, Flaky]:
    shared = Shared()
    return {"one": Flaky("one", shared), "two": Flaky("two", shared)}


@pytest.fixture
def served(flaky: dict[str, Flaky], request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    router = getattr(request, "param", {})
    app = create_app(_config(flaky, {"g": ["one", "two"]}, **router))
    with serve_in_thread(app, lifespan="on") as handle:
        yield handle


def _stream_body() -> dict[str, Any]:
    return {"model": "g", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.mark.parametrize("served", [{"num_retries": 1}], indirect=True)
def test_stream_failing_before_first_chunk_is_retried(
    served: ServerHandle, flaky: dict[str, Flaky]
) -> None:
    flaky["one"].shared.fail_first = 1
    r = httpx.post(f"{served.url}/v1/chat/completions", json=_stream_body())
    assert r.status_code == 200
    assert r.headers["x-gateway-attempts"] == "2"
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    served_by = events[0]["choices"][0]["delta"]["content"].strip()
    assert r.headers["x-gateway-deployment"] == ("g/0" if served_by == "one" else "g/1")
    # One deployment failed, the retry went to the other.
    assert flaky["one"].calls == flaky["two"].calls == 1


@pytest.mark.parametrize("served", [{"num_retries": 3}], indirect=True)
def test_stream_failing_after_first_chunk_ends_with_an_sse_error(
    served: ServerHandle, flaky: dict[str, Flaky]
) -> None:
    for h in flaky.values():
        h.break_mid_stream = True
    r = httpx.post(f"{served.url}/v1/chat/completions", json=_stream_body())
    assert r.status_code == 200
    assert r.headers["x-gateway-attempts"] == "1"
    events = _events(r.text)
    assert len(events) == 2
    assert events[0]["choices"][0]["delta"]["content"].strip() in ("one", "two")
    assert events[1]["error"]["message"].endswith("broke mid-stream")
    assert flaky["one"].calls + flaky["two"].calls == 1  # not retried


@pytest.mark.parametrize(
    "served",
    [{"default_max_parallel_requests": 1, "max_queue": 2, "queue_timeout": 0.3}],
    indirect=True,
)
async def test_overload_answers_429_with_retry_after_while_health_answers(
    served: ServerHandle,
) -> None:
    body = {"model": "g", "messages": [{"role": "user", "content": "hi"}]}
    statuses: list[httpx.Response] = []
    health: list[int] = []
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=served.url, timeout=10, limits=limits) as client:

        async def chat() -> None:
            statuses.append(await client.post("/v1/chat/completions", json=body))

        async def probe() -> None:
            # While every slot is taken and the queue sheds load, health still answers.
            await anyio.sleep(0.1)
            for _ in range(5):
                r = await client.get("/health/liveliness")
                health.append(r.status_code)
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(chat)
            tg.start_soon(probe)
    assert health == [200] * 5
    ok = [r for r in statuses if r.status_code == 200]
    shed = [r for r in statuses if r.status_code == 429]
    assert len(ok) == 2  # one slot per deployment
    assert len(shed) == 6
    for r in shed:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
    assert max(ok[0].elapsed.total_seconds(), ok[1].elapsed.total_seconds()) >= 0.9


def test_bad_router_settings_name_the_key(flaky: dict[str, Flaky]) -> None:
    with pytest.raises(ConfigError, match=r"router_settings\.num_retrys: unknown router setting"):
        create_app(_config(flaky, {"g": ["one"]}, num_retrys=2))
    with pytest.raises(ConfigError, match=r"router_settings\.fallbacks: no model group named"):
        create_app(_config(flaky, {"g": ["one"]}, fallbacks=[{"g": ["missing"]}]))


# -- with the fake OpenAI-compatible upstream ----------------------------------------------


def _upstream_deployment(group: str, base_url: str, fake: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_name": group,
        "litellm_params": {
            "model": "openai/fake-model",
            "api_base": base_url,
            "api_key": "sk-test",
            "extra_body": {"fake": fake},
        },
    }


def _chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_failed_upstream_is_retried_elsewhere_then_cooled_down() -> None:
    with run_fake_upstream() as upstream:
        config = {
            "model_list": [
                _upstream_deployment("g", upstream.base_url, {"status": 500, "message": "boom"}),
                _upstream_deployment("g", upstream.base_url, {"text": "healthy"}),
            ],
            "router_settings": {"num_retries": 1, "allowed_fails": 0, "cooldown_time": 60},
        }
        with serve_in_thread(create_app(config), lifespan="on") as gw:
            with httpx.Client(base_url=gw.url, timeout=10) as client:
                responses = [
                    client.post("/v1/chat/completions", json=_chat_body("g")) for _ in range(12)
                ]
        assert [r.status_code for r in responses] == [200] * 12
        assert {r.json()["choices"][0]["message"]["content"] for r in responses} == {"healthy"}
        assert {r.headers["x-gateway-deployment"] for r in responses} == {"g/1"}
        failed = [s for s in upstream.requests_seen if s.body.get("fake", {}).get("status")]
        # The broken deployment failed once and was then left alone (cooling down).
        assert len(failed) <= 1
        attempts = [r.headers["x-gateway-attempts"] for r in responses]
        assert attempts.count("2") == len(failed)


def test_upstream_429_retry_after_reaches_the_client() -> None:
    with run_fake_upstream() as upstream:
        config = {
            "model_list": [
                _upstream_deployment("g", upstream.base_url, {"status": 429, "retry_after": 30})
            ],
            "router_settings": {"num_retries": 2, "retry_backoff_max": 5},
        }
        with serve_in_thread(create_app(config), lifespan="on") as gw:
            r = httpx.post(f"{gw.url}/v1/chat/completions", json=_chat_body("g"))
        assert r.status_code == 429
        assert r.headers["retry-after"] == "30"
        # Retry-After (30 s) is longer than the router would wait: no retry.
        assert len(upstream.requests_seen) == 1


def test_upstream_retry_after_of_31700_years_cools_for_max_retry_after() -> None:
    with run_fake_upstream() as upstream:
        fake = {"status": 429, "retry_after": 1e12}
        config = {
            "model_list": [
                _upstream_deployment("g", upstream.base_url, fake),
                _upstream_deployment("g", upstream.base_url, fake),
            ],
        }
        with serve_in_thread(create_app(config), lifespan="on") as gw:
            with httpx.Client(base_url=gw.url, timeout=10) as client:
                first = [client.post("/v1/chat/completions", json=_chat_body("g")) for _ in "ab"]
                cooling = client.post("/v1/chat/completions", json=_chat_body("g"))
        assert [r.status_code for r in first] == [429, 429]
        # Both cool down, for the default max_retry_after (60 s), not for 1e12 s.
        assert cooling.status_code == 503
        assert cooling.json()["error"]["code"] == "deployments_cooling_down"
        assert cooling.headers["retry-after"] == "60"
        assert len(upstream.requests_seen) == 2


def test_fallbacks_over_http_in_order() -> None:
    with run_fake_upstream() as upstream:
        config = {
            "model_list": [
                _upstream_deployment("primary", upstream.base_url, {"status": 503}),
                _upstream_deployment("second", upstream.base_url, {"status": 502}),
                _upstream_deployment("third", upstream.base_url, {"text": "third answers"}),
            ],
            "router_settings": {"fallbacks": [{"primary": ["second", "third"]}]},
        }
        with serve_in_thread(create_app(config), lifespan="on") as gw:
            r = httpx.post(f"{gw.url}/v1/chat/completions", json=_chat_body("primary"))
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "third answers"
        assert r.json()["model"] == "primary"
        assert r.headers["x-gateway-deployment"] == "third/2"
        assert r.headers["x-gateway-attempts"] == "3"
        statuses = [s.body["fake"].get("status") for s in upstream.requests_seen]
        assert statuses == [503, 502, None]


def test_hedged_request_wins_on_the_fast_upstream_and_cancels_the_slow_one() -> None:
    with run_fake_upstream() as upstream:
        config = {
            "model_list": [
                _upstream_deployment("g", upstream.base_url, {"hang": True}),
                _upstream_deployment("g", upstream.base_url, {"text": "fast"}),
            ],
            # Weights make the hanging deployment the usual first pick.
            "router_settings": {"hedge_after_ms": {"g": 100}},
        }
        config["model_list"][0]["litellm_params"]["weight"] = 1000
        with serve_in_thread(create_app(config), lifespan="on") as gw:
            with httpx.Client(base_url=gw.url, timeout=10) as client:
                for _ in range(3):
                    r = client.post("/v1/chat/completions", json=_chat_body("g"))
                    assert r.status_code == 200
                    assert r.json()["choices"][0]["message"]["content"] == "fast"
                    assert r.headers["x-gateway-deployment"] == "g/1"
            hung = [s for s in upstream.requests_seen if s.body["fake"].get("hang")]
            assert hung
            deadline = time.monotonic() + 5
            while len(upstream.disconnects) < len(hung) and time.monotonic() < deadline:
                time.sleep(0.02)
            # Every slow attempt that lost was cancelled: the upstream saw it go away.
            assert len(upstream.disconnects) == len(hung)
            assert upstream.open_requests == 0


def test_per_request_timeout_header_cancels_a_hanging_upstream() -> None:
    with run_fake_upstream() as upstream:
        config = {"model_list": [_upstream_deployment("g", upstream.base_url, {"hang": True})]}
        with serve_in_thread(create_app(config), lifespan="on") as gw:
            r = httpx.post(
                f"{gw.url}/v1/chat/completions",
                json=_chat_body("g"),
                headers={"x-gateway-timeout": "0.2"},
            )
            assert r.status_code == 408
            deadline = time.monotonic() + 5
            while not upstream.disconnects and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(upstream.disconnects) == 1


# -- graceful shutdown through the real CLI ------------------------------------------------

HANDLER = """
import anyio
from gateway import CustomLLM


class Slow(CustomLLM):
    async def astreaming(self, *args, **kwargs):
        for i in range(8):
            await anyio.sleep(INTERVAL)
            yield {"text": f"t{i} ", "tool_use": None, "is_finished": False,
                   "finish_reason": "", "usage": None, "index": 0}


slow = Slow()
"""


def _start_cli(
    tmp_path: Path, graceful_timeout: float, interval: float
) -> tuple[subprocess.Popen[str], str]:
    """The CLI serving a stream of 8 chunks ``interval`` s apart."""
    handler = textwrap.dedent(HANDLER).replace("INTERVAL", repr(interval))
    (tmp_path / "slow_handler.py").write_text(handler)
    (tmp_path / "config.yaml").write_text(
        textwrap.dedent(
            f"""
            model_list:
              - model_name: slow
                litellm_params: {{model: slow/m}}
            litellm_settings:
              custom_provider_map:
                - {{provider: slow, custom_handler: slow_handler.slow}}
            gateway_settings:
              graceful_timeout: {graceful_timeout}
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "gateway", "--config", str(tmp_path / "config.yaml")]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    for line in proc.stdout:
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if found:
            return proc, found[1]
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError("the gateway did not start")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _stream_then_sigterm(proc: subprocess.Popen[str], url: str) -> tuple[list[str], float]:
    """Start a slow stream, send SIGTERM once its first chunk is in, read it to the end."""
    texts: list[str] = []
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=20) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        try:
            for line in lines:
                if line.startswith("data: "):
                    texts.append(line[6:])
                    if len(texts) == 1:
                        proc.send_signal(signal.SIGTERM)
                        signalled = time.monotonic()
        except httpx.HTTPError:
            pass  # cut by the server after graceful_timeout
    return texts, signalled


def test_graceful_shutdown_lets_a_running_stream_finish(tmp_path: Path) -> None:
    proc, url = _start_cli(tmp_path, graceful_timeout=10, interval=0.1)
    try:
        texts, _ = _stream_then_sigterm(proc, url)
        assert texts[-1] == "[DONE]"
        content = "".join(
            msgspec.json.decode(t)["choices"][0]["delta"].get("content") or ""
            for t in texts[:-1]
            if msgspec.json.decode(t)["choices"]
        )
        assert content == "".join(f"t{i} " for i in range(8))
        assert proc.wait(10) == 0
        # And it no longer accepts connections.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health/liveliness")
    finally:
        _stop(proc)


def test_graceful_shutdown_cancels_what_outlives_graceful_timeout(tmp_path: Path) -> None:
    # The stream outlasts the graceful timeout (0.2 s) by 1.2 s: slack for a loaded machine.
    proc, url = _start_cli(tmp_path, graceful_timeout=0.2, interval=0.2)
    try:
        texts, signalled = _stream_then_sigterm(proc, url)
        assert "[DONE]" not in texts  # the 1.6 s stream was cut
        assert proc.wait(10) == 0
        assert time.monotonic() - signalled < 8
    finally:
        _stop(proc)
