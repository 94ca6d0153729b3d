"""The OpenAI-compatible provider through the HTTP gateway, with the official SDK as client.

Three real servers on loopback: the fake upstream, the gateway (uvicorn with uvloop and
httptools, as the CLI runs it) and, for the chain, a second gateway in front of the first.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import msgspec
import pytest

from gateway.app import GatewayApp, create_app
from tests.fake_upstream import FakeUpstream, ServerHandle, run_fake_upstream, serve_in_thread

if TYPE_CHECKING:
    import openai
else:  # imported on first use (tests/lazy_import.py says why)
    from tests.lazy_import import openai

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MESSAGES = [{"role": "user", "content": "hi"}]
UPSTREAM_KEY = "sk-upstream-secret-0123456789"


def _config(base_url: str) -> dict[str, Any]:
    def deployment(name: str, model: str, **params: Any) -> dict[str, Any]:
        return {
            "model_name": name,
            "litellm_params": {
                "model": model,
                "api_base": base_url,
                "api_key": UPSTREAM_KEY,
                **params,
            },
        }

    return {
        "model_list": [
            deployment("m", "openai/upstream-model", extra_headers={"x-deployment": "m"}),
            deployment("vllm", "hosted_vllm/meta-llama", extra_body={"top_k": 5}),
            deployment("emb", "openai/text-embedding-3-small"),
            deployment("img", "openai/dall-e-3"),
            deployment("quick", "openai/upstream-model", timeout=0.3),
            {
                "model_name": "keyless",
                "litellm_params": {"model": "openai/upstream-model", "api_base": base_url},
            },
            {
                "model_name": "down",
                "litellm_params": {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1"},
            },
        ],
        "gateway_settings": {
            "upstream": {
                "max_connections": 500,
                "max_keepalive_connections": 50,
                "max_response_bytes": 2 * 2**20,
                "max_event_bytes": 2**20,
            }
        },
    }


@pytest.fixture(scope="module")
def upstream_server() -> Iterator[FakeUpstream]:
    with run_fake_upstream() as upstream:
        yield upstream


@pytest.fixture
def upstream(upstream_server: FakeUpstream) -> FakeUpstream:
    upstream_server.reset()
    return upstream_server


@pytest.fixture(scope="module")
def gateway_server(upstream_server: FakeUpstream) -> Iterator[ServerHandle]:
    app = create_app(_config(upstream_server.base_url))
    with serve_in_thread(app, loop="uvloop", http="httptools") as handle:
        yield handle


@pytest.fixture(scope="module")
def chained_server(gateway_server: ServerHandle) -> Iterator[ServerHandle]:
    """A second gateway whose upstream is the first gateway."""
    config = {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{name}",
                    "api_base": gateway_server.url + "/v1",
                    "api_key": "sk-gateway-one-key",
                },
            }
            for name in ("m", "emb", "img")
        ]
    }
    with serve_in_thread(create_app(config), loop="uvloop", http="httptools") as handle:
        yield handle


@pytest.fixture
async def client(gateway_server: ServerHandle) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gateway_server.url + "/v1", api_key="client-key", max_retries=0
    ) as sdk:
        yield sdk


def _stats(server: ServerHandle) -> dict[str, int]:
    """The upstream pool of the app's own clients, read on the server's loop."""
    app = server.server.config.app
    assert isinstance(app, GatewayApp)

    async def stats() -> dict[str, int]:
        return app.runtime.http.pool_stats()

    return server.call(stats)


async def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    # Polls: the deadline is only reached when the test fails, so it is generous enough
    # for a loaded machine running the suite on several workers.
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        await anyio.sleep(0.01)


# Chat.


async def test_chat_json(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    response = await client.chat.completions.create(
        model="m", messages=MESSAGES, temperature=0.3, extra_body={"custom_flag": True}
    )
    assert response.choices[0].message.content == "Hello from the fake upstream"
    assert response.model == "m"
    seen = upstream.requests_seen[-1]
    assert seen.body["model"] == "upstream-model"
    assert seen.body["temperature"] == 0.3 and seen.body["custom_flag"] is True
    # The deployment's key and headers go upstream; the client's key never does.
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert seen.headers["x-deployment"] == "m"
    assert "client-key" not in str(seen.headers)


async def test_hosted_vllm_alias_and_extra_body(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    response = await client.chat.completions.create(model="vllm", messages=MESSAGES)
    assert response.model == "vllm"
    assert upstream.requests_seen[-1].body["model"] == "meta-llama"
    assert upstream.requests_seen[-1].body["top_k"] == 5


async def test_stream_passes_fields_through(
    gateway_server: ServerHandle, upstream: FakeUpstream
) -> None:
    body = {
        "model": "m",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "fake": {"extras": True},
    }
    async with (
        httpx.AsyncClient(base_url=gateway_server.url) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [msgspec.json.decode(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {"m"}
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) == 5
    for chunk in content:
        assert chunk["x_fake_field"] == "kept"
        assert chunk["system_fingerprint"] == "fp_fake"
        delta = chunk["choices"][0]["delta"]
        assert delta["reasoning_content"].startswith("thought") and "x_delta_field" in delta
        assert chunk["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.5
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


async def test_stream_with_sdk_and_tool_calls_reassemble(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_body={"fake": {"tools": True}}
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                slot = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += delta.id or ""
                slot["name"] += (delta.function and delta.function.name) or ""
                slot["arguments"] += (delta.function and delta.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert calls == {
        0: {
            "id": "call_weather",
            "name": "get_weather",
            "arguments": '{"city": "Paris", "unit": "c"}',
        },
        1: {"id": "call_time", "name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
    }


async def test_first_chunk_reaches_the_client_while_the_upstream_still_streams(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    # No buffering in between: the first chunk is relayed while the upstream has more to
    # send. (How much time the gateway adds is measured in benchmarks/, scenario proxy.)
    fake = {"chunks": 2, "interval": 0.3}
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_body={"fake": fake}
    )
    open_at_arrival = [
        upstream.open_requests
        async for chunk in stream
        if chunk.choices and chunk.choices[0].delta.content
    ]
    assert open_at_arrival[0] == 1, open_at_arrival  # the second chunk is 0.3 s away


async def _body_sends(app: GatewayApp, fake: dict[str, Any]) -> list[bytes]:
    """The body messages the app sends for one streamed request (scripted ASGI, so each
    ``send`` is seen as it is, not as a client's reads merge them)."""
    body = msgspec.json.encode({"model": "m", "messages": MESSAGES, "stream": True, "fake": fake})
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    return [m["body"] for m in sent[1:]]


async def test_events_of_one_upstream_read_go_out_in_one_send(
    upstream_server: FakeUpstream,
) -> None:
    app = create_app(_config(upstream_server.base_url))
    # Every event in one upstream write (so one read here): one send for all of them,
    # the same bytes as one send each.
    together = await _body_sends(app, {"chunks": 12, "one_write": True})
    apart = await _body_sends(app, {"chunks": 12, "interval": 0.02})
    assert len(together) <= 3, together
    assert len(apart) >= 12, apart

    def choices(sends: list[bytes]) -> list[Any]:
        events = b"".join(sends).split(b"\n\n")
        assert events[-2:] == [b"data: [DONE]", b""]
        return [msgspec.json.decode(e.removeprefix(b"data: "))["choices"] for e in events[:-2]]

    assert len(choices(together)) == 14  # the role, 12 pieces and the finish chunk
    assert choices(together) == choices(apart)


# Disconnects and the pool.


async def test_client_disconnect_closes_upstream_within_a_second(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, gateway_server: ServerHandle
) -> None:
    stream = await client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        stream=True,
        extra_body={"fake": {"chunks": 2000, "interval": 0.01}},
    )
    got = 0
    async for _ in stream:
        got += 1
        if got == 5:
            break
    await stream.close()
    closed_at = time.monotonic()
    await _wait_for(lambda: upstream.disconnects, timeout=30)
    seen = upstream.disconnects[0]
    assert seen.disconnected is not None and seen.disconnected - closed_at < 1.0
    assert seen.chunks_sent < 2000
    await _wait_for(lambda: upstream.open_requests == 0, timeout=30)
    stats = _stats(gateway_server)
    assert stats["active"] == 0 and stats["requests"] == 0


async def test_disconnect_while_waiting_for_json_closes_upstream(
    gateway_server: ServerHandle, upstream: FakeUpstream
) -> None:
    body = {"model": "m", "messages": MESSAGES, "fake": {"hang": True}}
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        with anyio.move_on_after(0.3):
            await http.post("/v1/chat/completions", json=body)
    gone_at = time.monotonic()
    await _wait_for(lambda: upstream.disconnects, timeout=30)
    assert upstream.disconnects[0].disconnected - gone_at < 1.0  # type: ignore[operator]


async def test_200_concurrent_streams_leak_no_connections(
    gateway_server: ServerHandle, upstream: FakeUpstream
) -> None:
    before = _stats(gateway_server)
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    texts: list[str] = []
    async with (
        # The SDK over aiohttp's pool (gateway.http_client()'s stack): httpx's own spent
        # more CPU on 200 streams than the gateway and the upstream together.
        httpx.AsyncClient(timeout=30, transport=AiohttpTransport(limits=limits)) as http,
        openai.AsyncOpenAI(
            base_url=gateway_server.url + "/v1", api_key="k", max_retries=0, http_client=http
        ) as sdk,
    ):

        async def one() -> None:
            stream = await sdk.chat.completions.create(
                model="m",
                messages=MESSAGES,
                stream=True,
                extra_body={"fake": {"chunks": 5, "interval": 0.05}},
            )
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            texts.append("".join(parts))

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(one)
    after = _stats(gateway_server)
    print(f"gateway upstream pool before {before}, after {after}")
    print(f"upstream saw at most {upstream.max_open_requests} requests at once")
    assert texts == ["tok0 tok1 tok2 tok3 tok4 "] * 200
    assert upstream.max_open_requests > 50  # they overlapped
    assert after["active"] == 0 and after["requests"] == 0
    assert after["idle"] == after["connections"]  # every one back in the pool
    # ... which keeps the configured keep-alive cap once idle TRIM_AFTER (1 s): streams
    # that end together leave more idle for that long (gateway/_h1pool.py says why).
    await _wait_for(lambda: _stats(gateway_server)["connections"] <= 50, timeout=10)
    await _wait_for(lambda: upstream.open_requests == 0, timeout=30)


# Errors keep their meaning.


@pytest.mark.parametrize(
    ("status", "sdk_error"),
    [
        (400, "BadRequestError"),
        (401, "AuthenticationError"),
        (403, "PermissionDeniedError"),
        (404, "NotFoundError"),
        (422, "UnprocessableEntityError"),
        (429, "RateLimitError"),
        (500, "InternalServerError"),
        (503, "InternalServerError"),
    ],
)
async def test_upstream_status_reaches_the_client(
    client: openai.AsyncOpenAI, status: int, sdk_error: str
) -> None:
    fake = {"status": status, "message": f"upstream says {status}", "retry_after": 3}
    with pytest.raises(getattr(openai, sdk_error)) as info:
        await client.chat.completions.create(
            model="m", messages=MESSAGES, extra_body={"fake": fake}
        )
    error = info.value
    assert error.status_code == status  # type: ignore[attr-defined]
    assert error.body["message"] == f"upstream says {status}"  # type: ignore[attr-defined]
    if status == 429:
        assert error.response.headers["retry-after"] == "3"  # type: ignore[attr-defined]


async def test_upstream_status_before_first_chunk_of_a_stream(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_body={"fake": {"status": 429}}
        )
    assert info.value.status_code == 429


async def test_upstream_key_is_redacted(client: openai.AsyncOpenAI) -> None:
    fake = {"status": 401, "message": f"Incorrect API key provided: {UPSTREAM_KEY}"}
    with pytest.raises(openai.AuthenticationError) as info:
        await client.chat.completions.create(
            model="m", messages=MESSAGES, extra_body={"fake": fake}
        )
    assert UPSTREAM_KEY not in str(info.value.body)
    assert "[REDACTED]" in info.value.body["message"]  # type: ignore[index]


async def test_unreachable_upstream_is_502(
    client: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="down", messages=MESSAGES)
    assert info.value.status_code == 502
    assert info.value.body["type"] == "api_connection_error"  # type: ignore[index]
    # The api_base is the operator's to know: in the log, not in the answer.
    assert "127.0.0.1" not in str(info.value.body)
    assert "http://127.0.0.1:9/v1/chat/completions" in caplog.text


async def test_upstream_error_detail_is_logged_not_sent(
    client: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake = {"status": 502, "message": "proxy http://10.0.0.7:8000/v1 refused " + "y" * 600}
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(
            model="m", messages=MESSAGES, extra_body={"fake": fake}
        )
    assert info.value.status_code == 502
    message = info.value.body["message"]  # type: ignore[index]
    assert "10.0.0.7" not in message and len(message) <= 300
    assert "http://10.0.0.7:8000/v1" in caplog.text
    assert UPSTREAM_KEY not in caplog.text


# A request never picks what the operator pays for.


async def test_extra_body_and_headers_cannot_override_the_deployment(
    gateway_server: ServerHandle, upstream: FakeUpstream
) -> None:
    body = {
        "model": "vllm",
        "messages": MESSAGES,
        "extra_body": {
            "model": "gpt-4-expensive",
            "messages": [{"role": "user", "content": "something else"}],
            "stream": True,
            "api_base": "http://127.0.0.1:9/v1",
            "top_k": 99,  # the deployment's extra_body sets it: it stays 5
            "new_field": 1,  # only adding is allowed
        },
        "extra_headers": {"Authorization": "Bearer stolen", "api-key": "stolen", "Host": "x"},
    }
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        answer = await http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"  # not turned into a stream
    seen = upstream.requests_seen[-1]
    assert seen.body["model"] == "meta-llama"
    assert seen.body["messages"] == MESSAGES
    assert "stream" not in seen.body and "api_base" not in seen.body
    assert seen.body["top_k"] == 5 and seen.body["new_field"] == 1
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "api-key" not in seen.headers and "stolen" not in str(seen.headers)
    assert seen.headers["host"].startswith("127.0.0.1:")


async def test_library_extra_headers_never_set_credentials(upstream: FakeUpstream) -> None:
    import gateway

    await gateway.acompletion(
        "openai/x",
        MESSAGES,
        api_base=upstream.base_url,
        api_key="sk-deployment",
        extra_headers={"Authorization": "Bearer other", "API-Key": "k", "x-trace": "t1"},
        extra_body={"model": "gpt-4-expensive", "seed": 7},
    )
    seen = upstream.requests_seen[-1]
    assert seen.headers["authorization"] == "Bearer sk-deployment"
    assert "api-key" not in seen.headers and seen.headers["x-trace"] == "t1"
    assert seen.body["model"] == "x" and seen.body["seed"] == 7


async def test_environment_key_never_reaches_a_self_hosted_upstream(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-operators-openai-key")
    await client.chat.completions.create(model="keyless", messages=MESSAGES)
    assert "authorization" not in upstream.requests_seen[-1].headers


@pytest.mark.parametrize("garbage", ["html", "truncated", "short"])
async def test_broken_upstream_json_is_502(client: openai.AsyncOpenAI, garbage: str) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(
            model="m", messages=MESSAGES, extra_body={"fake": {"garbage": garbage}}
        )
    assert info.value.status_code == 502
    assert info.value.body["type"] == "upstream_error"  # type: ignore[index]


@pytest.mark.parametrize(
    "fake", [{"drop_after": 3}, {"garbage": "no_done"}, {"stream_error_after": 3}]
)
async def test_stream_broken_after_start_is_an_error_event(
    client: openai.AsyncOpenAI, fake: dict[str, Any]
) -> None:
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_body={"fake": fake}
    )
    received = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            received.append(chunk)
    assert received  # what arrived before the failure was relayed


async def test_hanging_upstream_times_out_per_request(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    cases = [("quick", {}), ("m", {"timeout": 0.3})]  # deployment timeout; request timeout

    async def one(model: str, extra: dict[str, Any], stream: bool) -> None:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(
                model=model,
                messages=MESSAGES,
                stream=stream,
                extra_body={"fake": {"hang": True}, **extra},
            )
        assert info.value.status_code in (408, 504)
        # 0.3 s configured; the default it must not fall back to is 600 s. The margin is
        # for a loaded machine (the suite runs on several workers), not for the gateway.
        assert time.monotonic() - started < 30

    async with anyio.create_task_group() as tg:  # at once: four timeouts, one wait
        for model, extra in cases:
            for stream in (False, True):
                tg.start_soon(one, model, extra, stream)
    await _wait_for(lambda: upstream.open_requests == 0, timeout=30)
    # Each timed-out request was dropped upstream. (At least: the upstream is shared by the
    # module, and a request an earlier test left hanging may be dropped in this window.)
    assert len(upstream.disconnects) >= 4


@pytest.mark.parametrize(
    ("fake", "stream", "setting"),
    [
        ({"big_body": 3 * 2**20}, False, "max_response_bytes"),
        ({"gzip_bomb": 16 * 2**20}, False, "max_response_bytes"),
        ({"huge_line": 200 * 2**20}, True, "max_event_bytes"),
    ],
    ids=["3MB-body", "gzip-bomb", "200MB-line"],
)
async def test_oversized_upstream_answers_are_502_by_the_configured_caps(
    client: openai.AsyncOpenAI,
    upstream: FakeUpstream,
    fake: dict[str, Any],
    stream: bool,
    setting: str,
) -> None:
    # The caps come from gateway_settings.upstream (2 MB and 1 MB here): a 3 MB answer
    # the library's defaults would take is refused by this app.
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=stream, extra_body={"fake": fake}
        )
    assert info.value.status_code == 502
    assert setting in info.value.body["message"]  # type: ignore[index]
    await _wait_for(lambda: upstream.open_requests == 0, timeout=30)


# Embeddings and images.


async def test_embeddings(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    # The SDK asks for base64 by default and decodes it itself: the string must survive.
    response = await client.embeddings.create(model="emb", input=["abc", "de"])
    assert upstream.requests_seen[-1].body["encoding_format"] == "base64"
    assert [d.embedding for d in response.data] == [[3.0, 0.625, 0.75], [2.25, 0.625, 0.75]]
    assert response.model == "emb"
    floats = await client.embeddings.create(
        model="emb", input=[[1, 2, 3]], encoding_format="float", dimensions=2
    )
    assert upstream.requests_seen[-1].body["input"] == [[1, 2, 3]]
    assert floats.data[0].embedding == [3.0, 0.625]
    single = await client.embeddings.create(model="emb", input="one", encoding_format="float")
    assert len(single.data) == 1


async def test_embeddings_raw_base64(gateway_server: ServerHandle) -> None:
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        response = await http.post(
            "/v1/embeddings", json={"model": "emb", "input": "abc", "encoding_format": "base64"}
        )
    encoded = response.json()["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (3.0, 0.625, 0.75)


async def test_images(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    response = await client.images.generate(model="img", prompt="a cat", n=2, size="256x256")
    assert [d.url for d in response.data or ()] == [
        "https://images.fake.invalid/0.png",
        "https://images.fake.invalid/1.png",
    ]
    assert upstream.requests_seen[-1].body == {
        "model": "dall-e-3",
        "prompt": "a cat",
        "n": 2,
        "size": "256x256",
    }
    assert response.size == "256x256"
    b64 = await client.images.generate(model="img", prompt="x", response_format="b64_json")
    assert base64.b64decode((b64.data or [])[0].b64_json or "") == b"fake-png-0"


# A chain: gateway -> gateway -> fake upstream.


async def test_chain_of_two_gateways(chained_server: ServerHandle, upstream: FakeUpstream) -> None:
    async with openai.AsyncOpenAI(
        base_url=chained_server.url + "/v1", api_key="k", max_retries=0
    ) as sdk:
        response = await sdk.chat.completions.create(model="m", messages=MESSAGES)
        assert response.choices[0].message.content == "Hello from the fake upstream"
        assert response.model == "m"
        assert upstream.requests_seen[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"

        stream = await sdk.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_body={"fake": {"tools": True}}
        )
        names = [
            call.function.name
            async for chunk in stream
            for choice in chunk.choices
            for call in choice.delta.tool_calls or ()
            if call.function and call.function.name
        ]
        assert names == ["get_weather", "get_time"]

        embedded = await sdk.embeddings.create(model="emb", input="abc")
        assert embedded.data[0].embedding == [3.0, 0.625, 0.75]
        image = await sdk.images.generate(model="img", prompt="p")
        assert (image.data or [])[0].url == "https://images.fake.invalid/0.png"

        with pytest.raises(openai.RateLimitError) as info:
            await sdk.chat.completions.create(
                model="m",
                messages=MESSAGES,
                extra_body={"fake": {"status": 429, "retry_after": 9, "message": "busy"}},
            )
        assert info.value.response.headers["retry-after"] == "9"
        assert info.value.body["message"] == "busy"  # type: ignore[index]


# The seed's test-model: openai/text-embedding-ada-002 without api_base.


@pytest.fixture
def example_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerHandle]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with serve_in_thread(create_app(str(EXAMPLES / "config.yaml"))) as handle:
        yield handle


async def test_seed_test_model_fails_clearly_without_key(example_server: ServerHandle) -> None:
    async with openai.AsyncOpenAI(
        base_url=example_server.url + "/v1", api_key="k", max_retries=0
    ) as sdk:
        started = time.monotonic()
        with pytest.raises(openai.AuthenticationError) as info:
            await sdk.embeddings.create(model="test-model", input="hello")
    assert time.monotonic() - started < 5
    assert "OPENAI_API_KEY" in info.value.body["message"]  # type: ignore[index]


# The clients belong to the app.


def test_each_app_owns_its_upstream_clients_and_closes_them(
    upstream_server: FakeUpstream,
) -> None:
    apps = [create_app(_config(upstream_server.base_url)) for _ in range(2)]
    pools = []
    with serve_in_thread(apps[0]) as first, serve_in_thread(apps[1]) as second:
        for app, handle in zip(apps, (first, second), strict=True):
            answer = httpx.post(
                handle.url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}
            )
            assert answer.status_code == 200

            async def pool(app: GatewayApp = app) -> Any:
                return app.runtime.http.upstream_pool()

            pools.append(handle.call(pool))
            assert not pools[-1].closed
        assert pools[0] is not pools[1]
    assert all(p.closed for p in pools)  # each app's shutdown closed its own


def test_environment_proxies_are_used_only_when_configured(
    upstream_server: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second fake upstream plays the proxy: it answers what reaches it.
    with run_fake_upstream() as proxy:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url.removesuffix("/v1"))
        for trust_env, via_proxy in ((False, False), (True, True)):
            upstream_server.reset()
            proxy.reset()
            config = _config(upstream_server.base_url)
            config["gateway_settings"]["upstream"]["trust_env"] = trust_env
            with serve_in_thread(create_app(config)) as handle:
                answer = httpx.post(
                    handle.url + "/v1/chat/completions",
                    json={"model": "m", "messages": MESSAGES},
                    trust_env=False,
                )
            assert answer.status_code == 200, answer.text
            assert bool(proxy.requests_seen) is via_proxy, trust_env
            assert bool(upstream_server.requests_seen) is not via_proxy, trust_env
