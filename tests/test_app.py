"""The HTTP app served by a real uvicorn on loopback: errors, auth, streaming, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

import gateway
from gateway import CustomLLM, CustomLLMError
from gateway.app import create_app
from tests.fake_upstream import serve_in_thread

MASTER_KEY = "sk-test-1234"


class Recorder:
    """What handlers saw, shared with the test thread."""

    def __init__(self) -> None:
        self.finally_ran = threading.Event()
        self.closed = threading.Event()
        self.kwargs: dict[str, Any] = {}
        self.pulled = 0


REC = Recorder()


class Running:
    """Handler calls in progress. The server outlives each test, so a test starts only
    once every call of the test before it has ended: no call can write into the next
    test's recorder, and a call a test leaves running fails that test."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> Recorder:
        with self._changed:
            self.now += 1
            self.peak = max(self.peak, self.now)
        return REC  # the recorder of the test that made the call

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self.now -= 1
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.now == 0, timeout)


RUNNING = Running()


class EchoLLM(CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> gateway.ModelResponse:
        with RUNNING as rec:
            rec.kwargs = kwargs
        return gateway.completion(
            model="x", mock_response="echo: " + kwargs["messages"][-1]["content"]
        )

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        for word in ["one ", "two ", "three"]:
            yield {
                "text": word,
                "is_finished": False,
                "finish_reason": "",
                "index": 0,
                "tool_use": None,
                "usage": None,
            }
        yield {
            "text": "",
            "is_finished": True,
            "finish_reason": "stop",
            "index": 0,
            "tool_use": None,
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        }


class SlowLLM(CustomLLM):
    """Hangs until cancelled; records that its ``finally`` ran."""

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        with RUNNING as rec:
            try:
                await asyncio.sleep(30)
            finally:
                rec.finally_ran.set()

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        with RUNNING as rec:
            try:
                for i in range(300):
                    yield f"tick {i} "
                    await asyncio.sleep(0.1)
            finally:
                rec.finally_ran.set()


class StallingLLM(CustomLLM):
    """Streams two chunks, then stalls until cancelled."""

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        with RUNNING as rec:
            try:
                yield "first "
                await asyncio.sleep(0.2)
                yield "second "
                await asyncio.sleep(30)
                yield "never"
            finally:
                rec.finally_ran.set()


class PacedLLM(CustomLLM):
    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        for i in range(5):
            await asyncio.sleep(0.1)
            yield f"chunk{i} "


class SyncStreamLLM(CustomLLM):
    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        with RUNNING as rec:
            try:
                for i in range(1000):
                    rec.pulled = i
                    time.sleep(0.05)
                    yield f"s{i} "
            finally:
                rec.closed.set()


class SleepySyncLLM(CustomLLM):
    def completion(self, *args: Any, **kwargs: Any) -> gateway.ModelResponse:
        with RUNNING:
            time.sleep(0.2)
        return gateway.completion(model="x", mock_response="slept")


class FailingLLM(CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        raise CustomLLMError(status_code=429, message="slow down")


class CrashingLLM(CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("the backend exploded")

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        yield "partial "
        raise ValueError("died mid-stream")


class MediaLLM(CustomLLM):
    async def aimage_generation(
        self,
        model: str,
        prompt: str,
        model_response: Any,
        optional_params: dict,
        logging_obj: Any,
        timeout: Any = None,
        client: Any = None,
    ) -> gateway.ImageResponse:
        with RUNNING as rec:
            rec.kwargs = {"prompt": prompt, "optional_params": optional_params}
        return gateway.ImageResponse(data=[gateway.ImageObject(url="https://example.com/i.png")])

    async def aembedding(self, *args: Any, **kwargs: Any) -> Any:
        inputs = kwargs["input"] if isinstance(kwargs["input"], list) else [kwargs["input"]]
        return [[float(len(str(text))), 1.0] for text in inputs]


HANDLERS = {
    "echo": EchoLLM(),
    "slow": SlowLLM(),
    "paced": PacedLLM(),
    "stalling": StallingLLM(),
    "syncstream": SyncStreamLLM(),
    "sleepy": SleepySyncLLM(),
    "failing": FailingLLM(),
    "crashing": CrashingLLM(),
    "media": MediaLLM(),
}


def config(master_key: str | None = None, **settings: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "model_list": [
            {"model_name": name, "litellm_params": {"model": f"{name}/m", "custom_key": 7}}
            for name in HANDLERS
        ],
        "litellm_settings": {
            "custom_provider_map": [
                {"provider": name, "custom_handler": handler} for name, handler in HANDLERS.items()
            ]
        },
        "gateway_settings": {"max_request_body_bytes": 4096, **settings},
    }
    if master_key:
        data["general_settings"] = {"master_key": master_key}
    return data


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(create_app(config()), loop="uvloop", http="httptools") as handle:
        yield handle.url


@pytest.fixture(scope="module")
def auth_server() -> Iterator[str]:
    with serve_in_thread(create_app(config(MASTER_KEY))) as handle:
        yield handle.url


@pytest.fixture(autouse=True)
def _recorder_per_test() -> Iterator[None]:
    global REC
    assert RUNNING.wait_idle(10), "a handler call of an earlier test is still running"
    REC = Recorder()
    RUNNING.peak = 0
    yield
    assert RUNNING.wait_idle(10), "a handler call outlived its test"


def chat(model: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def sse_events(text: str) -> list[Any]:
    events = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else msgspec.json.decode(data))
    return events


# Answers


def test_chat_completion_stamps_model_name_and_passes_params(server: str) -> None:
    body = chat("echo", temperature=0.2, max_tokens=5, my_extra={"a": 1})
    r = httpx.post(f"{server}/v1/chat/completions", json=body)
    assert r.status_code == 200
    data = r.json()
    assert data["model"] == "echo"
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {
        "content": "echo: hi",
        "role": "assistant",
        "tool_calls": None,
        "function_call": None,
    }
    assert r.headers["x-gateway-deployment"].startswith("echo")
    assert REC.kwargs["optional_params"] == {
        "temperature": 0.2,
        "max_tokens": 5,
        "my_extra": {"a": 1},
    }
    assert REC.kwargs["litellm_params"]["custom_key"] == 7
    assert REC.kwargs["model"] == "m"


def test_routes_without_v1_prefix(server: str) -> None:
    assert httpx.post(f"{server}/chat/completions", json=chat("echo")).status_code == 200
    assert httpx.get(f"{server}/models").json()["data"][0]["object"] == "model"


def test_models_and_health(server: str) -> None:
    models = httpx.get(f"{server}/v1/models").json()
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} == set(HANDLERS)
    assert httpx.get(f"{server}/health/liveliness").status_code == 200
    assert httpx.get(f"{server}/health/readiness").json()["status"] == "healthy"


def test_stream_sse_shape(server: str) -> None:
    body = chat("echo", stream=True, stream_options={"include_usage": True})
    r = httpx.post(f"{server}/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "one two three"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert all(c["model"] == "echo" for c in chunks)


def test_images_and_embeddings(server: str) -> None:
    r = httpx.post(
        f"{server}/v1/images/generations",
        json={"model": "media", "prompt": "an otter", "size": "256x256", "n": 1},
    )
    assert r.status_code == 200
    assert r.json()["data"] == [{"url": "https://example.com/i.png"}]
    assert REC.kwargs["optional_params"] == {"size": "256x256", "n": 1}
    r = httpx.post(f"{server}/v1/embeddings", json={"model": "media", "input": ["ab", "abcd"]})
    assert r.status_code == 200
    data = r.json()
    assert data["model"] == "media"
    assert [d["embedding"] for d in data["data"]] == [[2.0, 1.0], [4.0, 1.0]]


# Errors: status, OpenAI shape, the field named


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    # OpenAI's four fields, and the request's id (also in the x-request-id header).
    assert set(error) == {"message", "type", "param", "code", "request_id"}
    assert error["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "echo"}, "messages"),
        ({"model": 5, "messages": []}, "model"),
        ({"model": "echo", "messages": "hello"}, "messages"),
        ({"model": "echo", "messages": [], "temperature": "hot"}, "temperature"),
        ({"model": "echo", "messages": [{"content": "no role"}]}, "messages[0].role"),
    ],
)
def test_bad_chat_bodies_name_the_field(server: str, body: dict[str, Any], param: str) -> None:
    error = error_of(httpx.post(f"{server}/v1/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_missing_prompt_and_input(server: str) -> None:
    r = httpx.post(f"{server}/v1/images/generations", json={"model": "media"})
    assert error_of(r, 400)["param"] == "prompt"
    r = httpx.post(f"{server}/v1/embeddings", json={"model": "media"})
    assert error_of(r, 400)["param"] == "input"


def test_malformed_json(server: str) -> None:
    r = httpx.post(f"{server}/v1/chat/completions", content=b'{"model": "echo",')
    assert "not valid JSON" in error_of(r, 400)["message"]
    r = httpx.post(f"{server}/v1/chat/completions", content=b"[1, 2]")
    assert "JSON object" in error_of(r, 400)["message"]


def test_unknown_model_is_404(server: str) -> None:
    error = error_of(httpx.post(f"{server}/v1/chat/completions", json=chat("nope")), 404)
    assert error["code"] == "model_not_found"
    stream = httpx.post(f"{server}/v1/chat/completions", json=chat("nope", stream=True))
    assert error_of(stream, 404)["code"] == "model_not_found"


def test_body_over_limit_is_413(server: str) -> None:
    r = httpx.post(f"{server}/v1/chat/completions", json=chat("echo", "x" * 5000))
    error_of(r, 413)

    def chunks() -> Iterator[bytes]:  # no content-length: the limit holds while reading
        yield b'{"model": "echo", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    error_of(httpx.post(f"{server}/v1/chat/completions", content=chunks()), 413)


def test_wrong_method_is_405(server: str) -> None:
    r = httpx.get(f"{server}/v1/chat/completions")
    error_of(r, 405)
    assert r.headers["allow"] == "POST"
    error_of(httpx.post(f"{server}/v1/models"), 405)


def test_unknown_path_is_404(server: str) -> None:
    error_of(httpx.get(f"{server}/v1/nothing-here"), 404)


def test_custom_llm_error_keeps_status(server: str) -> None:
    error = error_of(httpx.post(f"{server}/v1/chat/completions", json=chat("failing")), 429)
    assert error["message"] == "slow down"
    assert error["type"] == "rate_limit_error"


def test_handler_crash_is_500_without_its_text(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = httpx.post(f"{server}/v1/chat/completions", json=chat("crashing"))
    error = error_of(r, 500)
    rid = r.headers["x-request-id"]
    assert error["message"] == f"Internal server error (request id {rid})"
    assert "exploded" not in r.text
    # The process survived and still serves.
    assert httpx.post(f"{server}/v1/chat/completions", json=chat("echo")).status_code == 200


def test_error_after_stream_started_is_an_sse_event(server: str) -> None:
    r = httpx.post(f"{server}/v1/chat/completions", json=chat("crashing", stream=True))
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[0]["choices"][0]["delta"]["content"] == "partial "
    assert events[-1]["error"]["message"].startswith("Internal server error (request id ")
    assert "died" not in r.text
    assert "[DONE]" not in events


# Auth


def test_auth_required_with_master_key(auth_server: str) -> None:
    url = f"{auth_server}/v1/chat/completions"
    error = error_of(httpx.post(url, json=chat("echo")), 401)
    assert error["type"] == "authentication_error"
    error_of(httpx.post(url, json=chat("echo"), headers={"Authorization": "Bearer wrong"}), 401)
    error_of(httpx.get(f"{auth_server}/v1/models"), 401)
    for headers in (
        {"Authorization": f"Bearer {MASTER_KEY}"},
        {"api-key": MASTER_KEY},
        {"x-api-key": MASTER_KEY},
    ):
        assert httpx.post(url, json=chat("echo"), headers=headers).status_code == 200
    # Health needs no key.
    assert httpx.get(f"{auth_server}/health/liveliness").status_code == 200
    assert httpx.get(f"{auth_server}/health/readiness").status_code == 200


def test_no_auth_without_master_key(server: str) -> None:
    r = httpx.post(
        f"{server}/v1/chat/completions",
        json=chat("echo"),
        headers={"Authorization": "Bearer anything"},
    )
    assert r.status_code == 200


def test_include_usage_reports_only_what_the_handler_reported(server: str) -> None:
    url = f"{server}/v1/chat/completions"
    options = {"stream_options": {"include_usage": True}}
    # "paced" yields plain strings: no usage to report, so no usage chunk of zeros.
    events = sse_events(httpx.post(url, json=chat("paced", stream=True, **options)).text)
    assert events[-1] == "[DONE]"
    assert all(e["choices"] and e["usage"] is None for e in events[:-1])
    # "echo" reports 3/3/6: the last chunk carries it, as OpenAI sends it.
    events = sse_events(httpx.post(url, json=chat("echo", stream=True, **options)).text)
    assert events[-2]["choices"] == []
    assert events[-2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


# Timeouts, cancellation, timing, concurrency


def test_request_timeout_cancels_handler(server: str) -> None:
    started = time.monotonic()
    r = httpx.post(f"{server}/v1/chat/completions", json=chat("slow", timeout=0.3))
    assert error_of(r, 408)["type"] == "timeout_error"
    assert time.monotonic() - started < 5
    assert REC.finally_ran.wait(2)


def test_timeout_header(server: str) -> None:
    r = httpx.post(
        f"{server}/v1/chat/completions", json=chat("slow"), headers={"x-gateway-timeout": "0.2"}
    )
    error_of(r, 408)


def test_stalled_stream_times_out_between_chunks(server: str) -> None:
    # The timeout bounds each wait for a chunk: 0.2 s gaps pass under 0.5 s, a stall fails.
    started = time.monotonic()
    r = httpx.post(f"{server}/v1/chat/completions", json=chat("stalling", stream=True, timeout=0.5))
    assert r.status_code == 200
    events = sse_events(r.text)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "first second "
    assert events[-1]["error"]["type"] == "timeout_error"
    assert time.monotonic() - started < 5
    assert REC.finally_ran.wait(2)


def test_request_timeout_bounds_the_whole_stream(server: str) -> None:
    # A tick every 0.1 s never trips the wait between chunks; the request's own 0.5 s
    # bounds the whole stream, which ends with an SSE error event.
    r = httpx.post(f"{server}/v1/chat/completions", json=chat("slow", stream=True, timeout=0.5))
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1]["error"]["type"] == "timeout_error"
    assert events[-1]["error"]["message"] == "Request timed out after 0.5 s"
    ticks = [e["choices"][0]["delta"].get("content") for e in events[:-1] if e.get("choices")]
    assert 1 <= len([t for t in ticks if t]) < 300
    assert not r.text.endswith("data: [DONE]\n\n")
    assert REC.finally_ran.wait(2)


def test_timeout_header_bounds_the_whole_stream(server: str) -> None:
    r = httpx.post(
        f"{server}/v1/chat/completions",
        json=chat("slow", stream=True),
        headers={"x-gateway-timeout": "0.5"},
    )
    assert sse_events(r.text)[-1]["error"]["type"] == "timeout_error"
    assert REC.finally_ran.wait(2)


@pytest.mark.parametrize("bad", ["-1", "0", "nan", "inf", "soon"])
def test_bad_timeouts_are_400(server: str, bad: str) -> None:
    r = httpx.post(
        f"{server}/v1/chat/completions", json=chat("echo"), headers={"x-gateway-timeout": bad}
    )
    assert error_of(r, 400)["param"] == "timeout"
    body = chat("echo", timeout=float(bad) if bad not in ("nan", "inf", "soon") else -5)
    assert error_of(httpx.post(f"{server}/v1/chat/completions", json=body), 400)["param"] == (
        "timeout"
    )


def test_disconnect_cancels_waiting_handler(server: str) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/chat/completions", json=chat("slow"), timeout=0.3)
    assert REC.finally_ran.wait(2), "the handler was not cancelled when the client left"


def test_disconnect_mid_stream_cancels_async_generator(server: str) -> None:
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=chat("slow", stream=True)) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and "tick 2" in line:
                break
    assert REC.finally_ran.wait(2), "the handler's generator was not closed"


def test_disconnect_mid_stream_closes_sync_iterator(server: str) -> None:
    body = chat("syncstream", stream=True)
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if "s3 " in line:
                break
    assert REC.closed.wait(3), "the sync iterator was not closed"
    pulled = REC.pulled
    time.sleep(0.3)
    assert REC.pulled <= pulled + 1, "the sync iterator kept being pulled"


def test_chunks_arrive_as_they_are_made(server: str) -> None:
    arrivals = []
    started = time.monotonic()
    body = chat("paced", stream=True)
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content":"chunk' in line:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 5
    # A handler yielding every 100 ms is seen every ~100 ms, not all at the end.
    assert arrivals[-1] - arrivals[0] > 0.25
    assert arrivals[0] < arrivals[-1] - 0.25


async def test_concurrent_sync_handlers_do_not_block(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=chat("sleepy")) for _ in range(50))
        )
    assert all(r.status_code == 200 for r in responses)
    assert all(r.json()["choices"][0]["message"]["content"] == "slept" for r in responses)
    # Blocking sync handlers ran side by side on worker threads, not one at a time on
    # the event loop (how fast is for benchmarks/, scenario chat_sync).
    assert RUNNING.peak >= 10, RUNNING.peak


def test_deployment_mock_response_answers_without_the_provider() -> None:
    # LiteLLM configs mock a deployment with litellm_params.mock_response, whatever
    # the provider (registered or not): it answers, and nothing is called.
    data = {
        "model_list": [
            {
                "model_name": "mocked",
                "litellm_params": {"model": "unregistered-llm/x", "mock_response": "canned"},
            },
            {"model_name": "echo", "litellm_params": {"model": "echo/m", "mock_response": "no"}},
        ],
        "litellm_settings": {
            "custom_provider_map": [{"provider": "echo", "custom_handler": EchoLLM()}]
        },
    }
    with serve_in_thread(create_app(data)) as handle:
        for model, text in (("mocked", "canned"), ("echo", "no")):
            r = httpx.post(f"{handle.url}/v1/chat/completions", json=chat(model))
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == text
            assert r.json()["model"] == model
            stream = httpx.post(f"{handle.url}/v1/chat/completions", json=chat(model, stream=True))
            assert text in "".join(
                e["choices"][0]["delta"].get("content") or ""
                for e in sse_events(stream.text)[:-1]
                if e["choices"]
            )
    assert REC.kwargs == {}  # the echo handler was never called
