"""The mock provider: LiteLLM's mock_response/mock_delay, and the latency model."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

import gateway
from gateway.errors import BadRequestError, GatewayError, RateLimitError, ServiceUnavailableError
from gateway.provider import ChatCall
from gateway_providers.mock import (
    DEFAULT_TEXT,
    MockProvider,
    _Plan,
    generated_text,
    generated_tokens,
)

MESSAGES = [{"role": "user", "content": "say something nice please"}]


def _call(params: dict[str, Any] | None = None, request: dict[str, Any] | None = None) -> ChatCall:
    return ChatCall(
        model="bench",
        messages=MESSAGES,
        optional_params=dict(request or {}),
        litellm_params={"model": "mock/bench", **(params or {})},
    )


async def _timed_stream(call: ChatCall) -> tuple[list[float], list[Any]]:
    """Arrival time (s from the start) and item of everything the provider yields."""
    start = time.perf_counter()
    times, items = [], []
    async for item in MockProvider().astream(call):
        times.append(time.perf_counter() - start)
        items.append(item)
    return times, items


# LiteLLM's behaviour stays as it was.


def test_mock_response_text_keeps_litellm_usage() -> None:
    resp = gateway.completion("gpt-x", MESSAGES, mock_response="Hi!")
    assert resp.choices[0].message.content == "Hi!"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (10, 20)
    assert resp.usage.total_tokens == 30
    assert resp.model == "gpt-x"


async def test_mock_delay_and_exception() -> None:
    start = time.perf_counter()
    with pytest.raises(RateLimitError):
        await gateway.acompletion(
            "gpt-x", MESSAGES, mock_response=RateLimitError("slow down"), mock_delay=0.2
        )
    assert time.perf_counter() - start >= 0.19


def test_default_text_for_a_bare_mock_model() -> None:
    resp = gateway.completion("mock/anything", MESSAGES)
    assert resp.choices[0].message.content == DEFAULT_TEXT
    assert resp.usage.prompt_tokens == 4
    assert resp.usage.completion_tokens == len(DEFAULT_TEXT.split())


# Generated replies.


def test_generated_text_is_deterministic_and_counted() -> None:
    first = gateway.completion("mock/a", MESSAGES, mock_tokens=37)
    second = gateway.completion("mock/b", MESSAGES, mock_tokens=37)
    text = first.choices[0].message.content
    assert text == second.choices[0].message.content == generated_text(37)
    assert len(text.split()) == 37
    assert first.usage.completion_tokens == 37
    assert first.usage.prompt_tokens == 4
    assert first.usage.total_tokens == 41
    assert "".join(generated_tokens(500)) == generated_text(500)
    assert len(generated_tokens(500)) == 500


def test_mock_response_wins_over_mock_tokens() -> None:
    resp = gateway.completion("mock/a", MESSAGES, mock_response="fixed", mock_tokens=50)
    assert resp.choices[0].message.content == "fixed"


async def test_stream_pieces_join_to_the_text_and_usage_is_real() -> None:
    chunks = await gateway.acompletion(
        "mock/a", MESSAGES, mock_tokens=9, stream=True, stream_options={"include_usage": True}
    )
    text, usage, finish = "", None, None
    async for chunk in chunks:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    assert text == generated_text(9)
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 9 and usage.prompt_tokens == 4


# Timing.


async def test_stream_ttft_and_pace() -> None:
    call = _call({"mock_tokens": 6, "mock_ttft_ms": 200, "mock_tokens_per_second": 20})
    times, items = await _timed_stream(call)
    assert len(items) == 7 and items[-1]["is_finished"]
    assert 0.19 <= times[0] < 1.5
    # Token i is due 0.2 + i * 0.05 s after the start, never earlier.
    assert all(t >= 0.2 + i * 0.05 - 0.005 for i, t in enumerate(times[:6])), times
    # The schedule is absolute: the last token is due at 0.2 + 5 * 0.05 s.
    assert 0.44 <= times[5] < 2.0
    # The finish item is due with the last token, not a token interval later.
    due = list(_Plan(call).offsets())
    assert due[6] == due[5] == pytest.approx(0.2 + 5 * 0.05)


async def test_non_stream_waits_ttft_plus_tokens_over_pace() -> None:
    call = _call({"mock_tokens": 10, "mock_ttft_ms": 100, "mock_tokens_per_second": 50})
    start = time.perf_counter()
    resp = await MockProvider().acompletion(call)
    elapsed = time.perf_counter() - start
    assert 0.29 <= elapsed < 2.0  # 0.1 + 10 / 50
    assert resp.usage.completion_tokens == 10


def test_sync_calls_follow_the_same_model() -> None:
    provider = MockProvider()
    call = _call({"mock_tokens": 4, "mock_ttft_ms": 100, "mock_tokens_per_second": 20})
    start = time.perf_counter()
    assert provider.completion(call).choices[0].message.content == generated_text(4)
    assert time.perf_counter() - start >= 0.29  # 0.1 + 4 / 20
    start = time.perf_counter()
    times = []
    for _item in provider.stream(call):
        times.append(time.perf_counter() - start)
    assert len(times) == 5
    assert times[0] >= 0.09 and times[3] >= 0.24


async def test_request_settings_override_the_deployment() -> None:
    call = _call(
        {"mock_tokens": 100, "mock_ttft_ms": 5000},
        request={"mock_tokens": 3, "mock_ttft_ms": 50},
    )
    start = time.perf_counter()
    times, items = await _timed_stream(call)
    assert len(items) == 4
    assert 0.045 <= times[0] and time.perf_counter() - start < 3


async def test_thousands_of_slow_streams_wait_concurrently() -> None:
    provider = MockProvider()
    call = _call({"mock_tokens": 5, "mock_ttft_ms": 300, "mock_tokens_per_second": 50})
    counts: list[int] = []

    async def one() -> None:
        n = 0
        async for _ in provider.astream(call):
            n += 1
        counts.append(n)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(2000):
            tg.start_soon(one)
    elapsed = time.perf_counter() - start
    assert counts == [6] * 2000
    # One stream takes 0.38 s; 2000 of them one after another would take 760 s.
    assert elapsed < 10, elapsed


# Injected failures.


async def test_failure_rate_one_always_fails_with_the_status() -> None:
    provider = MockProvider()
    call = _call({"mock_failure_rate": 1, "mock_failure_status": 503})
    with pytest.raises(ServiceUnavailableError) as info:
        await provider.acompletion(call)
    assert info.value.status_code == 503 and info.value.retryable
    with pytest.raises(ServiceUnavailableError):
        async for _ in provider.astream(call):
            pass
    with pytest.raises(GatewayError) as info:
        provider.completion(_call({"mock_failure_rate": 1}))
    assert info.value.status_code == 500


async def test_failure_rate_is_a_share_of_calls() -> None:
    provider = MockProvider()
    call = _call(request={"mock_failure_rate": 0.5, "mock_failure_status": 429})
    failures = 0
    for _ in range(400):
        try:
            await provider.acompletion(call)
        except RateLimitError:
            failures += 1
    assert 100 < failures < 300
    for _ in range(50):
        await provider.acompletion(_call({"mock_failure_rate": 0}))


async def test_failure_reaches_the_library_caller_as_a_gateway_error() -> None:
    with pytest.raises(GatewayError) as info:
        await gateway.acompletion("mock/x", MESSAGES, mock_failure_rate=1, mock_failure_status=418)
    assert info.value.status_code == 418


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"mock_ttft_ms": "soon"}, "mock_ttft_ms"),
        ({"mock_ttft_ms": -1}, "mock_ttft_ms"),
        ({"mock_tokens": [3]}, "mock_tokens"),
        ({"mock_tokens_per_second": True}, "mock_tokens_per_second"),
        ({"mock_failure_rate": 1.5}, "mock_failure_rate"),
        ({"mock_failure_rate": 1, "mock_failure_status": 200}, "mock_failure_status"),
        ({"mock_failure_rate": 1, "mock_failure_status": "500"}, "mock_failure_status"),
    ],
)
async def test_bad_settings_are_400_naming_the_key(params: dict[str, Any], name: str) -> None:
    with pytest.raises(BadRequestError) as info:
        await MockProvider().acompletion(_call(params))
    assert info.value.param == name and name in info.value.message


# Through the HTTP gateway: per-request settings arrive as extra body fields.


@pytest.fixture(scope="module")
def server() -> Any:
    from gateway.app import create_app
    from tests.fake_upstream import serve_in_thread

    config = {
        "model_list": [
            {
                "model_name": "mocked",
                "litellm_params": {
                    "model": "mock/m",
                    "mock_tokens": 8,
                    # Far from the requests' own settings, so telling them apart needs
                    # no tight bound even on a loaded machine.
                    "mock_ttft_ms": 60000,
                    "mock_tokens_per_second": 1000,
                },
            }
        ]
    }
    with serve_in_thread(create_app(config), loop="uvloop", http="httptools") as handle:
        yield handle.url


def test_http_stream_paced_by_extra_body(server: str) -> None:
    import openai

    times, text = [], ""
    with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0) as client:
        start = time.perf_counter()
        stream = client.chat.completions.create(
            model="mocked",
            messages=MESSAGES,
            stream=True,
            extra_body={"mock_ttft_ms": 150, "mock_tokens_per_second": 25, "mock_tokens": 4},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                times.append(time.perf_counter() - start)
                text += chunk.choices[0].delta.content
    assert text == generated_text(4)
    assert 0.14 <= times[0] < 30  # the request's 150 ms, not the deployment's 60 s
    # Chunks arrive as the mock paces them (one every 40 ms after the first), never
    # earlier: the request's pace applies, not the deployment's 1000 tokens/s.
    assert all(t >= 0.15 + i * 0.04 - 0.005 for i, t in enumerate(times)), times


def test_http_non_stream_uses_deployment_settings_and_counts_usage(server: str) -> None:
    import httpx

    body = {"model": "mocked", "messages": MESSAGES, "mock_ttft_ms": 0}
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200
    data = response.json()
    assert data["model"] == "mocked"
    assert data["choices"][0]["message"]["content"] == generated_text(8)
    assert data["usage"] == {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12}


def test_http_injected_failure_keeps_its_status(server: str) -> None:
    import openai

    with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(
                model="mocked",
                messages=MESSAGES,
                extra_body={"mock_failure_rate": 1, "mock_failure_status": 429},
            )
        assert info.value.status_code == 429
        assert "Injected mock failure" in str(info.value)
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model="mocked", messages=MESSAGES, extra_body={"mock_ttft_ms": "soon"}
            )
        assert "mock_ttft_ms" in str(bad.value)


# Sizes a client chooses are bounded: a 500 or a server that builds 10**12 items on its
# event loop before, now a 400 naming the field, and the server answers at once after.


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/embeddings", {"input": "x", "dimensions": 10**12}, "dimensions"),
        ("/v1/embeddings", {"input": "x", "dimensions": 2**70}, "dimensions"),
        ("/v1/embeddings", {"input": "x", "dimensions": 0}, "dimensions"),
        ("/v1/embeddings", {"input": "x", "dimensions": "8"}, "dimensions"),
        ("/v1/images/generations", {"prompt": "x", "n": 10**12}, "n"),
        ("/v1/images/generations", {"prompt": "x", "n": 0}, "n"),
        ("/v1/chat/completions", {"messages": MESSAGES, "mock_tokens": 10**9}, "mock_tokens"),
    ],
)
def test_http_client_sizes_are_bounded(
    server: str, route: str, body: dict[str, Any], param: str
) -> None:
    import httpx

    r = httpx.post(f"{server}{route}", json={"model": "mocked", **body}, timeout=5)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert httpx.get(f"{server}/health/liveliness", timeout=1).status_code == 200


def test_http_sizes_within_bounds_answer(server: str) -> None:
    import httpx

    r = httpx.post(
        f"{server}/v1/embeddings", json={"model": "mocked", "input": "x", "dimensions": 3}
    )
    assert [d["embedding"] for d in r.json()["data"]] == [[0.1, 0.1, 0.1]]
    r = httpx.post(
        f"{server}/v1/images/generations", json={"model": "mocked", "prompt": "x", "n": 10}
    )
    assert len(r.json()["data"]) == 10


@pytest.mark.parametrize("stream", [False, True])
def test_http_mock_response_without_choices(server: str, stream: bool) -> None:
    import httpx

    body = {
        "model": "mocked",
        "messages": MESSAGES,
        "mock_response": {"choices": []},
        "mock_ttft_ms": 0,
    }
    r = httpx.post(f"{server}/v1/chat/completions", json={**body, "stream": stream}, timeout=10)
    assert r.status_code == 200, r.text  # was 500 "list index out of range"
    if stream:
        assert r.text.endswith("data: [DONE]\n\n")
    else:
        assert r.json()["choices"] == []
