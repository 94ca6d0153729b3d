"""The OpenAI-compatible provider through the library, against a real fake upstream."""

from __future__ import annotations

import asyncio
import base64
import gc
import struct
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import anyio
import msgspec
import pytest

import gateway
from gateway import errors
from gateway.calls import astream_chunks
from gateway.http import HTTPClients, current
from gateway.provider import ChatCall
from gateway.registry import provider_for
from gateway.streaming import stream_chunk_builder
from gateway.types import ModelResponse
from gateway_providers.openai import OpenAIProvider
from gateway_providers.openai._sse import sse_events as _sse_events
from tests.fake_upstream import FakeUpstream, run_fake_upstream

MESSAGES = [{"role": "user", "content": "hi"}]


def pool_stats() -> dict[str, int]:
    """The upstream pool of the library's clients on this loop."""
    return current().pool_stats()


@pytest.fixture(scope="module")
def upstream_server() -> Iterator[FakeUpstream]:
    with run_fake_upstream() as upstream:
        yield upstream


@pytest.fixture
def upstream(upstream_server: FakeUpstream) -> FakeUpstream:
    upstream_server.reset()
    return upstream_server


async def _wait_for(predicate: Any, timeout: float = 5.0) -> float:
    """Seconds until ``predicate()`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        await anyio.sleep(0.01)
    return time.monotonic() - start


# Chat, JSON.


async def test_chat_json_forwards_params_headers_and_body(upstream: FakeUpstream) -> None:
    response = await gateway.acompletion(
        "openai/served-model",
        MESSAGES,
        api_base=upstream.base_url,
        api_key="sk-test-key-123",
        temperature=0.2,
        max_tokens=5,
        extra_headers={"x-team": "blue"},
        organization="org-42",
        extra_body={"top_k": 3},
        unknown_param="passed",
        num_retries=2,  # the gateway's own: never sent upstream
    )
    assert response.choices[0].message.content == "Hello from the fake upstream"
    assert response.model == "openai/served-model"
    assert response.usage.total_tokens > 0
    seen = upstream.requests_seen[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer sk-test-key-123"
    assert seen.headers["x-team"] == "blue"
    assert seen.headers["openai-organization"] == "org-42"
    assert seen.body == {
        "model": "served-model",
        "messages": MESSAGES,
        "temperature": 0.2,
        "max_tokens": 5,
        "unknown_param": "passed",
        "top_k": 3,
    }


async def test_deployment_params_key_headers_body_and_env(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = provider_for("hosted_vllm")
    call = ChatCall(
        model="llama",
        messages=MESSAGES,
        optional_params={"seed": 1},
        litellm_params={
            "api_base": upstream.base_url + "/",
            "api_key": "deployment-key",
            "extra_headers": {"X-Tenant": "t1", "Host": "evil.invalid"},
            "extra_body": {"repetition_penalty": 1.1},
        },
    )
    response = await provider.acompletion(call)
    assert response.choices[0].message.content
    seen = upstream.requests_seen[-1]
    assert seen.headers["authorization"] == "Bearer deployment-key"
    assert seen.headers["x-tenant"] == "t1"
    assert seen.headers["host"].startswith("127.0.0.1:")  # hop headers are never copied
    assert seen.body["repetition_penalty"] == 1.1 and seen.body["seed"] == 1

    # OPENAI_API_KEY is OpenAI's: a self-hosted upstream never gets it unasked.
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    monkeypatch.setenv("HOSTED_VLLM_API_KEY", "vllm-env-key")
    for prefix in ("openai", "hosted_vllm", "openai_like"):
        await gateway.acompletion(f"{prefix}/x", MESSAGES, api_base=upstream.base_url)
        assert "authorization" not in upstream.requests_seen[-1].headers, prefix
    monkeypatch.setenv("MY_UPSTREAM_KEY", "named-env-key")
    await gateway.acompletion(
        "openai/x", MESSAGES, api_base=upstream.base_url, api_key="os.environ/MY_UPSTREAM_KEY"
    )
    assert upstream.requests_seen[-1].headers["authorization"] == "Bearer named-env-key"


async def test_what_a_deployment_fixes_is_kept_and_the_rest_is_per_call(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The provider keeps what a deployment's params fix (base, key, its headers) across
    # calls; a caller's headers and an os.environ/ value are still read on every call.
    provider = OpenAIProvider()
    params = {"api_base": upstream.base_url, "api_key": "k1", "extra_headers": {"x-t": "1"}}
    for rid in ("r1", "r2"):
        call = ChatCall(
            model="x", messages=MESSAGES, optional_params={}, litellm_params=params,
            headers={"x-request-id": rid, "Authorization": "Bearer caller"},
        )  # fmt: skip
        await provider.acompletion(call)
        seen = upstream.requests_seen[-1].headers
        assert (seen["authorization"], seen["x-t"], seen["x-request-id"]) == ("Bearer k1", "1", rid)
    assert len(provider._fixed) == 1
    by_env = {"api_base": upstream.base_url, "api_key": "os.environ/ROTATED_KEY"}
    for key in ("first", "second"):
        monkeypatch.setenv("ROTATED_KEY", key)
        call = ChatCall(model="x", messages=MESSAGES, optional_params={}, litellm_params=by_env)
        await provider.acompletion(call)
        assert upstream.requests_seen[-1].headers["authorization"] == f"Bearer {key}"
    assert len(provider._fixed) == 1


async def test_chat_json_tool_calls(upstream: FakeUpstream) -> None:
    response = await gateway.acompletion(
        "openai/x", MESSAGES, api_base=upstream.base_url, fake={"tools": True}
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c["function"]["name"] for c in choice.message.tool_calls] == [
        "get_weather",
        "get_time",
    ]


# Streaming.


async def test_stream_passes_unknown_fields_through_raw(upstream: FakeUpstream) -> None:
    provider = provider_for("openai")
    call = ChatCall(
        model="x",
        messages=MESSAGES,
        optional_params={
            "stream": True,
            "stream_options": {"include_usage": True},
            "fake": {"extras": True},
        },
        litellm_params={},
        api_base=upstream.base_url,
        stream=True,
    )
    chunks = [c async for c in astream_chunks(provider, call, "public-name", raw_dicts=True)]
    assert upstream.requests_seen[-1].body["stream_options"] == {"include_usage": True}
    assert len({c["id"] for c in chunks}) == 1
    assert {c["model"] for c in chunks} == {"public-name"}
    content = [c for c in chunks if c.get("choices") and c["choices"][0]["delta"].get("content")]
    assert content, chunks
    for chunk in content:
        assert chunk["x_fake_field"] == "kept"  # unknown top-level field
        delta = chunk["choices"][0]["delta"]
        assert delta["reasoning_content"].startswith("thought")
        assert "x_delta_field" in delta
        assert chunk["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.5
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"].total_tokens > 0


async def test_stream_tool_call_deltas_reassemble(upstream: FakeUpstream) -> None:
    stream = await gateway.acompletion(
        "openai/x", MESSAGES, api_base=upstream.base_url, stream=True, fake={"tools": True}
    )
    chunks = [c async for c in stream]
    deltas = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) > 4  # the arguments arrived in pieces
    whole = stream_chunk_builder(chunks)
    calls = whole.choices[0].message.tool_calls
    assert [(c["id"], c["function"]["name"]) for c in calls] == [
        ("call_weather", "get_weather"),
        ("call_time", "get_time"),
    ]
    assert calls[0]["function"]["arguments"] == '{"city": "Paris", "unit": "c"}'
    assert calls[1]["function"]["arguments"] == '{"tz": "Europe/Paris"}'
    assert whole.choices[0].finish_reason == "tool_calls"


async def test_stream_relays_each_chunk_as_it_arrives(upstream: FakeUpstream) -> None:
    stream = await gateway.acompletion(
        "openai/x",
        MESSAGES,
        api_base=upstream.base_url,
        stream=True,
        fake={"chunks": 4, "interval": 0.15},
    )
    open_at_arrival = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            open_at_arrival.append(upstream.open_requests)
    assert len(open_at_arrival) == 4
    # The first chunk arrived while the upstream still had three to send (0.45 s of
    # them): the stream is relayed as it comes, not gathered and replayed at the end.
    assert open_at_arrival[0] == 1, open_at_arrival


async def test_sse_parser_handles_any_split_of_the_bytes() -> None:
    wire = (
        b": keep-alive comment\r\n\r\n"
        b'data: {"a": 1}\n\n'
        b"event: error\n"
        b'data: {"error": {"message": "x"}}\n\n'
        b'data: {"b":\n'
        b"data: 2}\n\n"
        b'data:{"c": 3}\r\n\r\n'
        b"data: [DONE]"
    )
    expected = [
        (b"", b'{"a": 1}'),
        (b"error", b'{"error": {"message": "x"}}'),
        (b"", b'{"b":\n2}'),
        (b"", b'{"c": 3}'),
        (b"", b"[DONE]"),
    ]

    async def parts(size: int) -> AsyncIterator[bytes]:
        for i in range(0, len(wire), size):
            yield wire[i : i + size]

    for size in (1, 2, 3, 7, 16, len(wire)):
        assert [e async for e in _sse_events(parts(size))] == expected, size


@pytest.mark.parametrize("ending", ["cr", "crlf"])
async def test_stream_with_cr_or_crlf_line_endings(upstream: FakeUpstream, ending: str) -> None:
    stream = await gateway.acompletion(
        "openai/x",
        MESSAGES,
        api_base=upstream.base_url,
        stream=True,
        fake={"line_endings": ending, "chunks": 3},
    )
    whole = stream_chunk_builder([c async for c in stream])
    assert whole.choices[0].message.content == "tok0 tok1 tok2 "
    assert whole.choices[0].finish_reason == "stop"


async def test_sse_parser_cr_crlf_and_caps_at_any_split() -> None:
    wire = b'data: {"a":\rdata: 1}\r\rdata: {"b": 2}\r\n\r\nevent: x\rdata: 3\n\r\n'
    expected = [(b"", b'{"a":\n1}'), (b"", b'{"b": 2}'), (b"x", b"3")]

    async def parts(data: bytes, size: int) -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    for size in (1, 2, 3, 5, len(wire)):
        assert [e async for e in _sse_events(parts(wire, size))] == expected, size
    # A line, or an event of many lines, over the cap is a 502.
    for data in (b"data: " + b"x" * 100, b"data: 1234567890\n" * 20 + b"\n"):
        for size in (7, len(data)):
            with pytest.raises(errors.BadGatewayError, match="max_event_bytes"):
                _ = [e async for e in _sse_events(parts(data, size), cap=64)]


async def test_sse_parser_reads_of_many_events_give_what_single_events_give() -> None:
    # Reads holding several one-line events take a fast path: same events, same caps.
    events = [b'{"n": %d}' % i for i in range(30)] + [b"x" * 60, b"[DONE]"]
    usual = b"".join(b"data: " + e + b"\n\n" for e in events)
    mixed = b"".join((b"data: " if i % 3 else b"data:") + e + b"\n\n" for i, e in enumerate(events))

    async def parts(data: bytes, size: int) -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    expected = [(b"", e) for e in events]
    wires = [
        (usual, 1),
        (mixed, 1),
        (usual + b": ping\n\n" + usual, 2),
        (usual + b"\n\n" + usual, 2),
    ]
    for wire, twice in wires:
        for size in (1, 5, 40, 100, 333, len(wire)):
            got = [e async for e in _sse_events(parts(wire, size), cap=70)]
            assert got == expected * twice, size
            # 60 bytes of data (a 66-byte line) over a cap of 59: a 502 on every path.
            with pytest.raises(errors.BadGatewayError, match="max_event_bytes"):
                _ = [e async for e in _sse_events(parts(wire, size), cap=59)]
    # Events of two lines, or named, in a read of one-line events: split line by line.
    odd = b"data: a\ndata: b\n\nevent: x\ndata: c\n\ndata: \n\n"
    wire = usual[: -len(b"data: [DONE]\n\n")] + odd + usual
    want = [*expected[:-1], (b"", b"a\nb"), (b"x", b"c"), (b"", b""), *expected]
    for size in (1, 7, 100, len(wire)):
        assert [e async for e in _sse_events(parts(wire, size), cap=70)] == want, size


async def test_endless_stream_line_is_a_quick_502(upstream: FakeUpstream) -> None:
    # 200 MB with no newline: cut at the default cap (4 MB), the upstream dropped.
    with pytest.raises(errors.BadGatewayError) as info:
        stream = await gateway.acompletion(
            "openai/x",
            MESSAGES,
            api_base=upstream.base_url,
            stream=True,
            fake={"huge_line": 200 * 2**20},
        )
        async for _ in stream:
            pass
    assert info.value.status_code == 502 and "max_event_bytes" in info.value.message
    await _wait_for(lambda: upstream.open_requests == 0, timeout=5)  # the upstream let go


@pytest.mark.parametrize(
    "fake",
    [{"big_body": 1024 * 2**20}, {"gzip_bomb": 64 * 2**20}],
    ids=["1GB-body", "gzip-bomb"],
)
async def test_oversized_answer_is_a_502(upstream: FakeUpstream, fake: dict[str, Any]) -> None:
    with pytest.raises(errors.BadGatewayError) as info:
        await gateway.acompletion("openai/x", MESSAGES, api_base=upstream.base_url, fake=fake)
    assert info.value.status_code == 502 and "max_response_bytes" in info.value.message
    await _wait_for(lambda: upstream.open_requests == 0, timeout=5)


@pytest.mark.parametrize(
    "fake", [{"big_body": 3 * 2**20}, {"gzip_bomb": 8 * 2**20}], ids=["3MB-body", "8MB-gzip"]
)
async def test_big_answer_within_the_cap_is_read_whole(
    upstream: FakeUpstream, fake: dict[str, Any]
) -> None:
    response = await gateway.acompletion(
        "openai/x", MESSAGES, api_base=upstream.base_url, fake=fake
    )
    assert response.choices[0].message.content == "Hello from the fake upstream"


# Errors keep their meaning.


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, errors.BadRequestError, False),
        (401, errors.AuthenticationError, False),
        (403, errors.PermissionDeniedError, False),
        (404, errors.NotFoundError, False),
        (409, errors.BadRequestError, False),
        (422, errors.UnprocessableEntityError, False),
        (429, errors.RateLimitError, True),
        (500, errors.InternalServerError, True),
        (502, errors.BadGatewayError, True),
        (503, errors.ServiceUnavailableError, True),
        (504, errors.GatewayTimeoutError, True),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_status_maps_to_same_status(
    upstream: FakeUpstream, status: int, cls: type[Exception], retryable: bool, stream: bool
) -> None:
    fake = {"status": status, "message": f"upstream says {status}", "code": "some_code"}
    with pytest.raises(cls) as info:
        result = await gateway.acompletion(
            "openai/x", MESSAGES, api_base=upstream.base_url, stream=stream, fake=fake
        )
        if stream:
            async for _ in result:
                pass
    exc = info.value
    assert exc.status_code == status
    assert exc.message == f"upstream says {status}"
    assert exc.code == "some_code"
    assert exc.retryable is retryable


async def test_rate_limit_keeps_retry_after(upstream: FakeUpstream) -> None:
    with pytest.raises(errors.RateLimitError) as info:
        await gateway.aembedding(
            "openai/e", "hi", api_base=upstream.base_url, fake={"status": 429, "retry_after": 17}
        )
    assert info.value.headers == {"Retry-After": "17"}
    assert info.value.retryable


async def test_context_window_error_keeps_its_code(upstream: FakeUpstream) -> None:
    fake = {"status": 400, "code": "context_length_exceeded", "message": "too long"}
    with pytest.raises(errors.ContextWindowExceededError) as info:
        await gateway.acompletion("openai/x", MESSAGES, api_base=upstream.base_url, fake=fake)
    assert info.value.status_code == 400 and info.value.code == "context_length_exceeded"


async def test_secrets_are_redacted_from_upstream_messages(upstream: FakeUpstream) -> None:
    fake = {
        "status": 401,
        "message": "Incorrect API key provided: my-private-key-42. Also sk-proj-AbC123xyz "
        "and header Bearer tok.en-value were wrong.",
    }
    with pytest.raises(errors.AuthenticationError) as info:
        await gateway.acompletion(
            "openai/x", MESSAGES, api_base=upstream.base_url, api_key="my-private-key-42", fake=fake
        )
    message = info.value.message
    for secret in ("my-private-key-42", "sk-proj-AbC123xyz", "tok.en-value"):
        assert secret not in message
    assert message.startswith("Incorrect API key provided: [REDACTED]")


@pytest.mark.parametrize(
    ("fake", "stream", "needle"),
    [
        ({"garbage": "html"}, False, "not valid JSON"),
        ({"garbage": "truncated"}, False, "not valid JSON"),
        ({"garbage": "short"}, False, "closed the connection mid-response"),
        ({"garbage": "event"}, True, "not valid JSON"),
        ({"garbage": "no_done"}, True, "before [DONE]"),
        ({"drop_after": 2}, True, "closed the connection mid-response"),
        ({"stream_error_after": 2, "message": "model crashed"}, True, "model crashed"),
    ],
)
async def test_broken_upstream_bodies_are_502(
    upstream: FakeUpstream, fake: dict[str, Any], stream: bool, needle: str
) -> None:
    received: list[Any] = []
    with pytest.raises(errors.BadGatewayError) as info:
        result = await gateway.acompletion(
            "openai/x", MESSAGES, api_base=upstream.base_url, stream=stream, fake=fake
        )
        if stream:
            async for chunk in result:
                received.append(chunk)
    assert info.value.status_code == 502 and info.value.retryable
    assert needle in info.value.message
    if fake.get("drop_after") or fake.get("stream_error_after"):
        assert received  # the chunks before the failure were relayed


async def test_a_finished_stream_may_end_without_done(upstream: FakeUpstream) -> None:
    # Some servers close after the finish and usage chunks without [DONE]: not truncated,
    # though the last event (the usage chunk) has no choices to finish.
    stream = await gateway.acompletion(
        "openai/x",
        MESSAGES,
        api_base=upstream.base_url,
        stream=True,
        stream_options={"include_usage": True},
        fake={"garbage": "finish_no_done", "chunks": 3},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.total_tokens > 0


async def test_upstream_error_event_with_status_keeps_it(upstream: FakeUpstream) -> None:
    fake = {"stream_error_after": 1, "message": "slow down", "code": 429}
    with pytest.raises(errors.RateLimitError) as info:
        stream = await gateway.acompletion(
            "openai/x", MESSAGES, api_base=upstream.base_url, stream=True, fake=fake
        )
        async for _ in stream:
            pass
    assert info.value.message == "slow down" and info.value.retryable


async def test_ok_status_with_error_body_and_null_usage(upstream: FakeUpstream) -> None:
    fake = {"garbage": "error_body", "code": 503, "message": "overloaded"}
    with pytest.raises(errors.ServiceUnavailableError) as info:
        await gateway.acompletion("openai/x", MESSAGES, api_base=upstream.base_url, fake=fake)
    assert info.value.message == "overloaded"
    with pytest.raises(errors.BadGatewayError):
        await gateway.aembedding(
            "openai/e", "x", api_base=upstream.base_url, fake={"garbage": "error_body"}
        )
    # Servers that send "usage": null are tolerated.
    response = await gateway.acompletion(
        "openai/x", MESSAGES, api_base=upstream.base_url, fake={"null_usage": True}
    )
    assert response.choices[0].message.content and response.usage.total_tokens == 0


def test_an_error_object_is_an_error_whatever_else_it_holds() -> None:
    # A chat answer is scanned for "error" only when it decodes to no content: each
    # shape of error object must still be told, and an answer never taken for one.
    from gateway_providers.openai import _chat_decoder, _decode, _has_answer
    from gateway_providers.openai._target import Target

    call = ChatCall(
        model="x", messages=[], optional_params={}, litellm_params={}, api_base="http://u"
    )
    target = Target(OpenAIProvider(), call)

    def decode(body: dict[str, Any]) -> Any:
        return _decode(
            msgspec.json.encode(body), _chat_decoder, ModelResponse, "chat", target, "/p",
            _has_answer,
        )  # fmt: skip

    error = {"message": "overloaded", "code": 503}
    for body in (
        {"error": error},
        {"error": error, "choices": []},
        {"error": error, "created": "not a number"},  # another shape: decoded leniently
    ):
        with pytest.raises(errors.ServiceUnavailableError, match="overloaded"):
            decode(body)
    answer = {"choices": [{"message": {"content": "an error", "role": "assistant"}}]}
    assert decode({**answer, "error": None}).choices[0].message.content == "an error"
    empty = {"choices": [{"message": {"content": None}, "finish_reason": "length"}]}
    assert decode(empty).choices[0].finish_reason == "length"


async def test_connect_error_is_retryable_502(caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    with pytest.raises(errors.APIConnectionError) as info:
        await gateway.acompletion("openai/x", MESSAGES, api_base="http://127.0.0.1:9/v1")
    assert info.value.status_code == 502 and info.value.retryable
    assert "127.0.0.1" not in info.value.message  # the address is for the operator's log
    assert "http://127.0.0.1:9/v1/chat/completions" in caplog.text
    assert time.monotonic() - started < 5


async def test_upstream_error_text_is_short_and_names_no_address(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    internal = "http://10.0.0.7:8000/v1 (pod 10.1.2.3:9000, [fd00::7]:80)"
    fake = {"status": 500, "message": f"backend {internal} failed " + "x" * 1000}
    with pytest.raises(errors.InternalServerError) as info:
        await gateway.acompletion("openai/x", MESSAGES, api_base=upstream.base_url, fake=fake)
    message = info.value.message
    assert info.value.status_code == 500
    for secret in ("10.0.0.7", "10.1.2.3", "fd00::7", "http://", "127.0.0.1"):
        assert secret not in message
    assert message.startswith("backend [ADDRESS]") and len(message) <= 300
    assert internal in caplog.text  # the whole answer is logged

    # An upstream's own host, named in its message, is taken out too.
    host = upstream.base_url.split("//")[1].split(":")[0]
    fake = {"status": 503, "message": f"{host} is overloaded"}
    with pytest.raises(errors.ServiceUnavailableError) as info:
        await gateway.acompletion("openai/x", MESSAGES, api_base=upstream.base_url, fake=fake)
    assert host not in info.value.message

    # A redirect names no Location; a non-JSON error page gives no body text.
    fake = {"status": 302, "location": "http://10.9.9.9/internal/login"}
    with pytest.raises(errors.BadGatewayError) as info:
        await gateway.acompletion("openai/x", MESSAGES, api_base=upstream.base_url, fake=fake)
    assert "10.9.9.9" not in info.value.message and "302" in info.value.message
    assert "Location: http://10.9.9.9/internal/login" in caplog.text
    with pytest.raises(errors.BadGatewayError) as info:
        await gateway.acompletion(
            "openai/x", MESSAGES, api_base=upstream.base_url, fake={"garbage": "html"}
        )
    assert "nginx" not in info.value.message and "<html>" not in info.value.message
    assert "502 Bad Gateway (nginx)" in caplog.text


async def test_hanging_upstream_times_out_and_is_released(upstream: FakeUpstream) -> None:
    async def one(stream: bool) -> None:  # JSON and a stream at once: one wait, not two
        started = time.monotonic()
        with pytest.raises((errors.Timeout, errors.GatewayTimeoutError)) as info:
            result = await gateway.acompletion(
                "openai/x",
                MESSAGES,
                api_base=upstream.base_url,
                stream=stream,
                timeout=0.5,
                fake={"hang": True},
            )
            async for _ in result:
                pass
        elapsed = time.monotonic() - started
        assert 0.4 < elapsed < 3, elapsed
        assert info.value.retryable and info.value.status_code in (408, 504)

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, False)
        tg.start_soon(one, True)
    # The upstream learns the requests are gone.
    await _wait_for(lambda: upstream.open_requests == 0, timeout=2)
    assert len(upstream.disconnects) == 2


async def test_httpx_read_timeout_is_504(upstream: FakeUpstream) -> None:
    # Called below the runner (no anyio deadline), so httpx's own read timeout fires.
    provider = OpenAIProvider()
    call = ChatCall(
        model="x",
        messages=MESSAGES,
        optional_params={"fake": {"hang": True}},
        litellm_params={},
        api_base=upstream.base_url,
        timeout=0.3,
    )
    with pytest.raises(errors.GatewayTimeoutError) as info:
        await provider.acompletion(call)
    assert info.value.status_code == 504 and info.value.retryable
    assert "ReadTimeout" in info.value.message


async def test_idle_gap_between_stream_chunks_times_out(upstream: FakeUpstream) -> None:
    # Below the runner: the session's read timeout bounds the wait for each chunk.
    provider = OpenAIProvider()
    call = ChatCall(
        model="x",
        messages=MESSAGES,
        optional_params={"fake": {"chunks": 5, "interval": 2.0}},
        litellm_params={},
        api_base=upstream.base_url,
        timeout=0.3,
        stream=True,
    )
    received = []
    with pytest.raises(errors.GatewayTimeoutError) as info:
        async for item in provider.astream(call):
            received.append(item)
    assert received  # the first chunks came at once; the 2 s gap was too long
    assert info.value.status_code == 504 and "ReadTimeout" in info.value.message
    await _wait_for(lambda: upstream.open_requests == 0, timeout=3)


async def test_a_stream_that_keeps_talking_outlives_its_read_timeout(
    upstream: FakeUpstream,
) -> None:
    # The read timeout bounds each wait for data (gateway._h1), not the stream: each
    # read must count as progress. 6 gaps of 0.1 s under a 0.3 s read timeout: 0.6 s in all.
    provider = OpenAIProvider()
    call = ChatCall(
        model="x",
        messages=MESSAGES,
        optional_params={"fake": {"chunks": 6, "interval": 0.1}},
        litellm_params={},
        api_base=upstream.base_url,
        timeout=0.3,
        stream=True,
    )
    started = time.monotonic()
    received = [item async for item in provider.astream(call)]
    assert time.monotonic() - started > 0.5
    assert len(received) >= 6


# Disconnects and the connection pool.


async def test_closing_a_stream_closes_the_upstream_request(upstream: FakeUpstream) -> None:
    stream = await gateway.acompletion(
        "openai/x",
        MESSAGES,
        api_base=upstream.base_url,
        stream=True,
        fake={"chunks": 1000, "interval": 0.02},
    )
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    closed_at = time.monotonic()
    await stream.aclose()
    await _wait_for(lambda: upstream.disconnects, timeout=2)
    seen = upstream.disconnects[0]
    assert seen.disconnected is not None and seen.disconnected - closed_at < 1.0
    assert seen.chunks_sent < 1000  # the upstream stopped generating
    stats = pool_stats()
    assert stats["active"] == 0 and stats["requests"] == 0


async def test_cancelling_a_stream_closes_the_upstream_request(upstream: FakeUpstream) -> None:
    async def consume() -> None:
        stream = await gateway.acompletion(
            "openai/x",
            MESSAGES,
            api_base=upstream.base_url,
            stream=True,
            fake={"chunks": 1000, "interval": 0.02},
        )
        async for _ in stream:
            pass

    with anyio.move_on_after(0.3):
        await consume()
    cancelled_at = time.monotonic()
    await _wait_for(lambda: upstream.disconnects, timeout=2)
    assert upstream.disconnects[0].disconnected - cancelled_at < 1.0  # type: ignore[operator]
    await _wait_for(lambda: upstream.open_requests == 0, timeout=2)
    assert pool_stats()["active"] == 0


async def test_concurrent_streams_leave_no_connection_behind(upstream: FakeUpstream) -> None:
    async def one(i: int) -> str:
        stream = await gateway.acompletion(
            "openai/x",
            MESSAGES,
            api_base=upstream.base_url,
            stream=True,
            fake={"chunks": 5, "interval": 0.05},
        )
        return stream_chunk_builder([c async for c in stream]).choices[0].message.content

    before = pool_stats()
    results: list[str] = []

    async def run(i: int) -> None:
        results.append(await one(i))

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(run, i)
    after = pool_stats()
    assert results == ["tok0 tok1 tok2 tok3 tok4 "] * 200
    assert upstream.max_open_requests > 100  # they really ran at the same time
    assert after["active"] == 0 and after["requests"] == 0
    assert after["idle"] == after["connections"]  # finished streams went back to the pool
    # ... which keeps at most its keep-alive cap once they have been idle a moment.
    await _wait_for(lambda: pool_stats()["connections"] <= 100, timeout=5)
    assert before["active"] == 0
    await _wait_for(lambda: upstream.open_requests == 0, timeout=2)


async def test_clients_are_per_loop_made_from_settings_and_closed() -> None:
    clients = HTTPClients(
        SimpleNamespace(
            max_connections=7,
            max_keepalive_connections=3,
            keepalive_expiry=2.0,
            connect_timeout=1.5,
            read_timeout=9.0,
            trust_env=True,
        )
    )
    pool = clients.upstream_pool()
    assert clients.upstream_pool() is pool  # one per loop, shared across calls
    assert (pool.max_connections, pool.max_idle, pool.keepalive_expiry) == (7, 3, 2.0)
    assert pool.connect_timeout == 1.5 and pool.read_timeout == 9.0
    assert pool.trust_env
    assert HTTPClients().upstream_pool().trust_env is False  # env proxies: opt-in
    handler_client = clients.http_client()
    assert clients.http_client() is handler_client
    assert handler_client.timeout.connect == 1.5 and handler_client.timeout.read == 9.0

    async def in_new_loop() -> Any:
        return clients.upstream_pool(), clients.http_client()

    other, other_httpx = await anyio.to_thread.run_sync(lambda: asyncio.run(in_new_loop()))
    assert other is not pool
    assert other.closed and other_httpx.is_closed  # closed when their loop ended
    assert not pool.closed
    await clients.aclose()
    assert pool.closed and handler_client.is_closed
    assert clients.upstream_pool() is not pool  # made again on next use
    await clients.aclose()


async def test_keep_alive_cap_closes_idle_connections_beyond_it(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    trim_after = 0.3  # the pool's 1 s, shortened: the test waits it out
    monkeypatch.setattr("gateway._h1pool.TRIM_AFTER", trim_after)
    clients = HTTPClients(SimpleNamespace(max_keepalive_connections=2))
    pool = clients.upstream_pool()

    async def one() -> None:
        headers = {"content-type": "application/json"}
        answer = await pool.request(upstream.base_url, "/embeddings", headers, b"{}", None)
        await answer.read(2**20)
        answer.release()

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
        # Beyond the cap, connections stay pooled while they may be reused at once (a
        # busy pool rotates them), and close once idle for TRIM_AFTER.
        assert upstream.open_connections > 2
        started = time.monotonic()
        stats = {"connections": 2, "idle": 2, "active": 0, "requests": 0, "waiting": 0}
        await _wait_for(lambda: clients.pool_stats() == stats, timeout=5)
        assert time.monotonic() - started >= trim_after * 0.9
        await _wait_for(lambda: upstream.open_connections <= 2)
        async with anyio.create_task_group() as tg:  # the two kept are reused
            for _ in range(2):
                tg.start_soon(one)
        assert clients.pool_stats() == stats
    finally:
        await clients.aclose()


# Embeddings and images.


@pytest.mark.parametrize(
    ("value", "count"),
    [("one text", 1), (["a", "bb", "ccc"], 3), ([1, 2, 3], 1), ([[1, 2], [3]], 2)],
)
async def test_embedding_inputs_pass_through(
    upstream: FakeUpstream, value: Any, count: int
) -> None:
    response = await gateway.aembedding(
        "openai/text-embedding-3-small", value, api_base=upstream.base_url, dimensions=4
    )
    assert upstream.requests_seen[-1].body == {
        "model": "text-embedding-3-small",
        "input": value,
        "dimensions": 4,
    }
    assert len(response.data) == count
    assert all(len(item.embedding) == 4 for item in response.data)
    assert response.model == "openai/text-embedding-3-small"
    assert response.usage.prompt_tokens == count


async def test_embedding_base64_stays_base64(upstream: FakeUpstream) -> None:
    response = await gateway.aembedding(
        "openai/e", ["abc"], api_base=upstream.base_url, encoding_format="base64"
    )
    assert upstream.requests_seen[-1].body["encoding_format"] == "base64"
    encoded = response.data[0].embedding
    assert isinstance(encoded, str)
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (3.0, 0.625, 0.75)


async def test_image_generation(upstream: FakeUpstream) -> None:
    response = await gateway.aimage_generation(
        "a cat", model="openai/dall-e-3", api_base=upstream.base_url, n=2, size="256x256"
    )
    assert upstream.requests_seen[-1].body == {
        "model": "dall-e-3",
        "prompt": "a cat",
        "n": 2,
        "size": "256x256",
    }
    assert [d.url for d in response.data] == [
        "https://images.fake.invalid/0.png",
        "https://images.fake.invalid/1.png",
    ]
    assert response.data[0].revised_prompt == "a cat (revised)"
    assert response.size == "256x256"
    b64 = await gateway.aimage_generation(
        "a dog", model="openai/x", api_base=upstream.base_url, response_format="b64_json"
    )
    assert base64.b64decode(b64.data[0].b64_json) == b"fake-png-0"


# Sync library calls.


def test_sync_calls_work_and_close_their_client(upstream: FakeUpstream) -> None:
    base = upstream.base_url
    response = gateway.completion("openai/x", MESSAGES, api_base=base)
    assert response.choices[0].message.content == "Hello from the fake upstream"
    chunks = list(gateway.completion("openai/x", MESSAGES, api_base=base, stream=True))
    assert stream_chunk_builder(chunks).choices[0].message.content == (
        "Hello from the fake upstream"
    )
    assert len(gateway.embedding("openai/e", ["a", "b"], api_base=base).data) == 2
    assert gateway.image_generation("p", model="openai/i", api_base=base).data[0].url
    with pytest.raises(errors.RateLimitError):
        gateway.completion("openai/x", MESSAGES, api_base=base, fake={"status": 429})
    assert len(upstream.requests_seen) == 5
    # Sync calls share the process's event-loop thread, whose session stays open for
    # the next one; none is left for the collector unclosed (aiohttp would warn).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert not [w for w in caught if "nclosed" in str(w.message)]


# The seed's test-model: openai/text-embedding-ada-002 with no api_base.


async def test_seed_test_model_without_key_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(errors.AuthenticationError) as info:
        await gateway.aembedding("openai/text-embedding-ada-002", "hello")
    assert "OPENAI_API_KEY" in info.value.message
    assert info.value.status_code == 401


async def test_seed_test_model_without_network_fails_fast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This machine has no network: the name does not resolve, or no route exists.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-a-real-key-000")
    started = time.monotonic()
    with pytest.raises((errors.APIConnectionError, errors.GatewayTimeoutError)) as info:
        await gateway.aembedding("openai/text-embedding-ada-002", "hello")
    assert time.monotonic() - started < 10
    assert info.value.retryable
    assert "api.openai.com" not in info.value.message  # named in the log only
    assert "sk-not-a-real-key-000" not in info.value.message
