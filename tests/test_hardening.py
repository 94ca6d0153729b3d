"""What a client or a handler can get wrong, on a real uvicorn server on loopback:
errors are right (status, OpenAI shape) and seen (logged with a request id)."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from gateway import CustomLLM, CustomLLMError
from gateway.app import create_app
from tests.fake_upstream import serve_in_thread


class EchoLLM(CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        return {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}


SECRET = "password=hunter2"


class LeakyLLM(CustomLLM):
    """Fails with text nobody meant a client to read."""

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(f"connect to db failed: {SECRET}")

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        yield "partial "
        raise ValueError(f"stream died: {SECRET}")


class LeakySyncLLM(CustomLLM):
    def completion(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"sync failure: {SECRET}")


class ChosenLLM(CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        raise CustomLLMError(status_code=418, message="the handler chose this text")


class StatusLLM(CustomLLM):
    """Raises CustomLLMError with the status given as the message's content."""

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        status = int(kwargs["messages"][-1]["content"])
        raise CustomLLMError(status_code=status, message=f"status {status}")


BASE_EXCEPTIONS = {
    "exit": SystemExit,
    "interrupt": KeyboardInterrupt,
    "cancelled": asyncio.CancelledError,
}


class EscapingLLM(CustomLLM):
    """Raises a BaseException (not an Exception) named by the message's content."""

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        raise BASE_EXCEPTIONS[kwargs["messages"][-1]["content"]]()

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        yield "partial "
        raise BASE_EXCEPTIONS[kwargs["messages"][-1]["content"]]()


class EscapingSyncLLM(CustomLLM):
    def completion(self, *args: Any, **kwargs: Any) -> Any:
        raise BASE_EXCEPTIONS[kwargs["messages"][-1]["content"]]()


class NoneLLM(CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["model_response"].choices[0].message.content = "filled in, not returned"


class NoneSyncLLM(CustomLLM):
    def completion(self, *args: Any, **kwargs: Any) -> Any:
        return None


class HangingLLM(CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(60)


class EndlessLLM(CustomLLM):
    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        yield "first "
        await asyncio.sleep(60)
        yield "never"


HANDLERS: dict[str, Any] = {
    "echo": EchoLLM(),
    "leaky": LeakyLLM(),
    "leakysync": LeakySyncLLM(),
    "chosen": ChosenLLM(),
    "status": StatusLLM(),
    "escaping": EscapingLLM(),
    "escapingsync": EscapingSyncLLM(),
    "none": NoneLLM(),
    "nonesync": NoneSyncLLM(),
    "endless": EndlessLLM(),
    "hanging": HangingLLM(),
}


def config(**settings: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": name, "litellm_params": {"model": f"{name}/m"}} for name in HANDLERS
        ],
        "litellm_settings": {
            "custom_provider_map": [
                {"provider": name, "custom_handler": handler} for name, handler in HANDLERS.items()
            ]
        },
        "gateway_settings": settings,
    }


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    with serve_in_thread(create_app(config()), http=request.param) as handle:
        yield handle.url


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}
    assert error["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    return error


# -- bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("open_, close", [(b"[", b"]"), (b'{"a":', b"}")])
def test_deeply_nested_json_is_400(server: str, open_: bytes, close: bytes) -> None:
    depth = 100_000
    nested = open_ * depth + b"1" + close * depth
    body = b'{"model": "echo", "messages": [{"role": "user", "content": ' + nested + b"}]}"
    r = httpx.post(
        f"{server}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    error = error_of(r, 400)
    assert error["message"] == "Request body is nested too deeply"
    assert error["type"] == "invalid_request_error"
    ok = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert ok.status_code == 200


def chat(model: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def sse_events(text: str) -> list[Any]:
    events = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else msgspec.json.decode(data))
    return events


def metric(server: str, status: int) -> int:
    """Chat requests answered with ``status``, whatever the model and deployment."""
    text = httpx.get(f"{server}/metrics").text
    found = re.findall(
        rf'^gateway_requests_total{{[^}}]*route="chat_completions",status="{status}"}} (\S+)$',
        text,
        re.M,
    )
    return sum(int(float(n)) for n in found)


# -- unexpected exceptions: logged with a request id, never shown -----------------------

GENERIC = re.compile(r"Internal server error \(request id ([0-9a-f]{32})\)")


@pytest.mark.parametrize("model", ["leaky", "leakysync"])
def test_unexpected_error_is_generic_500_with_logged_request_id(
    server: str, model: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.app"):
        r = httpx.post(f"{server}/v1/chat/completions", json=chat(model))
    error = error_of(r, 500)
    assert SECRET not in r.text
    assert error["type"] == "internal_server_error"
    found = GENERIC.fullmatch(error["message"])
    assert found, error
    rid = found[1]
    assert r.headers["x-request-id"] == rid
    # Once, by whoever saw it (the router, for a failed call), tagged with the id.
    logged = [
        rec
        for rec in caplog.records
        if rid in rec.getMessage() or getattr(rec, "request_id", None) == rid
    ]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert SECRET in str(logged[0].exc_info[1])


def test_safe_incoming_request_id_is_kept_unsafe_replaced(server: str) -> None:
    url = f"{server}/v1/chat/completions"
    r = httpx.post(url, json=chat("leaky"), headers={"x-request-id": "req-42.a:b"})
    assert r.headers["x-request-id"] == "req-42.a:b"
    assert error_of(r, 500)["message"] == "Internal server error (request id req-42.a:b)"
    for unsafe in ("with space", "x" * 129, 'quote"d', ""):
        r = httpx.post(url, json=chat("leaky"), headers={"x-request-id": unsafe})
        assert GENERIC.fullmatch(error_of(r, 500)["message"]), unsafe
        assert r.headers["x-request-id"] != unsafe


def test_unexpected_error_mid_stream_is_generic(server: str) -> None:
    r = httpx.post(f"{server}/v1/chat/completions", json=chat("leaky", stream=True))
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[0]["choices"][0]["delta"]["content"] == "partial "
    assert GENERIC.fullmatch(events[-1]["error"]["message"])
    assert SECRET not in r.text


def test_custom_llm_error_text_passes_through(server: str) -> None:
    r = httpx.post(f"{server}/v1/chat/completions", json=chat("chosen"))
    assert error_of(r, 418)["message"] == "the handler chose this text"


# -- never a 2xx error; BaseExceptions are 500s ------------------------------------------


@pytest.mark.parametrize("status", [200, 204, 302, 399, 600, 0])
def test_custom_llm_error_with_a_non_error_status_is_500(server: str, status: int) -> None:
    r = httpx.post(f"{server}/v1/chat/completions", json=chat("status", str(status)))
    error = error_of(r, 500)
    assert error["message"] == f"status {status}"
    assert error["type"] == "internal_server_error"


@pytest.mark.parametrize("name", sorted(BASE_EXCEPTIONS))
@pytest.mark.parametrize("model", ["escaping", "escapingsync"])
def test_base_exception_from_handler_is_500(server: str, name: str, model: str) -> None:
    before = metric(server, 500)
    r = httpx.post(f"{server}/v1/chat/completions", json=chat(model, name))
    error = error_of(r, 500)
    assert GENERIC.fullmatch(error["message"])
    assert metric(server, 500) == before + 1
    # The server is still up.
    assert httpx.post(f"{server}/v1/chat/completions", json=chat("echo")).status_code == 200


@pytest.mark.parametrize("name", sorted(BASE_EXCEPTIONS))
def test_base_exception_mid_stream_is_an_sse_error_counted_500(server: str, name: str) -> None:
    before = metric(server, 500)
    r = httpx.post(f"{server}/v1/chat/completions", json=chat("escaping", name, stream=True))
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[0]["choices"][0]["delta"]["content"] == "partial "
    assert GENERIC.fullmatch(events[-1]["error"]["message"])
    assert "[DONE]" not in events
    assert metric(server, 500) == before + 1
    assert httpx.post(f"{server}/v1/chat/completions", json=chat("echo")).status_code == 200


# -- a handler that returns nothing; a stream cut on shutdown ----------------------------


@pytest.mark.parametrize(
    ("model", "method", "cls"),
    [("none", "acompletion", "NoneLLM"), ("nonesync", "completion", "NoneSyncLLM")],
)
def test_handler_returning_none_is_502_naming_it(
    server: str, model: str, method: str, cls: str
) -> None:
    r = httpx.post(f"{server}/v1/chat/completions", json=chat(model))
    error = error_of(r, 502)
    assert error["message"] == (
        f"handler {cls}.{method} of provider {model!r} returned None, expected a chat completion"
    )


def test_stream_cut_by_graceful_timeout_ends_with_an_sse_error() -> None:
    app = create_app(config())
    received: list[bytes] = []
    first = threading.Event()
    done = threading.Event()

    with serve_in_thread(app, timeout_graceful_shutdown=0.5) as handle:

        def read() -> None:
            body = chat("endless", stream=True)
            with httpx.stream("POST", f"{handle.url}/v1/chat/completions", json=body) as r:
                for part in r.iter_raw():
                    received.append(part)
                    first.set()
            done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert first.wait(10)
        started = time.monotonic()
    # The block's end shut the server down; the stream was cut after 0.5 s.
    assert done.wait(10)
    assert time.monotonic() - started < 10
    events = sse_events(b"".join(received).decode())
    assert events[0]["choices"][0]["delta"]["content"] == "first "
    assert events[-1]["error"]["code"] == "stream_cut"
    assert events[-1]["error"]["type"] == "service_unavailable_error"


def test_call_cut_by_graceful_timeout_is_503_in_openai_shape() -> None:
    app = create_app(config())
    answers: list[httpx.Response] = []
    done = threading.Event()

    with serve_in_thread(app, timeout_graceful_shutdown=0.5) as handle:

        def call() -> None:
            url = f"{handle.url}/v1/chat/completions"
            answers.append(httpx.post(url, json=chat("hanging"), timeout=30))
            done.set()

        threading.Thread(target=call, daemon=True).start()
        deadline = time.monotonic() + 10
        while app.runtime.metrics.in_flight == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert done.wait(10)
    error = error_of(answers[0], 503)
    assert error["code"] == "request_cancelled"


# -- readiness ---------------------------------------------------------------------------


def test_readiness_is_503_while_a_deployment_cannot_be_built() -> None:
    data = config()
    data["model_list"].append(
        {"model_name": "broken", "litellm_params": {"model": "no-such-provider/x"}}
    )
    with serve_in_thread(create_app(data)) as handle:
        r = httpx.get(f"{handle.url}/health/readiness")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "unhealthy"
        [broken] = body["unavailable"]
        assert broken["deployment"] == f"broken/{len(HANDLERS)}"
        assert "Unknown provider 'no-such-provider'" in broken["error"]
        # The rest serves; liveness is unaffected.
        assert httpx.get(f"{handle.url}/health/liveliness").status_code == 200
        ok = httpx.post(f"{handle.url}/v1/chat/completions", json=chat("echo"))
        assert ok.status_code == 200


def test_readiness_is_200_when_every_deployment_is_built(server: str) -> None:
    r = httpx.get(f"{server}/health/readiness")
    assert r.status_code == 200
    assert r.json()["status"] == "healthy"


# -- the front doors share the edge ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/messages",
            {"model": "leaky", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        ),
        ("/v1/responses", {"model": "leaky", "input": "hi"}),
        ("/v1/completions", {"model": "leaky", "prompt": "hi"}),
    ],
)
def test_front_doors_hide_unexpected_errors(server: str, path: str, body: dict[str, Any]) -> None:
    r = httpx.post(server + path, json=body)
    assert r.status_code == 500, r.text
    rid = r.headers["x-request-id"]
    assert f"Internal server error (request id {rid})" in r.text
    assert SECRET not in r.text
    streamed = httpx.post(server + path, json={**body, "stream": True})
    assert SECRET not in streamed.text
    assert "Internal server error (request id " in streamed.text
