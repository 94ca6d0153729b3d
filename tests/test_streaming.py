"""Every streaming return form becomes OpenAI chunks sharing one id."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import msgspec
import pytest

import gateway
from gateway.types import GenericStreamingChunk, ModelResponseStream


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The library runs on either anyio backend."""
    return request.param


USER = [{"role": "user", "content": "hi"}]


def chunk(text: str = "", *, finished: bool = False, **extra: Any) -> GenericStreamingChunk:
    item: GenericStreamingChunk = {
        "text": text,
        "tool_use": None,
        "is_finished": finished,
        "finish_reason": "stop" if finished else "",
        "usage": None,
        "index": 0,
    }
    item.update(extra)  # type: ignore[typeddict-item]
    return item


def register(name: str, handler: Any) -> None:
    gateway.custom_provider_map = [{"provider": name, "custom_handler": handler}]


def sync_handler(make: Callable[[], Any]) -> Any:
    class Handler(gateway.CustomLLM):
        def streaming(self, *args: Any, **kwargs: Any) -> Any:
            return make()

    return Handler()


def async_handler(make: Callable[[], Any]) -> Any:
    class Handler(gateway.CustomLLM):
        async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
            result = make()
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:
                single = isinstance(result, dict | str | msgspec.Struct)
                for item in [result] if single else result:
                    yield item

    return Handler()


def check_stream(chunks: list[Any], expected_text: str, finish: str = "stop") -> None:
    assert chunks, "empty stream"
    assert all(isinstance(c, ModelResponseStream) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert len({c.created for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    finishes = [c.choices[0].finish_reason for c in chunks]
    assert finishes[-1] == finish
    assert finishes[:-1] == [None] * (len(chunks) - 1)  # content chunks: null
    built = gateway.stream_chunk_builder(chunks)
    assert (built.choices[0].message.content or "") == expected_text
    assert built.choices[0].finish_reason == finish
    assert built.id == chunks[0].id


async def collect(model: str, **kwargs: Any) -> list[Any]:
    stream = await gateway.acompletion(model, USER, stream=True, **kwargs)
    return [c async for c in stream]


def _gen() -> Any:
    yield chunk("Hel")
    yield chunk("lo")
    yield chunk(finished=True)


async def _agen() -> Any:
    for piece in ("Hel", "lo"):
        await anyio.sleep(0)
        yield chunk(piece)


def _stream_objects() -> list[Any]:
    return [
        ModelResponseStream(choices=[{"delta": {"content": "Hel"}}]),
        ModelResponseStream(choices=[{"delta": {"content": "lo"}}]),
        ModelResponseStream(choices=[{"delta": {}, "finish_reason": "stop"}]),
    ]


FORMS: dict[str, Callable[[], Any]] = {
    "single_dict": lambda: chunk("Hello", finished=True),
    "single_chunk_unfinished": lambda: chunk("Hello"),
    "generator": _gen,
    "async_generator": _agen,
    "list_of_strings": lambda: ["Hel", "lo"],
    "generator_of_strings": lambda: (s for s in ["Hel", "lo"]),
    "single_string": lambda: "Hello",
    "stream_objects": _stream_objects,
    "openai_dicts": lambda: [
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
    ],
    "whole_response": lambda: gateway.ModelResponse(choices=[{"message": {"content": "Hello"}}]),
}


@pytest.mark.parametrize("form", sorted(FORMS))
async def test_sync_streaming_forms(form: str) -> None:
    register("p", sync_handler(FORMS[form]))
    check_stream(await collect("p/m"), "Hello")
    check_stream(list(gateway.completion("p/m", USER, stream=True)), "Hello")


@pytest.mark.parametrize("form", sorted(FORMS))
async def test_async_streaming_forms(form: str) -> None:
    register("p", async_handler(FORMS[form]))
    check_stream(await collect("p/m"), "Hello")
    check_stream(list(gateway.completion("p/m", USER, stream=True)), "Hello")


async def test_astreaming_may_return_an_iterator_from_a_coroutine() -> None:
    class Handler(gateway.CustomLLM):
        async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
            return _agen()

    register("p", Handler())
    check_stream(await collect("p/m"), "Hello")


async def test_tool_use_chunks_become_tool_calls() -> None:
    def make() -> Any:
        call = {"id": "call_1", "type": "function", "index": 0}
        yield chunk(tool_use={**call, "function": {"name": "get_weather", "arguments": '{"ci'}})
        yield chunk(tool_use={**call, "function": {"name": "", "arguments": 'ty": "Oslo"}'}})
        yield chunk(finished=True)

    register("p", sync_handler(make))
    for chunks in (await collect("p/m"), list(gateway.completion("p/m", USER, stream=True))):
        check_stream(chunks, "", finish="tool_calls")
        first = chunks[0].choices[0].delta
        assert first.tool_calls[0]["function"]["name"] == "get_weather"
        assert first.tool_calls[0]["index"] == 0
        built = gateway.stream_chunk_builder(chunks)
        (tool,) = built.choices[0].message.tool_calls
        assert tool["id"] == "call_1"
        assert tool["function"].model_dump() == {
            "name": "get_weather",
            "arguments": '{"city": "Oslo"}',
        }
        assert tool.function.name == "get_weather"  # attribute access, as in LiteLLM
        wire = json.loads(msgspec.json.encode(chunks[0]))
        assert wire["choices"][0]["delta"]["tool_calls"][0]["type"] == "function"


async def test_include_usage_without_a_report_sends_no_made_up_zeros() -> None:
    # The handler reports no usage: the stream says nothing rather than 0/0/0.
    register("p", sync_handler(lambda: [chunk("a"), chunk("b", finished=True)]))
    for chunks in (
        await collect("p/m", stream_options={"include_usage": True}),
        list(gateway.completion("p/m", USER, stream=True, stream_options={"include_usage": True})),
    ):
        check_stream(chunks, "ab")
        assert all(c.choices for c in chunks)  # no usage-only chunk
        assert all(json.loads(msgspec.json.encode(c))["usage"] is None for c in chunks)


async def test_absent_fields_read_as_none_not_unset() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    register("p", sync_handler(lambda: [chunk("a"), chunk("b", finished=True, usage=usage)]))
    chunks = await collect("p/m", stream_options={"include_usage": True})
    *content, last = chunks
    finish = content[-1].choices[0].delta
    # What LiteLLM users read: None for what a chunk does not carry.
    assert finish.content is None and finish.role is None and finish.tool_calls is None
    assert content[1].choices[0].delta.role is None
    assert last.usage.prompt_tokens_details is None
    assert last.usage.completion_tokens_details is None
    for c in chunks:
        for value in (*msgspec.structs.astuple(c.usage or gateway.Usage()),):
            assert value is not msgspec.UNSET
        for choice in c.choices:
            assert msgspec.UNSET not in msgspec.structs.astuple(choice.delta)
    # ... while the JSON still leaves them out, as OpenAI sends it.
    assert json.loads(msgspec.json.encode(content[-1]))["choices"][0]["delta"] == {}
    assert json.loads(msgspec.json.encode(last))["usage"] == usage
    whole = gateway.completion("p/m", USER)
    assert whole.usage.prompt_tokens_details is None
    assert msgspec.json.decode(msgspec.json.encode(whole.usage)) == usage


async def test_include_usage_adds_a_final_usage_chunk() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    register("p", sync_handler(lambda: [chunk("a"), chunk("b", finished=True, usage=usage)]))
    for chunks in (
        await collect("p/m", stream_options={"include_usage": True}),
        list(gateway.completion("p/m", USER, stream=True, stream_options={"include_usage": True})),
    ):
        *content, last = chunks
        assert last.choices == []
        assert last.usage.model_dump() == usage
        assert last.id == content[0].id
        check_stream(content, "ab")
        # Before the last chunk usage is null on the wire, as OpenAI sends it.
        assert all(json.loads(msgspec.json.encode(c))["usage"] is None for c in content)

    # Without include_usage there is no usage chunk and no usage field.
    chunks = await collect("p/m")
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all("usage" not in json.loads(msgspec.json.encode(c)) for c in chunks)


async def test_finish_reason_from_the_handler_is_kept() -> None:
    register(
        "p", sync_handler(lambda: [chunk("cut"), chunk(finished=True, finish_reason="length")])
    )
    check_stream(await collect("p/m"), "cut", finish="length")


async def test_empty_stream_still_ends_properly() -> None:
    register("p", sync_handler(lambda: iter(())))
    chunks = await collect("p/m")
    assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"]
    assert chunks[0].choices[0].delta.role == "assistant"


async def test_each_stream_gets_its_own_id() -> None:
    register("p", sync_handler(lambda: ["x"]))
    first, second = await collect("p/m"), await collect("p/m")
    assert first[0].id != second[0].id


async def test_closing_a_stream_early_closes_the_handler_generator() -> None:
    closed: list[str] = []

    class Handler(gateway.CustomLLM):
        def streaming(self, *args: Any, **kwargs: Any) -> Any:
            try:
                for i in range(1000):
                    yield chunk(str(i))
            finally:
                closed.append("sync")

        async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
            try:
                for i in range(1000):
                    yield chunk(str(i))
            finally:
                closed.append("async")

    register("p", Handler())
    stream = await gateway.acompletion("p/m", USER, stream=True)
    async for _ in stream:
        break
    await stream.aclose()
    assert closed == ["async"]

    sync_stream = gateway.completion("p/m", USER, stream=True)
    next(sync_stream)
    sync_stream.close()
    assert closed == ["async", "sync"]


async def test_error_inside_a_stream_is_a_gateway_error() -> None:
    def broken() -> Any:
        yield chunk("partial")
        raise gateway.CustomLLMError(status_code=503, message="backend went away")

    register("p", sync_handler(broken))
    received: list[Any] = []
    with pytest.raises(gateway.CustomLLMError) as info:
        async for c in await gateway.acompletion("p/m", USER, stream=True):
            received.append(c)
    assert info.value.status_code == 503
    assert gateway.stream_chunk_builder(received).choices[0].message.content == "partial"


async def test_invalid_stream_item_is_a_clear_error() -> None:
    register("p", sync_handler(lambda: [object()]))
    with pytest.raises(gateway.BadGatewayError, match="invalid chunk"):
        await collect("p/m")
    with pytest.raises(gateway.BadGatewayError, match="invalid chunk"):
        list(gateway.completion("p/m", USER, stream=True))


def test_stream_chunk_builder_accepts_dicts() -> None:
    chunks = [
        {"id": "chatcmpl-1", "created": 7, "model": "m", "choices": [{"delta": {"content": "a"}}]},
        {"id": "chatcmpl-1", "choices": [{"delta": {"content": "b"}, "finish_reason": "stop"}]},
        {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 1, "total_tokens": 1}},
    ]
    built = gateway.stream_chunk_builder(chunks)
    assert built.id == "chatcmpl-1" and built.created == 7 and built.model == "m"
    assert built.choices[0].message.content == "ab"
    assert built.usage.total_tokens == 1
