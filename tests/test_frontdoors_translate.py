"""The front doors' translations as pure functions: no server, no handler."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

import gateway
from gateway.errors import BadGatewayError, BadRequestError, InternalServerError, NotFoundError
from gateway.frontdoors import completions, messages, responses
from gateway.frontdoors.store import ResponseStore
from gateway.streaming import StreamState


def _chunks(*items: Any, text: bool = True) -> list[Any]:
    """What the router hands a front door: handler items normalised to chat chunks
    (its front-door mode, ``text``: text chunks as the text itself; else as chunk
    objects, as a library stream has them)."""
    state = StreamState("m", include_usage=True, raw_dicts=text, plain_text=text)
    out = [c for item in items for c in state.feed(item)]
    return out + state.close()


def _generic(text: str = "", **extra: Any) -> dict[str, Any]:
    chunk = {
        "text": text,
        "tool_use": None,
        "is_finished": False,
        "finish_reason": "",
        "usage": None,
        "index": 0,
    }
    return {**chunk, **extra}


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            event, data = block.split("\n")
            out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


TOOL_ANSWER = gateway.ModelResponse(
    choices=[
        {
            "finish_reason": "tool_calls",
            "message": {
                "content": "Checking.",
                "tool_calls": [
                    {"id": "c1", "function": {"name": "f", "arguments": '{"x": 1}'}},
                    {"id": "c2", "function": {"name": "g", "arguments": ""}},
                ],
            },
        }
    ],
    usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
)


# -- responses ------------------------------------------------------------------------------


def _responses_request(**fields: Any) -> tuple[responses.ResponsesRequest, dict[str, Any]]:
    data = {"model": "m", "input": "hi", **fields}
    return msgspec.convert(data, responses.ResponsesRequest), data


def test_responses_request_to_chat() -> None:
    request, data = _responses_request(
        instructions="rules",
        input=[
            {"role": "developer", "content": "dev"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "see"},
                    {"type": "input_image", "image_url": "https://x/i.png", "detail": "low"},
                ],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "reasoning", "summary": []},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
        ],
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "f"},
        max_output_tokens=9,
        text={"format": {"type": "json_schema", "name": "s", "schema": {}, "strict": True}},
        reasoning={"effort": "low"},
        store=False,
        include=["x"],
        seed=4,
    )
    chat = responses.to_chat(request, data, [{"role": "user", "content": "earlier"}])
    assert chat.model == "m" and chat.stream is False
    assert chat.messages == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "earlier"},
        {"role": "system", "content": "dev"},
        {"role": "user", "content": "q"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "see"},
                {"type": "image_url", "image_url": {"url": "https://x/i.png", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": "a",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]
    assert chat.optional_params == {
        "seed": 4,
        "max_tokens": 9,
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "s", "schema": {}, "strict": True},
        },
        "reasoning_effort": "low",
    }


def test_responses_stream_asks_for_usage() -> None:
    request, data = _responses_request(stream=True)
    chat = responses.to_chat(request, data)
    assert chat.stream is True
    assert chat.optional_params == {"stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "audio"}]}]}, "input[0][0].type"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"text": {"format": {"type": "yaml"}}}, "text"),
        ({"background": True}, "background"),
    ],
)
def test_responses_bad_requests_name_the_field(fields: dict[str, Any], param: str) -> None:
    request, data = _responses_request(**fields)
    with pytest.raises(BadRequestError) as info:
        responses.to_chat(request, data)
    assert info.value.param == param


def test_chat_answer_to_response() -> None:
    request, _ = _responses_request(tools=[{"type": "function", "name": "f"}])
    r = responses.to_response(TOOL_ANSWER, request)
    assert r["object"] == "response" and r["status"] == "completed"
    message, f, g = r["output"]
    assert message["content"][0]["text"] == "Checking."
    assert (f["call_id"], f["name"], f["arguments"]) == ("c1", "f", '{"x": 1}')
    assert (g["call_id"], g["name"]) == ("c2", "g")
    assert r["usage"]["input_tokens"] == 3 and r["usage"]["total_tokens"] == 5
    assert responses.conversation(r) == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"x": 1}'},
                },
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}},
            ],
        }
    ]
    cut = gateway.completion(model="m", mock_response="abc")
    cut.choices[0].finish_reason = "length"
    r = responses.to_response(cut, request)
    assert r["status"] == "incomplete"
    assert r["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("text", [True, False])
def test_response_events_for_text_and_tool_calls(text: bool) -> None:
    request, _ = _responses_request()
    events = responses.ResponseEvents(request)
    tool = {"id": "c9", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
    sent = events.start()
    for chunk in _chunks(
        _generic("Hel"),
        _generic("lo"),
        _generic(tool_use={**tool, "index": 0}),
        _generic(tool_use={"function": {"arguments": ": 1}"}, "index": 0}),
        _generic(
            is_finished=True,
            finish_reason="tool_calls",
            usage={"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10},
        ),
        text=text,
    ):
        sent += events.feed(chunk)
    sent += events.close()
    decoded = _events(sent)
    assert [e for e, _ in decoded] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert all(data["type"] == event for event, data in decoded)
    assert [data["sequence_number"] for _, data in decoded] == list(range(len(decoded)))
    final = decoded[-1][1]["response"]
    assert final["status"] == "completed"
    message, call = final["output"]
    assert message["content"][0]["text"] == "Hello"
    assert (call["call_id"], call["arguments"], call["status"]) == ("c9", '{"a": 1}', "completed")
    assert final["usage"]["output_tokens"] == 6
    # The text deltas from the bytes template decode as the SDK expects them.
    delta = decoded[4][1]
    assert delta == {
        "type": "response.output_text.delta",
        "item_id": message["id"],
        "output_index": 0,
        "content_index": 0,
        "delta": "Hel",
        "logprobs": [],
        "sequence_number": 4,
    }
    # So do the closing events, made from templates: the same item and part as an
    # answer's, and the final response is the object the store keeps.
    assert message == responses.to_response(TOOL_ANSWER, request)["output"][0] | {
        "id": message["id"],
        "content": [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}],
    }
    ids = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    opened = {**message, "status": "in_progress", "content": []}
    assert decoded[2][1] == {
        "type": "response.output_item.added",
        "output_index": 0,
        "item": opened,
        "sequence_number": 2,
    }
    empty_part = {**message["content"][0], "text": ""}
    assert decoded[3][1] == {
        "type": "response.content_part.added",
        **ids,
        "part": empty_part,
        "sequence_number": 3,
    }
    assert decoded[9][1] == {
        "type": "response.output_text.done",
        **ids,
        "text": "Hello",
        "logprobs": [],
        "sequence_number": 9,
    }
    assert decoded[10][1] == {
        "type": "response.content_part.done",
        **ids,
        "part": message["content"][0],
        "sequence_number": 10,
    }
    assert decoded[11][1]["item"] == message and decoded[13][1]["item"] == call
    assert json.loads(events.body) == final
    assert events.response["output"] == final["output"]


def test_response_events_failure_and_empty_answer() -> None:
    request, _ = _responses_request()
    events = responses.ResponseEvents(request)
    events.start()
    events.feed(_chunks(_generic("part"))[0])
    [(kind, data)] = _events(events.fail(InternalServerError("boom")))
    assert kind == "response.failed"
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"] == {"code": "server_error", "message": "boom"}
    assert data["response"]["output"][0]["content"][0]["text"] == "part"
    empty = responses.ResponseEvents(request)
    decoded = _events(empty.start() + empty.close())
    assert decoded[-1][1]["response"]["output"][0]["content"][0]["text"] == ""


def test_response_store_bounds() -> None:
    store = ResponseStore(max_items=2, max_bytes=10_000)
    for name in ("a", "b", "c"):
        assert store.put({"id": name, "output": []}, [{"role": "user", "content": name}])
    assert store.get("a") is None and store.get("c") is not None and len(store) == 2
    before = store.bytes
    assert store.put({"id": "c", "output": []}, [])  # replacing one frees its bytes
    assert store.bytes < before
    assert not store.put({"id": "big", "output": ["x" * 20_000]}, [])
    small = ResponseStore(max_items=100, max_bytes=200)
    for i in range(10):
        small.put({"id": f"r{i}", "text": "y" * 40}, [])
    assert small.bytes <= 200 and small.get("r9") is not None and small.get("r0") is None
    assert small.delete("r9") and not small.delete("r9")
    owned = ResponseStore(max_items=10, max_bytes=10_000)
    owned.put({"id": "o"}, [], b"alice")
    assert owned.get("o") is None and owned.get("o", b"bob") is None
    assert owned.get("o", b"alice") is not None
    assert not owned.delete("o", b"bob") and owned.delete("o", b"alice")


# -- messages -------------------------------------------------------------------------------


def _messages_request(**fields: Any) -> tuple[messages.MessagesRequest, dict[str, Any]]:
    data = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    data.update(fields)
    return msgspec.convert(data, messages.MessagesRequest), data


def test_messages_request_to_chat() -> None:
    request, data = _messages_request(
        system=[{"type": "text", "text": "be "}, {"type": "text", "text": "nice"}],
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "t1", "name": "w", "input": {"c": "P"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "here:"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "sun"}],
                    },
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAA="},
                    },
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t2", "is_error": True}],
            },
        ],
        tools=[{"name": "w", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "w", "disable_parallel_tool_use": True},
        stop_sequences=["\n\n"],
        top_k=5,
        thinking={"type": "enabled", "budget_tokens": 100},
        stream=True,
    )
    chat = messages.to_chat(request, data)
    assert chat.messages == [
        {
            "role": "system",
            "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "nice"}],
        },
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "checking",
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"c":"P"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "sun"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "here:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA="}},
            ],
        },
        {"role": "tool", "tool_call_id": "t2", "content": "Error: "},
    ]
    assert chat.optional_params == {
        "top_k": 5,
        "max_tokens": 10,
        "stop": ["\n\n"],
        "tools": [
            {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "w"}},
        "parallel_tool_calls": False,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0].source",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        ({"tool_choice": {"type": "maybe"}}, "tool_choice"),
        ({"system": [{"type": "image"}]}, "system"),
    ],
)
def test_messages_bad_requests_name_the_field(fields: dict[str, Any], param: str) -> None:
    request, data = _messages_request(**fields)
    with pytest.raises(BadRequestError) as info:
        messages.to_chat(request, data)
    assert info.value.param == param


def test_chat_answer_to_message() -> None:
    m = messages.to_message(TOOL_ANSWER, "claude-ish")
    assert m["model"] == "claude-ish" and m["stop_reason"] == "tool_use"
    assert m["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 1}},
        {"type": "tool_use", "id": "c2", "name": "g", "input": {}},
    ]
    assert m["usage"]["input_tokens"] == 3 and m["usage"]["output_tokens"] == 2
    bad = gateway.ModelResponse(
        choices=[
            {"message": {"tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{"}}]}}
        ]
    )
    with pytest.raises(BadGatewayError, match="not JSON"):
        messages.to_message(bad, "m")
    for finish, reason in [("stop", "end_turn"), ("length", "max_tokens"), (None, "end_turn")]:
        answer = gateway.completion(model="m", mock_response="x")
        answer.choices[0].finish_reason = finish
        assert messages.to_message(answer, "m")["stop_reason"] == reason


@pytest.mark.parametrize("text", [True, False])
def test_message_events(text: bool) -> None:
    events = messages.MessageEvents("m")
    sent = events.start()
    tool = {"id": "t1", "type": "function", "function": {"name": "w", "arguments": '{"c":'}}
    for chunk in _chunks(
        _generic("Hi"),
        _generic(" there"),
        _generic(tool_use={**tool, "index": 0}),
        _generic(tool_use={"function": {"arguments": '"P"}'}, "index": 0}),
        _generic(
            is_finished=True,
            finish_reason="tool_calls",
            usage={"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10},
        ),
        text=text,
    ):
        sent += events.feed(chunk)
    sent += events.close()
    decoded = _events(sent)
    assert [e for e, _ in decoded] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == event for event, data in decoded)
    assert decoded[0][1]["message"]["id"] == events.id
    assert decoded[3][1] == {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hi"},
    }
    assert decoded[6][1]["content_block"] == {
        "type": "tool_use",
        "id": "t1",
        "name": "w",
        "input": {},
    }
    assert [d["delta"]["partial_json"] for _, d in decoded[7:9]] == ['{"c":', '"P"}']
    assert [d["index"] for _, d in decoded[6:10]] == [1, 1, 1, 1]
    assert decoded[10][1]["delta"]["stop_reason"] == "tool_use"
    assert decoded[10][1]["usage"] == {"input_tokens": 4, "output_tokens": 6}
    [(kind, data)] = _events(events.fail(NotFoundError("gone")))
    assert (kind, data) == (
        "error",
        {"type": "error", "error": {"type": "not_found_error", "message": "gone"}},
    )


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (408, "timeout_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
    ],
)
def test_anthropic_error_types(status: int, kind: str) -> None:
    body = json.loads(messages.error_body(gateway.CustomLLMError(status, "m")))
    assert body == {"type": "error", "error": {"type": kind, "message": "m"}}


def test_count_tokens_grows_with_the_prompt() -> None:
    def count(**fields: Any) -> int:
        data = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
        return messages.count_tokens(msgspec.convert(data, messages.CountTokensRequest))

    assert 0 < count() < count(system="x" * 400) < count(system="x" * 4000)
    assert count(tools=[{"name": "w", "input_schema": {"type": "object"}}]) > count()


# -- completions ----------------------------------------------------------------------------


def _completion_request(**fields: Any) -> tuple[completions.CompletionRequest, dict[str, Any]]:
    data = {"model": "m", "prompt": "p", **fields}
    return msgspec.convert(data, completions.CompletionRequest), data


def test_completion_request_to_chat() -> None:
    request, data = _completion_request(prompt=["a", "b"], max_tokens=3, echo=True, n=2)
    calls = completions.to_chat(request, data)
    assert [c.messages for c in calls] == [
        [{"role": "user", "content": "a"}],
        [{"role": "user", "content": "b"}],
    ]
    assert calls[0].optional_params == {"max_tokens": 3, "n": 2}
    assert calls[0].optional_params is not calls[1].optional_params


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": ["x"] * 17}, "prompt"),
        ({"suffix": "s"}, "suffix"),
        ({"logprobs": 2}, "logprobs"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": ["a", "b"], "stream": True}, "prompt"),
        ({"n": 2, "stream": True}, "n"),
    ],
)
def test_completion_bad_requests_name_the_field(fields: dict[str, Any], param: str) -> None:
    request, data = _completion_request(**fields)
    with pytest.raises(BadRequestError) as info:
        completions.to_chat(request, data)
    assert info.value.param == param


def test_chat_answers_to_completion() -> None:
    request, _ = _completion_request(prompt=["a", "b"], echo=True)
    two = gateway.ModelResponse(
        choices=[
            {"index": 0, "message": {"content": "x"}},
            {"index": 1, "finish_reason": "length", "message": {"content": "y"}},
        ],
        usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    )
    one = gateway.completion(model="m", mock_response="z")
    c = completions.to_completion([two, one], request)
    assert [(ch["index"], ch["text"], ch["finish_reason"]) for ch in c["choices"]] == [
        (0, "ax", "stop"),
        (1, "ay", "length"),
        (2, "bz", "stop"),
    ]
    assert c["usage"] == {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}


def test_completion_chunks() -> None:
    request, _ = _completion_request(echo=True, stream=True, stream_options={"include_usage": True})
    chunks = completions.CompletionChunks(request)
    sent = chunks.start()
    for chunk in _chunks(
        _generic("a"), _generic("b"), _generic(is_finished=True, finish_reason="length")
    ):
        sent += chunks.feed(chunk)
    sent += chunks.close()
    datas = [b.removeprefix(b"data: ") for b in sent.split(b"\n\n") if b]
    assert datas[-1] == b"[DONE]"
    decoded = [json.loads(d) for d in datas[:-1]]
    assert [d["choices"][0]["text"] for d in decoded[:-1]] == ["p", "a", "b", ""]
    assert [d["choices"][0]["finish_reason"] for d in decoded[:-1]] == [None, None, None, "length"]
    assert len({d["id"] for d in decoded}) == 1
    assert all(d["object"] == "text_completion" and d["model"] == "m" for d in decoded)
    assert decoded[-1]["choices"] == [] and decoded[-1]["usage"]["total_tokens"] == 0


@pytest.mark.parametrize("door", ["responses", "messages", "completions"])
def test_text_survives_every_stream_translation(door: str) -> None:
    pieces = ['say "hi"', "\n\ttab\\", "é😀 </script>", "\u2028end"]
    chunks = _chunks(*(_generic(p) for p in pieces))
    if door == "responses":
        events: Any = responses.ResponseEvents(_responses_request()[0])
    elif door == "messages":
        events = messages.MessageEvents("m")
    else:
        events = completions.CompletionChunks(_completion_request()[0])
    sent = events.start() + b"".join(events.feed(c) for c in chunks) + events.close()
    text = sent.decode()
    if door == "completions":
        datas = [json.loads(line[6:]) for line in text.split("\n\n") if line[6:7] == "{"]
        got = [d["choices"][0]["text"] for d in datas if d["choices"]]
    elif door == "responses":
        got = [d["delta"] for e, d in _events(sent) if e == "response.output_text.delta"]
    else:
        got = [d["delta"]["text"] for e, d in _events(sent) if e == "content_block_delta"]
    assert "".join(got) == "".join(pieces)


def test_a_front_doors_stream_hands_text_as_strings_to_every_reader() -> None:
    """The router's front-door mode: text chunks are the text itself, no chunk has a
    role; whatever counts or logs a stream reads them as the chat chunks they stand for."""
    from gateway._callback_requests import _chunk_data
    from gateway.keys.spend import chunk_usage
    from gateway.record import usage_of
    from gateway.router.streams import _chunk_tokens
    from gateway.streaming import stream_chunk_builder

    usage = {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    chunks = _chunks(
        _generic("Hel"),
        _generic("lo"),
        _generic(is_finished=True, finish_reason="stop", usage=usage),
    )
    assert chunks[:2] == ["Hel", "lo"]
    finish, usage_chunk = chunks[2:]
    assert isinstance(finish, gateway.ModelResponseStream) and finish.choices[0].delta.role is None
    assert [_chunk_tokens(c) for c in chunks] == [(None, 3), (None, 2), (None, 0), (10, 0)]
    assert [chunk_usage(c) for c in chunks] == [(None, 3), (None, 2), (None, 0), ((4, 6), 0)]
    assert usage_of("Hel") == (None, None) and usage_of(usage_chunk) == (4, 6)
    rebuilt = stream_chunk_builder([_chunk_data(c) for c in chunks], "m")
    assert rebuilt.choices[0].message.content == "Hello"
    assert rebuilt.choices[0].finish_reason == "stop"
    assert rebuilt.usage.total_tokens == 10
    # The chat endpoint's own stream is unchanged: pre-encoded text chunks.
    chat = StreamState("m", raw_dicts=True)
    assert [type(c) for c in chat.feed("a") + chat.feed("b")] == [
        gateway.ModelResponseStream,
        msgspec.Raw,
    ]


# Objects where the request Structs allow any value: each was a 500 (AttributeError on
# a string), found by fuzzing the front doors.
IMAGE_FROM_A_STRING = [{"role": "user", "content": [{"type": "image", "source": "x"}]}]


@pytest.mark.parametrize(
    ("door", "fields", "param"),
    [
        ("responses", {"text": {"format": "x"}}, "text"),
        ("messages", {"messages": IMAGE_FROM_A_STRING}, "messages[0].content[0].source"),
        ("messages", {"output_config": {"format": "x"}}, "output_config.format"),
    ],
)
def test_a_string_where_an_object_belongs_is_a_400(
    door: str, fields: dict[str, Any], param: str
) -> None:
    if door == "responses":
        request, data = _responses_request(**fields)
        call: Any = lambda: responses.to_chat(request, data)  # noqa: E731
    else:
        request, data = _messages_request(**fields)
        call = lambda: messages.to_chat(request, data)  # noqa: E731
    with pytest.raises(BadRequestError) as raised:
        call()
    assert raised.value.param == param
