"""Callbacks (LiteLLM's CustomLogger) on a live gateway and in the library."""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import gateway
from gateway import _callbacks_library as callbacks_module
from gateway.app import create_app
from gateway.config import ConfigError, load_config
from gateway.integrations.custom_logger import CustomLogger
from tests.fake_upstream import FakeUpstream, run_fake_upstream, serve_in_thread

AUTH = {"Authorization": "Bearer sk-cb"}

# A LiteLLM proxy callback module, as LiteLLM's docs write it, with only `litellm` ->
# `gateway` in its imports. It records what it sees for the tests.
CALLBACK_MODULE = '''
import asyncio
import threading
import time
from typing import Literal

from fastapi import HTTPException

from gateway.caching.dual_cache import DualCache
from gateway.integrations.custom_logger import CustomLogger
from gateway.proxy._types import UserAPIKeyAuth


class MyCustomHandler(CustomLogger):
    def __init__(self):
        super().__init__()
        self.events = []
        self.arrived = threading.Event()
        self.hook_calls = []

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.events.append(("success", kwargs, response_obj, start_time, end_time))
        self.arrived.set()

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self.events.append(("failure", kwargs, response_obj, start_time, end_time))
        self.arrived.set()

    async def async_pre_call_hook(
        self,
        user_api_key_dict: UserAPIKeyAuth,
        cache: DualCache,
        data: dict,
        call_type: Literal["completion", "embeddings", "image_generation"],
    ):
        self.hook_calls.append(("pre", call_type, type(user_api_key_dict).__name__))
        await cache.async_set_cache("last_model", data.get("model"))
        if data.get("model") == "alias":
            data["model"] = "m"
            data["messages"] = [{"role": "system", "content": "be brief"}, *data["messages"]]
            return data
        if data.get("model") == "forbidden":
            raise HTTPException(status_code=403, detail={"error": "blocked by policy"})
        if data.get("model") == "broken":
            raise ValueError("no such thing")
        return data

    async def async_post_call_success_hook(self, data, user_api_key_dict, response):
        self.hook_calls.append(("post", data["model"], response.choices[0].message.content))
        if data.get("metadata", {}).get("replace"):
            response.choices[0].message.content = "replaced by hook"
        return response


class SlowHandler(CustomLogger):
    """Sleeps 2 s in every event (``seconds``), async or on its thread; ``release`` ends
    the sleep early, so a test that must hold the callback busy sets a long ``seconds``
    without depending on how fast a loaded machine sends its next requests."""

    def __init__(self, sync):
        super().__init__()
        self.sync = sync
        self.seconds = 2.0
        self.entered = threading.Event()
        self.finished = threading.Event()
        self.release = threading.Event()

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.entered.set()
        self.release.wait(self.seconds)
        self.finished.set()


class AsyncSlowHandler(SlowHandler):
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.entered.set()
        deadline = time.monotonic() + self.seconds
        while not self.release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.finished.set()


class Crashing(CustomLogger):
    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        raise RuntimeError("sync callback crashed")

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        raise RuntimeError("async callback crashed")


proxy_handler_instance = MyCustomHandler()
slow_sync = SlowHandler(sync=True)
slow_async = AsyncSlowHandler(sync=False)
crashing = Crashing()
not_a_callback = object()
'''


def _config(tmp_path: Path, upstream: FakeUpstream, callbacks: list[str], **settings: Any) -> Path:
    module = tmp_path / "cb_handlers.py"
    module.write_text(CALLBACK_MODULE)
    listed = "\n".join(f"    - cb_handlers.{name}" for name in callbacks)
    gateway_settings = "".join(f"\n  {k}: {v}" for k, v in settings.items())
    path = tmp_path / "config.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            model_list:
              - model_name: m
                litellm_params:
                  model: openai/fake-model
                  api_base: {upstream.base_url}
                  api_key: sk-upstream
                model_info:
                  id: m-one
                  input_cost_per_token: 0.001
                  output_cost_per_token: 0.002
            general_settings:
              master_key: sk-cb
            """
        )
        + f"litellm_settings:\n  callbacks:\n{listed}\n"
        + (f"gateway_settings:{gateway_settings}\n" if settings else "")
    )
    return path


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with run_fake_upstream() as fake:
        yield fake


def _serve(path: Path) -> Any:
    app = create_app(path)
    return app, serve_in_thread(app)


def _chat(url: str, model: str = "m", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=10)


def _wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "callback event never arrived"
        time.sleep(0.01)


def test_success_and_failure_events_carry_litellms_fields(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    app, serving = _serve(_config(tmp_path, upstream, ["proxy_handler_instance"]))
    handler = app.runtime.callbacks.callbacks[0]
    with serving as server:
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={
                "model": "m",
                "messages": [{"role": "user", "content": "hello there"}],
                "temperature": 0.5,
                "metadata": {"team": "blue"},
            },
            headers={**AUTH, "x-request-id": "req-123"},
        )
        assert r.status_code == 200
        _wait(lambda: len(handler.events) == 1)
        kind, kwargs, response, start, end = handler.events[0]
        assert kind == "success"
        assert kwargs["model"] == "fake-model" or kwargs["model"] == "openai/fake-model"
        assert kwargs["messages"] == [{"role": "user", "content": "hello there"}]
        assert kwargs["optional_params"]["temperature"] == 0.5
        assert kwargs["litellm_params"]["metadata"]["team"] == "blue"
        assert kwargs["litellm_call_id"]
        assert response.choices[0].message.content == r.json()["choices"][0]["message"]["content"]
        assert start <= end and start.__class__.__name__ == "datetime"
        slo = kwargs["standard_logging_object"]
        usage = r.json()["usage"]
        assert slo["id"] == kwargs["litellm_call_id"]
        assert slo["status"] == "success"
        assert slo["model_group"] == "m"
        assert slo["deployment"] == slo["model_id"] == "m-one"
        assert slo["api_base"] == upstream.base_url
        assert slo["request_id"] == "req-123"
        assert slo["metadata"]["user_api_key_alias"] is None  # the master key has no alias
        assert slo["prompt_tokens"] == usage["prompt_tokens"]
        assert slo["completion_tokens"] == usage["completion_tokens"]
        assert slo["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        cost = usage["prompt_tokens"] * 0.001 + usage["completion_tokens"] * 0.002
        assert slo["response_cost"] == pytest.approx(cost) == kwargs["response_cost"]
        assert slo["startTime"] <= slo["completionStartTime"] <= slo["endTime"]

        # A failing upstream: a failure event, with the error.
        r = _chat(server.url, fake={"status": 400, "message": "bad thing upstream"})
        assert r.status_code == 400
        _wait(lambda: len(handler.events) == 2)
        kind, kwargs, error, start, end = handler.events[1]
        assert kind == "failure"
        assert isinstance(error, gateway.GatewayError)
        slo = kwargs["standard_logging_object"]
        assert slo["status"] == "failure"
        assert "bad thing upstream" in slo["error_str"]
        assert slo["error_information"]["error_code"] == "400"
        assert kwargs["exception"] is error

        # A stream: one success event once it ended, the answer rebuilt from its chunks.
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json={
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            headers=AUTH,
        ) as r:
            body = r.read().decode()
        assert "[DONE]" in body
        _wait(lambda: len(handler.events) == 3)
        kind, kwargs, response, _, _ = handler.events[2]
        assert kind == "success"
        assert response.choices[0].message.content == "Hello from the fake upstream"
        slo = kwargs["standard_logging_object"]
        assert slo["stream"] is True
        assert slo["completion_tokens"] > 0
        assert slo["startTime"] <= slo["completionStartTime"] <= slo["endTime"]


def test_pre_call_hook_rewrites_and_rejects(tmp_path: Path, upstream: FakeUpstream) -> None:
    app, serving = _serve(_config(tmp_path, upstream, ["proxy_handler_instance"]))
    handler = app.runtime.callbacks.callbacks[0]
    with serving as server:
        r = _chat(server.url, model="alias")  # no such group: the hook renames it
        assert r.status_code == 200, r.text
        seen = upstream.requests_seen[-1].body
        assert seen["messages"][0] == {"role": "system", "content": "be brief"}
        assert ("pre", "completion", "UserAPIKeyAuth") in handler.hook_calls
        assert app.runtime.callbacks.cache.get_cache("last_model") == "alias"

        n = len(upstream.requests_seen)
        r = _chat(server.url, model="forbidden")
        assert r.status_code == 403
        assert r.json()["error"]["message"] == "blocked by policy"
        assert set(r.json()["error"]) == {"message", "type", "param", "code", "request_id"}
        r = _chat(server.url, model="broken")
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "no such thing"
        assert len(upstream.requests_seen) == n  # rejected before any upstream call


def test_post_call_hook_sees_and_replaces_the_response(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    app, serving = _serve(_config(tmp_path, upstream, ["proxy_handler_instance"]))
    handler = app.runtime.callbacks.callbacks[0]
    with serving as server:
        r = _chat(server.url)
        assert r.json()["choices"][0]["message"]["content"] == "Hello from the fake upstream"
        assert ("post", "m", "Hello from the fake upstream") in handler.hook_calls
        r = _chat(server.url, metadata={"replace": True})
        assert r.json()["choices"][0]["message"]["content"] == "replaced by hook"


@pytest.mark.parametrize("name", ["slow_sync", "slow_async"])
def test_a_slow_callback_does_not_slow_requests(
    tmp_path: Path, upstream: FakeUpstream, name: str
) -> None:
    app, serving = _serve(_config(tmp_path, upstream, [name]))
    slow = app.runtime.callbacks.callbacks[0]
    # Busy until released, not for 2 s: the four events then took 5 s to drain at shutdown.
    slow.seconds = 60
    try:
        with serving as server:
            assert _chat(server.url).status_code == 200
            assert slow.entered.wait(5)
            # The callback still sleeps; these requests are answered meanwhile.
            for _ in range(3):
                assert _chat(server.url).status_code == 200
            assert not slow.finished.is_set()
            assert httpx.get(f"{server.url}/health/liveliness").status_code == 200
            assert not slow.finished.is_set()
            slow.release.set()
    finally:
        slow.release.set()
        slow.seconds = 2.0
        slow.release.clear()


def test_a_crashing_callback_does_not_fail_requests(
    tmp_path: Path, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    app, serving = _serve(_config(tmp_path, upstream, ["crashing", "proxy_handler_instance"]))
    recorder = app.runtime.callbacks.callbacks[1]
    with serving as server:
        assert _chat(server.url).status_code == 200
        assert _chat(server.url, fake={"status": 400}).status_code == 400
        _wait(lambda: len(recorder.events) == 2)  # the next callback still ran, both times
        assert _chat(server.url).status_code == 200
    assert "callback Crashing.log_success_event failed" in caplog.text
    assert "callback Crashing.async_log_failure_event failed" in caplog.text


def test_a_full_queue_drops_and_counts(tmp_path: Path, upstream: FakeUpstream) -> None:
    app, serving = _serve(_config(tmp_path, upstream, ["slow_async"], callback_queue_size=1))
    slow = app.runtime.callbacks.callbacks[0]
    slow.seconds = 60  # busy until released: the three requests below may take a while
    try:
        with serving as server:
            assert _chat(server.url).status_code == 200
            assert slow.entered.wait(5)  # running: the queue is empty again
            for _ in range(3):  # one waits in the queue, two are dropped
                assert _chat(server.url).status_code == 200
            # Events are queued once each answer is out: the last may land just after.
            _wait(lambda: app.runtime.callbacks.dropped >= 2)
            assert app.runtime.callbacks.dropped == 2
            metrics = httpx.get(f"{server.url}/metrics").text
            assert "gateway_callback_events_dropped_total 2.0" in metrics
            slow.release.set()
    finally:
        slow.release.set()
        slow.seconds = 2.0
        slow.release.clear()


def _write(tmp_path: Path, callbacks: str) -> Path:
    (tmp_path / "cb_handlers.py").write_text(CALLBACK_MODULE)
    path = tmp_path / "config.yaml"
    path.write_text(f"model_list: []\nlitellm_settings:\n  callbacks: {callbacks}\n")
    return path


@pytest.mark.parametrize(
    ("listed", "key", "problem"),
    [
        ("[cb_handlers.nope]", "litellm_settings.callbacks[0]", "has no attribute 'nope'"),
        (
            "[cb_handlers.crashing, cb_handlers.slow_sycn]",
            "litellm_settings.callbacks[1]",
            "did you mean 'slow_sync'?",
        ),
        ("[no_such_module.handler]", "litellm_settings.callbacks[0]", "not found"),
        ("[cb_handlers.MyCustomHandler]", "litellm_settings.callbacks[0]", "is a class"),
        ("cb_handlers.not_a_callback", "litellm_settings.callbacks", "is not a callback"),
        ("[cb_handlers.]", "litellm_settings.callbacks[0]", "expected 'module.attribute'"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, listed: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, listed))
    assert info.value.key_path == key
    assert problem in str(info.value)


def test_litellm_builtin_callbacks_are_warned_about(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "[prometheus, cb_handlers.crashing]"))
    assert len(config.callbacks) == 1
    assert any("'prometheus' not supported" in w for w in config.warnings)


# -- the library ---------------------------------------------------------------------


class LibraryRecorder(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, dict[str, Any], Any]] = []
        self.lock = threading.Lock()

    def log_success_event(self, kwargs: Any, response_obj: Any, start: Any, end: Any) -> None:
        self.events.append(("sync", "success", kwargs, response_obj))

    def log_failure_event(self, kwargs: Any, response_obj: Any, start: Any, end: Any) -> None:
        self.events.append(("sync", "failure", kwargs, response_obj))

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start: Any, end: Any
    ) -> None:
        self.events.append(("async", "success", kwargs, response_obj))


@pytest.fixture
def recorder() -> Iterator[LibraryRecorder]:
    handler = LibraryRecorder()
    gateway.callbacks = [handler]
    try:
        yield handler
    finally:
        gateway.callbacks = []


async def test_library_calls_fire_callbacks(recorder: LibraryRecorder) -> None:
    response = gateway.completion(
        model="mock/a", messages=[{"role": "user", "content": "hi"}], mock_response="Hi!",
        metadata={"run": 1},
    )  # fmt: skip
    assert response.choices[0].message.content == "Hi!"
    await gateway.acompletion(model="mock/b", messages=[{"role": "user", "content": "x"}])
    chunks = [
        c
        async for c in await gateway.acompletion(
            model="mock/c", messages=[{"role": "user", "content": "x"}], stream=True
        )
    ]
    assert chunks
    with pytest.raises(gateway.GatewayError):
        gateway.completion(model="no-such-provider/x", messages=[{"role": "user", "content": "x"}])
    gateway.embedding(model="mock/e", input=["a"])
    router = gateway.Router([{"model_name": "g", "litellm_params": {"model": "mock/r"}}])
    await router.acompletion("g", [{"role": "user", "content": "x"}], mock_response="R")
    callbacks_module.flush()
    got = [(mode, kind, kwargs["model"]) for mode, kind, kwargs, _ in recorder.events]
    assert got == [
        ("sync", "success", "mock/a"),
        ("async", "success", "mock/b"),
        ("async", "success", "mock/c"),
        ("sync", "failure", "no-such-provider/x"),
        ("sync", "success", "mock/e"),
        ("async", "success", "g"),
    ]
    assert recorder.events[5][2]["standard_logging_object"]["model_group"] == "g"
    first = recorder.events[0][2]
    assert first["messages"] == [{"role": "user", "content": "hi"}]
    assert first["litellm_params"]["metadata"]["run"] == 1
    assert first["standard_logging_object"]["total_tokens"] == 30
    assert recorder.events[2][3].choices[0].message.content  # the stream, rebuilt
    assert isinstance(recorder.events[3][3], gateway.GatewayError)


def test_no_callbacks_no_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("logged without callbacks")

    monkeypatch.setattr(callbacks_module, "call_sync", fail)
    gateway.callbacks = []
    assert gateway.completion(model="mock/a", messages=[], mock_response="Hi!")
    gateway.callbacks = [LibraryRecorder()]
    try:
        with pytest.raises(AssertionError, match="logged without callbacks"):
            gateway.completion(model="mock/a", messages=[], mock_response="Hi!")
    finally:
        gateway.callbacks = []


class KeyRecorder(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.aliases: list[Any] = []
        self.events: list[dict[str, Any]] = []

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: Any, call_type: Any
    ) -> Any:
        self.aliases.append(user_api_key_dict.key_alias)
        return None

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start: Any, end: Any
    ) -> None:
        self.events.append(kwargs["standard_logging_object"])


async def test_virtual_keys_alias_reaches_hooks_and_events(tmp_path: Path) -> None:
    from tests.keys_fixtures import CHAT, MOCK_COST, bearer, generate, keys_config

    recorder = KeyRecorder()
    config = keys_config(f"sqlite:///{tmp_path}/gateway.db")
    config["litellm_settings"]["callbacks"] = [recorder]
    with serve_in_thread(create_app(config)) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            key = (await generate(client, key_alias="team-a"))["key"]
            r = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
            assert r.status_code == 200
            deadline = time.monotonic() + 5
            while not recorder.events and time.monotonic() < deadline:
                await anyio.sleep(0.01)
    assert recorder.aliases == ["team-a"]
    (slo,) = recorder.events
    assert slo["metadata"]["user_api_key_alias"] == "team-a"
    assert slo["metadata"]["user_api_key_hash"]  # the key's hash, never the key
    assert key not in str(slo)
    assert slo["response_cost"] == pytest.approx(MOCK_COST)


class InProcess(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []

    async def async_pre_call_hook(self, user: Any, cache: Any, data: Any, call_type: Any) -> Any:
        data["messages"][-1]["content"] = "rewritten"
        return data

    async def async_log_success_event(
        self, kwargs: Any, response: Any, start: Any, end: Any
    ) -> None:
        self.events.append((response.choices[0].message.content, kwargs["messages"][-1]["content"]))


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_app_on_asyncio_and_trio(anyio_backend: str) -> None:
    """On asyncio the app's own task runs the events; on trio (no asyncio loop to put
    a task on) the library's thread does. Hooks run in the request either way."""
    from tests.test_backends import Exchange, chat

    recorder = InProcess()
    app = create_app(
        {
            "model_list": [{"model_name": "m", "litellm_params": {"model": "mock/m"}}],
            "litellm_settings": {"callbacks": [recorder]},
        }
    )
    exchange = Exchange(chat("hi", mock_response="ok"))
    await exchange.run(app)
    assert exchange.status == 200
    with anyio.fail_after(5):
        while not recorder.events:
            callbacks_module.flush()
            await anyio.sleep(0.01)
    assert recorder.events == [("ok", "rewritten")]


class _Counts(CustomLogger):
    """Reads nothing it is given: its events build no kwargs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):  # type: ignore[no-untyped-def]
        self.calls += 1


class _ReadsEnd(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.ends: list[Any] = []

    def log_success_event(self, kwargs, response_obj, start_time, end_time):  # type: ignore[no-untyped-def]
        self.ends.append(end_time)


def test_only_what_a_logger_reads_is_built() -> None:
    from gateway._callbacks import Callbacks, reads

    counts, ends = _Counts(), _ReadsEnd()
    assert reads(counts.async_log_success_event) == (False, False, False, False)
    assert reads(ends.log_success_event) == (False, False, False, True)
    assert reads(lambda *args: None) == (True, True, True, True)  # can't tell: all
    assert Callbacks([counts, ends]).needs[True] == (False, False, False, True)

    config = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "mock/m"}}],
        "litellm_settings": {"callbacks": [counts, ends]},
    }
    with serve_in_thread(create_app(config)) as server:
        for stream in (False, True):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            r = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": stream})
            assert r.status_code == 200
        _wait(lambda: counts.calls == 2 and len(ends.ends) == 2)
    assert all(type(end).__name__ == "datetime" for end in ends.ends)


class _Outcomes(CustomLogger):
    """Reads none of its arguments: its requests are never watched, only counted."""

    def __init__(self) -> None:
        super().__init__()
        self.successes = 0
        self.failures = 0

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):  # type: ignore[no-untyped-def]
        self.successes += 1

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):  # type: ignore[no-untyped-def]
        self.failures += 1


def test_a_logger_that_reads_nothing_still_sees_each_outcome() -> None:
    outcomes = _Outcomes()
    config = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "mock/m"}}],
        "litellm_settings": {"callbacks": [outcomes]},
    }
    app = create_app(config)
    assert app.runtime.callbacks is not None and not app.runtime.callbacks.taps
    with serve_in_thread(app) as server:
        for stream in (False, True):
            for model, status in (("m", 200), ("nope", 404)):
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                r = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": stream})
                assert r.status_code == status, r.text
        _wait(lambda: outcomes.successes == 2 and outcomes.failures == 2)
        time.sleep(0.2)  # and no more than once each
    assert (outcomes.successes, outcomes.failures) == (2, 2)


def test_outcomes_only_a_counted_token_logs_nothing_unless_it_fails() -> None:
    # Loggers that read nothing share one request log (no per-request object): a request
    # that calls no model (count_tokens) still fires nothing, unless it fails.
    outcomes = _Outcomes()
    config = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "mock/m"}}],
        "litellm_settings": {"callbacks": [outcomes]},
    }
    app = create_app(config)
    assert app.runtime.callbacks is not None and app.runtime.callbacks.outcome is not None
    with serve_in_thread(app) as server:
        for model, status in (("m", 200), ("nope", 404), ("m", 200)):
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            r = httpx.post(f"{server.url}/v1/messages/count_tokens", json=body)
            assert r.status_code == status, r.text
        _wait(lambda: outcomes.failures == 1)
        time.sleep(0.2)  # and nothing else
    assert (outcomes.successes, outcomes.failures) == (0, 1)
