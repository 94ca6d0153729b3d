"""Response types: OpenAI's JSON with one encoder call, LiteLLM-style access."""

from __future__ import annotations

import json
import re
import time
import typing
from typing import Any

import msgspec
import pytest

import gateway
from gateway.types import (
    EmbeddingResponse,
    GenericStreamingChunk,
    ImageObject,
    ImageResponse,
    ModelResponse,
    ModelResponseStream,
    Usage,
)

ENCODER = msgspec.json.Encoder()


def wire(value: Any) -> Any:
    return json.loads(ENCODER.encode(value))


def test_model_response_defaults_and_wire_shape() -> None:
    before = int(time.time())
    resp = ModelResponse()
    uuid4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert re.fullmatch(f"chatcmpl-{uuid4}", resp.id)
    assert before <= resp.created <= int(time.time())
    assert ModelResponse().id != resp.id
    assert wire(resp) == {
        "id": resp.id,
        "choices": [
            {
                "finish_reason": "stop",
                "index": 0,
                "message": {
                    "content": None,
                    "role": "assistant",
                    "tool_calls": None,
                    "function_call": None,
                },
            }
        ],
        "created": resp.created,
        "model": None,
        "object": "chat.completion",
        "system_fingerprint": None,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def test_nested_dicts_become_types() -> None:
    resp = ModelResponse(
        model="m",
        choices=[{"message": {"content": "hi", "role": "assistant"}, "finish_reason": "length"}],
        usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    )
    assert resp.choices[0].message.content == "hi"
    assert resp.choices[0].finish_reason == "length"
    assert isinstance(resp.usage, Usage) and resp.usage.total_tokens == 3
    # Decoding the wire form gives the same object back.
    assert msgspec.json.decode(ENCODER.encode(resp), type=ModelResponse) == resp
    assert msgspec.convert(resp.model_dump(), ModelResponse) == resp


def test_litellm_style_access() -> None:
    resp = ModelResponse(choices=[{"message": {"content": "hi"}}])
    assert resp.choices[0].message.content == "hi"
    assert resp["choices"][0]["message"]["content"] == "hi"
    assert resp.get("model") is None and resp.get("missing", 5) == 5
    assert "usage" in resp and "missing" not in resp
    with pytest.raises(KeyError):
        resp["missing"]
    dumped = resp.model_dump()
    assert isinstance(dumped, dict) and isinstance(dumped["choices"][0], dict)
    assert json.dumps(dumped)  # plain builtins only
    assert json.loads(resp.model_dump_json()) == wire(resp)
    assert resp.dict() == dumped and resp.json() == resp.model_dump_json()
    # Handlers fill in the model_response they are given, as with LiteLLM.
    resp.choices[0].message.content = "changed"
    resp.usage.total_tokens = 9
    assert wire(resp)["choices"][0]["message"]["content"] == "changed"
    assert wire(resp)["usage"]["total_tokens"] == 9


def test_stream_chunk_wire_shape() -> None:
    chunk = ModelResponseStream(id="chatcmpl-1", created=5, model="m")
    chunk.choices[0].delta.content = "x"
    assert wire(chunk) == {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
        "created": 5,
        "model": "m",
        "object": "chat.completion.chunk",
        "system_fingerprint": None,
    }
    final = ModelResponseStream(choices=[{"delta": {}, "finish_reason": "stop"}], usage=None)
    data = wire(final)
    assert data["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert data["usage"] is None
    usage_only = ModelResponseStream(choices=[], usage={"prompt_tokens": 1, "total_tokens": 1})
    assert wire(usage_only)["choices"] == []
    assert wire(usage_only)["usage"]["total_tokens"] == 1
    assert usage_only.usage.prompt_tokens == 1


def test_image_and_embedding_wire_shapes() -> None:
    image = ImageResponse(created=1721955063, data=[ImageObject(url="https://example.com/i.png")])
    assert wire(image) == {"created": 1721955063, "data": [{"url": "https://example.com/i.png"}]}
    assert image.data[0].url == "https://example.com/i.png"
    assert image.data[0].b64_json is None
    assert ImageResponse(data=[{"b64_json": "QQ=="}]).data[0].b64_json == "QQ=="

    emb = EmbeddingResponse(model="e", data=[{"embedding": [0.5, 1.0], "index": 0}])
    assert wire(emb) == {
        "object": "list",
        "data": [{"embedding": [0.5, 1.0], "index": 0, "object": "embedding"}],
        "model": "e",
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    assert emb.data[0].embedding == [0.5, 1.0]
    assert emb.model_dump()["data"][0]["object"] == "embedding"


def test_one_encoder_call_for_a_list_of_mixed_types() -> None:
    items = [ModelResponse(), ModelResponseStream(), ImageResponse(), EmbeddingResponse(), Usage()]
    decoded = wire(items)
    assert [d.get("object") for d in decoded] == [
        "chat.completion",
        "chat.completion.chunk",
        None,
        "list",
        None,
    ]


def test_types_are_msgspec_structs_and_the_chunk_a_typeddict() -> None:
    for cls in (ModelResponse, ModelResponseStream, ImageResponse, ImageObject,
                EmbeddingResponse, Usage):  # fmt: skip
        assert issubclass(cls, msgspec.Struct)
    assert typing.is_typeddict(GenericStreamingChunk)
    assert GenericStreamingChunk.__required_keys__ == {
        "text", "tool_use", "is_finished", "finish_reason", "usage", "index",
    }  # fmt: skip
    assert GenericStreamingChunk.__optional_keys__ == {"provider_specific_fields"}
    # A chunk is a plain dict.
    chunk: GenericStreamingChunk = {
        "text": "t",
        "tool_use": None,
        "is_finished": False,
        "finish_reason": "",
        "usage": None,
        "index": 0,
    }
    assert type(chunk) is dict


def test_litellm_pydantic_dump_of_a_chunk_is_accepted() -> None:
    # LiteLLM's Delta dumps absent fields as None; they must not become JSON nulls
    # nor fail validation.
    dumped = {
        "id": "x",
        "choices": [
            {
                "index": 0,
                "delta": {"content": "hi", "role": None, "tool_calls": None, "function_call": None},
                "finish_reason": None,
            }
        ],
    }
    gateway.custom_provider_map = [
        {"provider": "p", "custom_handler": _Streams([dumped])},
    ]
    chunks = list(gateway.completion("p/m", [], stream=True))
    assert wire(chunks[0])["choices"][0]["delta"] == {"role": "assistant", "content": "hi"}


class _Streams(gateway.CustomLLM):
    def __init__(self, items: list[Any]) -> None:
        super().__init__()
        self.items = items

    def streaming(self, *args: Any, **kwargs: Any) -> Any:
        return iter(self.items)


def test_image_fields_an_answer_lacks_read_as_none_and_stay_out_of_the_json() -> None:
    resp = gateway.ImageResponse(data=[{"url": "https://example.com/i.png"}])
    assert (resp.background, resp.output_format, resp.quality, resp.size) == (None,) * 4
    assert set(msgspec.json.decode(msgspec.json.encode(resp))) == {"created", "data"}
    sized = gateway.ImageResponse(size="1024x1024")
    assert msgspec.json.decode(msgspec.json.encode(sized))["size"] == "1024x1024"
