"""Legacy ``/v1/completions``, ``/v1/models/{id}`` and embeddings' ``encoding_format``
on a live gateway, driven by the official ``openai`` SDK."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

import gateway
from gateway import CustomLLM
from gateway.app import create_app
from tests.fake_upstream import ServerHandle, serve_in_thread
from tests.frontdoor_handlers import HANDLERS, MASTER_KEY, SEEN, config

if TYPE_CHECKING:
    import openai
else:  # imported on first use (tests/lazy_import.py says why)
    from tests.lazy_import import openai


class Vectors(CustomLLM):
    async def aembedding(self, *args: Any, **kwargs: Any) -> Any:
        inputs = kwargs["input"] if isinstance(kwargs["input"], list) else [kwargs["input"]]
        return [[float(len(text)), 0.5, -1.25] for text in inputs]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    data = config()
    data["model_list"].append({"model_name": "vectors", "litellm_params": {"model": "vectors/m"}})
    data["litellm_settings"]["custom_provider_map"].append(
        {"provider": "vectors", "custom_handler": Vectors()}
    )
    with serve_in_thread(create_app(data), loop="uvloop", http="httptools") as handle:
        yield handle


@pytest.fixture
def client(server: ServerHandle) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=MASTER_KEY, max_retries=0) as c:
        yield c


def test_plain_completion(client: openai.OpenAI) -> None:
    c = client.completions.create(model="echo", prompt="Say hi", max_tokens=5, temperature=0)
    assert c.object == "text_completion"
    assert c.id.startswith("cmpl-")
    assert c.model == "echo"
    [choice] = c.choices
    assert (choice.text, choice.index, choice.finish_reason) == ("echo: Say hi", 0, "stop")
    assert c.usage is not None and c.usage.total_tokens == 30
    assert SEEN.last["messages"] == [{"role": "user", "content": "Say hi"}]
    assert SEEN.last["optional_params"]["max_tokens"] == 5


def test_list_of_prompts_and_echo(client: openai.OpenAI) -> None:
    c = client.completions.create(model="sync", prompt=["a", "b", "c"], echo=True)
    assert [(ch.index, ch.text) for ch in c.choices] == [
        (0, "async: a"),
        (1, "bsync: b"),
        (2, "csync: c"),
    ]
    assert c.usage is not None and c.usage.total_tokens == 90


def test_streamed_completion(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model="streamer", prompt="count", stream=True, stream_options={"include_usage": True}
        )
    )
    texts = [ch.choices[0].text for ch in chunks if ch.choices]
    assert texts == ["one ", "two ", "three", ""]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert len({ch.id for ch in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 10
    # A sync-only handler streams too (on a worker thread).
    synced = client.completions.create(model="sync", prompt="x", stream=True)
    assert "".join(ch.choices[0].text for ch in synced) == "sync stream"


def test_completion_errors(client: openai.OpenAI, server: ServerHandle) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model="failing", prompt="x")
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="echo", prompt=[1, 2, 3])
    assert info.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="echo", prompt="x", suffix="y")
    assert info.value.param == "suffix"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="echo", prompt=["a"] * 17)
    assert info.value.param == "prompt"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="echo", prompt=["a", "b"], stream=True)
    # One failing prompt of several fails the request with that prompt's error.
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model="failing", prompt=["a", "b"])
    r = httpx.post(  # the bare alias
        f"{server.url}/completions",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json={"model": "echo", "prompt": "bare"},
    )
    assert r.json()["choices"][0]["text"] == "echo: bare"


def test_error_mid_stream_is_an_sse_error(server: ServerHandle) -> None:
    r = httpx.post(
        f"{server.url}/v1/completions",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json={"model": "failing", "prompt": "x", "stream": True},
    )
    blocks = [b for b in r.text.split("\n\n") if b]
    assert '"text":"partial "' in blocks[0]
    assert blocks[-1].startswith('data: {"error":') and "died mid-stream" in blocks[-1]


def test_model_by_id(client: openai.OpenAI) -> None:
    model = client.models.retrieve("echo")
    assert (model.id, model.object, model.owned_by) == ("echo", "model", "gateway")
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"
    assert set(HANDLERS) <= {m.id for m in client.models.list()}


def test_model_ids_with_slashes(server: ServerHandle) -> None:
    r = httpx.get(
        f"{server.url}/models/org/no-such", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{server.url}/v1/models/echo").status_code == 401


def _floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_embeddings_encoding_format(client: openai.OpenAI, server: ServerHandle) -> None:
    # The SDK asks for base64 and decodes it itself.
    e = client.embeddings.create(model="vectors", input=["abc", "de"])
    assert [d.embedding for d in e.data] == [[3.0, 0.5, -1.25], [2.0, 0.5, -1.25]]
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    url = f"{server.url}/v1/embeddings"
    r = httpx.post(url, headers=headers, json={"model": "vectors", "input": "abcd"})
    assert r.json()["data"][0]["embedding"] == [4.0, 0.5, -1.25]
    body = {"model": "vectors", "input": "abcd", "encoding_format": "base64"}
    encoded = httpx.post(url, headers=headers, json=body).json()["data"][0]["embedding"]
    assert isinstance(encoded, str) and _floats(encoded) == [4.0, 0.5, -1.25]
    body["encoding_format"] = "float"
    assert httpx.post(url, headers=headers, json=body).json()["data"][0]["embedding"] == [
        4.0,
        0.5,
        -1.25,
    ]
    body["encoding_format"] = "int8"
    r = httpx.post(url, headers=headers, json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "encoding_format"


def test_base64_of_a_handler_string_is_kept() -> None:
    from gateway.endpoints import _base64_floats

    assert _base64_floats("AACAPw==") == "AACAPw=="
    assert _floats(_base64_floats([1.0, -2.5])) == [1.0, -2.5]
    assert gateway.EmbeddingResponse(data=[{"embedding": "AACAPw=="}]).data[0].embedding == (
        "AACAPw=="
    )
