"""The official ``openai`` SDK against the real CLI serving examples/config.yaml."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
from test_cli import example_gateway

if TYPE_CHECKING:
    import openai
else:  # imported on first use (tests/lazy_import.py says why)
    from tests.lazy_import import openai


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with example_gateway() as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-1234", max_retries=0) as client:
        yield client


@pytest.fixture
async def aclient(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key="sk-1234", max_retries=0
    ) as client:
        yield client


MESSAGES = [{"role": "user", "content": 'Say "this is a test" in JSON!'}]


def test_seed_curl_call(base_url: str) -> None:
    # The seed's curl call, byte for byte the same body (trailing comma aside).
    r = httpx.post(
        f"{base_url}/chat/completions",
        headers={"Authorization": "Bearer sk-1234"},
        json={"model": "my-custom-model", "messages": MESSAGES},
    )
    assert r.status_code == 200
    data = r.json()
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert data["choices"] == [
        {
            "finish_reason": "stop",
            "index": 0,
            "message": {
                "content": "Hi!",
                "role": "assistant",
                "tool_calls": None,
                "function_call": None,
            },
        }
    ]
    assert data["model"] == "my-custom-model"
    assert data["system_fingerprint"] is None
    assert data["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}


def test_seed_image_call(base_url: str) -> None:
    r = httpx.post(
        f"{base_url}/v1/images/generations",
        headers={"Authorization": "Bearer sk-1234"},
        json={"model": "my-custom-model", "prompt": "A cute baby sea otter"},
    )
    assert r.status_code == 200
    assert r.json()["data"] == [{"url": "https://example.com/image.png"}]
    assert isinstance(r.json()["created"], int)


def test_sync_client_chat(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="my-custom-model", messages=MESSAGES)
    assert resp.choices[0].message.content == "Hi!"
    assert resp.model == "my-custom-model"


def test_sync_client_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="my-streaming-model", messages=MESSAGES, stream=True
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("You said:")
    assert "test" in text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_unixtime_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="my-unixtime-model", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.isdigit()
    assert chunks[-1].usage is not None and chunks[-1].choices == []


async def test_async_client(aclient: openai.AsyncOpenAI) -> None:
    resp = await aclient.chat.completions.create(model="my-custom-model", messages=MESSAGES)
    assert resp.choices[0].message.content == "Hi!"
    stream = await aclient.chat.completions.create(
        model="my-streaming-model", messages=MESSAGES, stream=True
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts).startswith("You said:")


def test_images_generate(client: openai.OpenAI) -> None:
    image = client.images.generate(model="my-custom-model", prompt="A cute baby sea otter")
    assert image.data[0].url == "https://example.com/image.png"


def test_embeddings_create(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="my-embedding-model", input=["hello", "world"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    assert result.data[0].embedding != result.data[1].embedding
    assert result.model == "my-embedding-model"


def test_models_list(client: openai.OpenAI) -> None:
    names = {m.id for m in client.models.list()}
    assert {"test-model", "my-custom-model", "my-streaming-model"} <= names


def test_sdk_sees_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="my-custom-model", messages="not a list")  # type: ignore[arg-type]
