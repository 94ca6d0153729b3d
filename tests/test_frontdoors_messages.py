"""``/v1/messages`` on a live gateway, driven by the official ``anthropic`` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gateway.app import create_app
from tests.fake_upstream import ServerHandle, serve_in_thread
from tests.frontdoor_handlers import MASTER_KEY, SEEN, WEATHER_ARGS, config

if TYPE_CHECKING:
    import anthropic
else:  # imported on first use (tests/lazy_import.py says why)
    from tests.lazy_import import anthropic

USER = [{"role": "user", "content": "hello"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with serve_in_thread(create_app(config()), loop="uvloop", http="httptools") as handle:
        yield handle


@pytest.fixture
def client(server: ServerHandle) -> Iterator[anthropic.Anthropic]:
    # The SDK sends the key as x-api-key, and anthropic-version on every request.
    with anthropic.Anthropic(base_url=server.url, api_key=MASTER_KEY, max_retries=0) as c:
        yield c


def test_plain_async_handler(client: anthropic.Anthropic) -> None:
    m = client.messages.create(
        model="echo",
        max_tokens=64,
        system="Be brief.",
        messages=USER,
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
        # As raw fields: SDK releases differ in which of these they take as arguments.
        extra_body={
            "temperature": 0.5,
            "service_tier": "auto",
            "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        },
    )
    assert m.id.startswith("msg_")
    assert (m.type, m.role, m.model) == ("message", "assistant", "echo")
    assert [(b.type, b.text) for b in m.content if b.type == "text"] == [("text", "echo: hello")]
    assert m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (10, 20)
    seen = SEEN.last
    assert seen["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    params = seen["optional_params"]
    assert params["max_tokens"] == 64
    assert params["stop"] == ["END"]
    assert params["temperature"] == 0.5
    assert params["user"] == "u-1"
    assert params["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": {"type": "object"}, "strict": True},
    }
    assert "service_tier" not in params and "output_config" not in params


def test_sync_only_handler(client: anthropic.Anthropic) -> None:
    m = client.messages.create(model="sync", max_tokens=10, messages=USER)
    assert m.content[0].type == "text" and m.content[0].text == "sync: hello"
    with client.messages.stream(model="sync", max_tokens=10, messages=USER) as stream:
        assert "".join(stream.text_stream) == "sync stream"


def test_stream_true_event_order(client: anthropic.Anthropic) -> None:
    events = list(
        client.messages.create(model="streamer", max_tokens=10, messages=USER, stream=True)
    )
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK drops ping events
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == (
        "one two three"
    )
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == 3 and delta.usage.input_tokens == 7


def test_stream_helper_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="streamer", max_tokens=10, messages=USER) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "one two three"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3


def test_stream_of_a_handler_without_streaming(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="echo", max_tokens=10, messages=USER) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "echo: hello"


def _round_trip(first: Any, result: str) -> list[dict[str, Any]]:
    tool_use = next(b for b in first.content if b.type == "tool_use")
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": tool_use.id, "content": result},
            ],
        },
    ]


def test_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    question = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.messages.create(
        model="tools",
        max_tokens=100,
        messages=question,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
    )
    assert first.stop_reason == "tool_use"
    [block] = first.content
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == ("call_w1", "get_weather", {"city": "Paris"})
    params = SEEN.last["optional_params"]
    assert params["tool_choice"] == "required"
    assert params["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "The weather in a city",
            },
        }
    ]
    second = client.messages.create(
        model="tools", max_tokens=100, messages=_round_trip(first, "sunny"), tools=[WEATHER_TOOL]
    )
    assert second.content[0].type == "text"
    assert second.content[0].text == "It is sunny (call_w1)"
    # The tool's input goes back as compact JSON arguments.
    assert SEEN.last["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "sunny"},
    ]


def test_streamed_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    question = [{"role": "user", "content": "Weather in Paris?"}]
    with client.messages.stream(
        model="tools", max_tokens=100, messages=question, tools=[WEATHER_TOOL]
    ) as stream:
        events = list(stream)
        first = stream.get_final_message()
    partials = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert "".join(partials) == WEATHER_ARGS and len(partials) == 2
    assert first.stop_reason == "tool_use"
    text, tool_use = first.content
    assert text.type == "text" and text.text == "Let me check. "
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == (
        "call_s1",
        "get_weather",
        {"city": "Paris"},
    )
    with client.messages.stream(
        model="tools", max_tokens=100, messages=_round_trip(first, "rainy"), tools=[WEATHER_TOOL]
    ) as stream:
        answer = stream.get_final_message()
    assert answer.content[0].type == "text" and answer.content[0].text == "It is rainy"


def test_errors_raise_the_sdk_classes(client: anthropic.Anthropic, server: ServerHandle) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="nope", max_tokens=10, messages=USER)
    assert info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):  # before a stream starts: a plain error
        client.messages.create(model="nope", max_tokens=10, messages=USER, stream=True)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="failing", max_tokens=10, messages=USER)
    with pytest.raises(anthropic.InternalServerError) as down:
        client.messages.create(model="down", max_tokens=10, messages=USER, stream=True)
    assert down.value.status_code == 503
    assert down.value.body["error"]["type"] == "overloaded_error"
    with anthropic.Anthropic(base_url=server.url, api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as auth:
            bad.messages.create(model="echo", max_tokens=10, messages=USER)
    assert auth.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Invalid API key"},
        "request_id": auth.value.response.headers["x-request-id"],
    }
    with pytest.raises(anthropic.BadRequestError) as bad_block:
        client.messages.create(
            model="echo",
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}],
        )
    assert "messages[0].content[0]" in bad_block.value.message


def test_error_mid_stream_is_an_error_event(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError, match="died mid-stream"):
        with client.messages.stream(model="failing", max_tokens=10, messages=USER) as stream:
            stream.get_final_message()


def test_curl_without_the_sdk(server: ServerHandle) -> None:
    headers = {"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01"}
    # max_tokens is required, as in Anthropic's API; the error is in its shape.
    r = httpx.post(
        f"{server.url}/v1/messages", headers=headers, json={"model": "echo", "messages": USER}
    )
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    # The bare alias, and its raw event stream: ping included.
    r = httpx.post(
        f"{server.url}/messages",
        headers=headers,
        json={"model": "streamer", "max_tokens": 5, "messages": USER, "stream": True},
    )
    assert r.status_code == 200
    names = [b.split("\n")[0] for b in r.text.split("\n\n") if b]
    assert names[:2] == ["event: message_start", "event: ping"]
    assert names[-1] == "event: message_stop"
    last = r.text.strip().split("\n\n")[-1].split("\n")[1]
    assert json.loads(last.removeprefix("data: ")) == {"type": "message_stop"}
    # No key at all: 401 in Anthropic's shape.
    r = httpx.post(
        f"{server.url}/v1/messages", json={"model": "echo", "max_tokens": 5, "messages": USER}
    )
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_count_tokens(client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(model="echo", messages=USER)
    longer = client.messages.count_tokens(
        model="echo",
        system="You are a careful assistant. " * 20,
        messages=USER,
        tools=[WEATHER_TOOL],
    )
    assert 0 < short.input_tokens < longer.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="nope", messages=USER)
