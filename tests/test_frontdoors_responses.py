"""``/v1/responses`` on a live gateway, driven by the official ``openai`` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from gateway.app import create_app
from tests.fake_upstream import ServerHandle, serve_in_thread
from tests.frontdoor_handlers import MASTER_KEY, SEEN, WEATHER_ARGS, config

if TYPE_CHECKING:
    import openai
else:  # imported on first use (tests/lazy_import.py says why)
    from tests.lazy_import import openai

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with serve_in_thread(create_app(config()), loop="uvloop", http="httptools") as handle:
        yield handle


@pytest.fixture
def client(server: ServerHandle) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=MASTER_KEY, max_retries=0) as c:
        yield c


def test_plain_async_handler(client: openai.OpenAI) -> None:
    r = client.responses.create(model="echo", input="hello", instructions="Be brief.")
    assert r.output_text == "echo: hello"
    assert r.id.startswith("resp_")
    assert r.object == "response"
    assert r.status == "completed"
    assert r.model == "echo"
    assert r.instructions == "Be brief."
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (10, 20, 30)
    [item] = r.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert SEEN.last["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    # Stored by default, and retrievable as it was sent.
    again = client.responses.retrieve(r.id)
    assert again.model_dump() == r.model_dump()


def test_parameters_are_translated(client: openai.OpenAI) -> None:
    client.responses.create(
        model="echo",
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "input_text", "text": "bonjour"}]},
        ],
        max_output_tokens=50,
        temperature=0.2,
        text={"format": {"type": "json_object"}},
        extra_body={"custom_knob": 3},
    )
    seen = SEEN.last
    assert seen["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "bonjour"},
    ]
    params = seen["optional_params"]
    assert params["max_tokens"] == 50
    assert params["temperature"] == 0.2
    assert params["response_format"] == {"type": "json_object"}
    assert params["custom_knob"] == 3  # unknown fields pass through, as on chat
    assert "max_output_tokens" not in params and "store" not in params


def test_sync_only_handler(client: openai.OpenAI) -> None:
    assert client.responses.create(model="sync", input="hi").output_text == "sync: hi"
    with client.responses.stream(model="sync", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "sync stream"


def test_stream_with_the_sdk_event_iterator(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="streamer", input="count", stream=True))
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "one two three"
    )
    completed = events[-1].response
    assert completed.output_text == "one two three"
    assert completed.id == events[0].response.id
    assert completed.usage is not None and completed.usage.input_tokens == 7
    assert SEEN.last["optional_params"]["stream"] is True
    # A streamed response is stored too.
    assert client.responses.retrieve(completed.id).output_text == "one two three"


def test_stream_of_a_handler_without_streaming(client: openai.OpenAI) -> None:
    with client.responses.stream(model="echo", input="whole") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "echo: whole"


def test_function_tool_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(model="tools", input="Weather in Paris?", tools=[WEATHER_TOOL])
    [call] = first.output
    assert call.type == "function_call"
    assert (call.name, call.arguments, call.call_id) == ("get_weather", WEATHER_ARGS, "call_w1")
    assert SEEN.last["optional_params"]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER_TOOL["parameters"],
            },
        }
    ]
    second = client.responses.create(
        model="tools",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER_TOOL],
    )
    assert second.output_text == "It is sunny (call_w1)"
    assert second.previous_response_id == first.id
    assert SEEN.last["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": WEATHER_ARGS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "sunny"},
    ]


def test_streamed_function_call(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="tools", input="Weather in Paris?", tools=[WEATHER_TOOL]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    arg_deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(arg_deltas) == WEATHER_ARGS and len(arg_deltas) == 2
    message, call = final.output
    assert message.type == "message" and final.output_text == "Let me check. "
    assert call.type == "function_call"
    assert (call.name, call.arguments, call.call_id) == ("get_weather", WEATHER_ARGS, "call_s1")
    # The whole input can also be sent back, without previous_response_id.
    answer = client.responses.create(
        model="tools",
        stream=True,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "rainy"},
        ],
    )
    done = [e for e in answer if e.type == "response.completed"]
    assert done[0].response.output_text == "It is rainy"


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model="echo", input="one", instructions="first rules")
    second = client.responses.create(
        model="echo", input="two", previous_response_id=first.id, instructions="second rules"
    )
    assert second.output_text == "echo: two"
    # Instructions do not carry over; the conversation does.
    assert SEEN.last["messages"] == [
        {"role": "system", "content": "second rules"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "echo: one"},
        {"role": "user", "content": "two"},
    ]
    third = client.responses.create(model="echo", input="three", previous_response_id=second.id)
    assert third.output_text == "echo: three"
    assert len(SEEN.last["messages"]) == 5


def test_unknown_or_unstored_previous_response(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="echo", input="x", previous_response_id="resp_nope")
    assert info.value.code == "previous_response_not_found"
    assert info.value.param == "previous_response_id"
    unstored = client.responses.create(model="echo", input="secret", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="echo", input="x", previous_response_id=unstored.id)


def test_delete(client: openai.OpenAI) -> None:
    r = client.responses.create(model="echo", input="bye")
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_errors(client: openai.OpenAI, server: ServerHandle) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="x")
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="failing", input="x")
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="echo", input="x", tools=[{"type": "web_search"}])
    assert info.value.param == "tools[0].type"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="echo", input=[{"type": "item_reference", "id": "x"}])
    assert info.value.param == "input[0].type"
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.responses.create(model="echo", input="x")
    r = httpx.post(
        f"{server.url}/responses",  # the bare alias
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json={"model": "echo"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "input"


def test_failure_mid_stream_is_response_failed(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="failing", input="x", stream=True))
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.message == "died mid-stream"
    assert failed.output_text == "partial "


def test_curl_shape(server: ServerHandle) -> None:
    r = httpx.post(
        f"{server.url}/v1/responses",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json={"model": "streamer", "input": "hi", "stream": True},
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in r.text.split("\n\n") if b]
    first_event, first_data = blocks[0].split("\n")
    assert first_event == "event: response.created"
    assert json.loads(first_data.removeprefix("data: "))["type"] == "response.created"
    assert blocks[-1].startswith("event: response.completed")


def test_stored_responses_are_served_only_to_the_same_key() -> None:
    data = config()
    del data["general_settings"]  # no master key: any key is let in, and each is its own
    with serve_in_thread(create_app(data)) as handle:
        url = f"{handle.url}/v1"
        with (
            openai.OpenAI(base_url=url, api_key="sk-alice", max_retries=0) as alice,
            openai.OpenAI(base_url=url, api_key="sk-bob", max_retries=0) as bob,
        ):
            mine = alice.responses.create(model="echo", input="private")
            assert alice.responses.retrieve(mine.id).output_text == "echo: private"
            with pytest.raises(openai.NotFoundError):
                bob.responses.retrieve(mine.id)
            with pytest.raises(openai.BadRequestError):
                bob.responses.create(model="echo", input="x", previous_response_id=mine.id)
            with pytest.raises(openai.NotFoundError):
                bob.responses.delete(mine.id)
            alice.responses.create(model="echo", input="more", previous_response_id=mine.id)
        # No key at all is an owner of its own too.
        r = httpx.get(f"{url}/responses/{mine.id}")
        assert r.status_code == 404
