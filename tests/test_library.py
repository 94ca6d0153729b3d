"""The library calls: mock_response, batches, get_llm_provider, embeddings and images."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import httpx
import pytest

import gateway
from gateway._threads import run_async
from tests.fake_upstream import serve_in_thread


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The library runs on either anyio backend."""
    return request.param


USER = [{"role": "user", "content": "hi"}]


class Untouchable(gateway.CustomLLM):
    """Serves everything, and fails the test if it is ever called."""

    calls = 0

    def _called(self) -> Any:
        Untouchable.calls += 1
        raise AssertionError("mock_response must not call the handler")

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        return self._called()

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        return self._called()

    def streaming(self, *args: Any, **kwargs: Any) -> Any:
        return self._called()

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        self._called()
        yield None

    def embedding(self, *args: Any, **kwargs: Any) -> Any:
        return self._called()

    def image_generation(self, *args: Any, **kwargs: Any) -> Any:
        return self._called()


@pytest.fixture
def untouchable() -> type[Untouchable]:
    Untouchable.calls = 0
    gateway.custom_provider_map = [{"provider": "my-custom-llm", "custom_handler": Untouchable()}]
    return Untouchable


MODELS = ["my-custom-llm/my-model", "gpt-3.5-turbo", "test/unixtime", "not-registered/x"]


# mock_response


@pytest.mark.parametrize("model", MODELS)
async def test_mock_response_string(model: str, untouchable: type[Untouchable]) -> None:
    for resp in (
        gateway.completion(model, USER, mock_response="Hi!"),
        await gateway.acompletion(model, USER, mock_response="Hi!"),
    ):
        assert isinstance(resp, gateway.ModelResponse)
        assert resp.choices[0].message.content == "Hi!"
        assert resp.choices[0].message.role == "assistant"
        assert resp.choices[0].finish_reason == "stop"
        assert resp.model == model
        usage = resp.usage
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 20, 30)
    assert untouchable.calls == 0


async def test_mock_response_without_messages() -> None:
    # As UnixTimeLLM calls it: no messages at all.
    resp = await gateway.acompletion(model="test/unixtime", mock_response="123")
    assert resp.choices[0].message.content == "123"


async def test_mock_response_dict(untouchable: type[Untouchable]) -> None:
    answer = {
        "id": "chatcmpl-fixed",
        "choices": [{"message": {"role": "assistant", "content": "from a dict"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    resp = gateway.completion("my-custom-llm/m", USER, mock_response=answer)
    assert resp.id == "chatcmpl-fixed"
    assert resp.choices[0].message.content == "from a dict"
    assert resp.usage.total_tokens == 3
    stream = await gateway.acompletion("my-custom-llm/m", USER, mock_response=answer, stream=True)
    chunks = [c async for c in stream]
    assert gateway.stream_chunk_builder(chunks).choices[0].message.content == "from a dict"
    assert untouchable.calls == 0


async def test_mock_response_exception(untouchable: type[Untouchable]) -> None:
    error = gateway.RateLimitError("mocked limit")
    with pytest.raises(gateway.RateLimitError) as info:
        gateway.completion("my-custom-llm/m", USER, mock_response=error)
    assert info.value is error
    with pytest.raises(gateway.RateLimitError):
        await gateway.acompletion("gpt-3.5-turbo", USER, mock_response=error)
    with pytest.raises(gateway.InternalServerError, match="plain failure"):
        await gateway.acompletion("x/y", USER, mock_response=ValueError("plain failure"))
    with pytest.raises(gateway.RateLimitError):
        list(gateway.completion("x/y", USER, mock_response=error, stream=True))
    assert untouchable.calls == 0


@pytest.mark.parametrize("model", MODELS)
async def test_mock_response_stream(model: str, untouchable: type[Untouchable]) -> None:
    text = "Hello there, this is a mocked stream."
    for chunks in (
        list(gateway.completion(model, USER, mock_response=text, stream=True)),
        [c async for c in await gateway.acompletion(model, USER, mock_response=text, stream=True)],
    ):
        assert len(chunks) > 3  # small deltas, not one blob
        assert len({c.id for c in chunks}) == 1
        assert all(isinstance(c, gateway.ModelResponseStream) for c in chunks)
        assert all(c.model == model for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
        assert gateway.stream_chunk_builder(chunks).choices[0].message.content == text
    assert untouchable.calls == 0


async def test_mock_stream_include_usage() -> None:
    stream = await gateway.acompletion(
        "x/y", USER, mock_response="a b", stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == 30


async def test_mock_delay() -> None:
    start = time.monotonic()
    gateway.completion("x/y", USER, mock_response="late", mock_delay=0.2)
    assert time.monotonic() - start >= 0.2

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        resp = await gateway.acompletion("x/y", USER, mock_response="late", mock_delay=0.2)
        tg.cancel_scope.cancel()
    assert time.monotonic() - start >= 0.2
    assert resp.choices[0].message.content == "late"
    assert ticks >= 3  # the async delay does not block the loop


def test_mock_embedding_and_image(untouchable: type[Untouchable]) -> None:
    emb = gateway.embedding("my-custom-llm/e", ["a", "b"], mock_response=True)
    assert [d.index for d in emb.data] == [0, 1]
    assert all(isinstance(x, float) for x in emb.data[0].embedding)
    image = gateway.image_generation(
        "p", model="my-custom-llm/i", mock_response="https://example.com/i.png"
    )
    assert image.data[0].url == "https://example.com/i.png"
    assert untouchable.calls == 0


# Batches


class Echo(gateway.CustomLLM):
    def __init__(self) -> None:
        super().__init__()
        self.active = 0
        self.peak = 0

    async def acompletion(self, model: str, messages: list[Any], **kwargs: Any) -> Any:
        content = messages[-1]["content"]
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if content == "fail":
                await anyio.sleep(0.01)
                raise gateway.CustomLLMError(status_code=429, message="rate limited")
            # Later inputs finish first: order must come from the input, not completion.
            await anyio.sleep(0.02 * (10 - int(content)))
            return f"echo {content}"
        finally:
            self.active -= 1


def conversations(*contents: str) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": c}] for c in contents]


async def test_abatch_completion_keeps_input_order() -> None:
    handler = Echo()
    gateway.register_provider("echo", handler)
    results = await gateway.abatch_completion("echo/m", conversations(*"0123456789"))
    assert [r.choices[0].message.content for r in results] == [f"echo {i}" for i in range(10)]
    assert handler.peak > 1  # concurrently, not one by one


async def test_abatch_failure_does_not_cancel_the_others() -> None:
    gateway.register_provider("echo", Echo())
    results = await gateway.abatch_completion("echo/m", conversations("1", "fail", "3"))
    assert results[0].choices[0].message.content == "echo 1"
    assert isinstance(results[1], gateway.CustomLLMError)
    assert results[1].status_code == 429
    assert results[2].choices[0].message.content == "echo 3"


async def test_abatch_max_concurrency() -> None:
    handler = Echo()
    gateway.register_provider("echo", handler)
    results = await gateway.abatch_completion("echo/m", conversations(*"987654"), max_concurrency=2)
    assert len(results) == 6
    assert handler.peak == 2


def test_batch_completion_sync() -> None:
    gateway.register_provider("echo", Echo())
    results = gateway.batch_completion("echo/m", conversations("5", "fail", "7"), temperature=0)
    assert results[0].choices[0].message.content == "echo 5"
    assert isinstance(results[1], gateway.GatewayError)
    assert results[2].choices[0].message.content == "echo 7"
    mocked = gateway.batch_completion("any/m", conversations("a", "b"), mock_response="m")
    assert [r.choices[0].message.content for r in mocked] == ["m", "m"]


# get_llm_provider


def test_get_llm_provider() -> None:
    gateway.custom_provider_map = [{"provider": "my-custom-llm", "custom_handler": Echo()}]
    assert gateway.get_llm_provider("my-custom-llm/my-model") == (
        "my-model",
        "my-custom-llm",
        None,
        None,
    )
    assert gateway.get_llm_provider(
        "my-custom-llm/org/model:v1", api_key="sk-1", api_base="http://127.0.0.1:1"
    ) == ("org/model:v1", "my-custom-llm", "sk-1", "http://127.0.0.1:1")
    assert gateway.get_llm_provider("my-model", custom_llm_provider="my-custom-llm")[:2] == (
        "my-model",
        "my-custom-llm",
    )


async def test_custom_llm_provider_argument() -> None:
    gateway.register_provider("echo", Echo())
    resp = await gateway.acompletion(
        "3", [{"role": "user", "content": "3"}], custom_llm_provider="echo"
    )
    assert resp.choices[0].message.content == "echo 3"


# Responses are stamped with the model asked for


async def test_response_model_is_the_requested_model() -> None:
    class Named(gateway.CustomLLM):
        def completion(self, *args: Any, **kwargs: Any) -> Any:
            return gateway.ModelResponse(model="internal-name", choices=[{"message": {}}])

    gateway.register_provider("named", Named())
    assert gateway.completion("named/public", USER).model == "named/public"
    assert (await gateway.acompletion("named/public", USER)).model == "named/public"


def test_handler_may_use_the_sync_api_from_a_worker_thread() -> None:
    # The seed's Quick Start handler calls gateway.completion inside its completion.
    seen: list[str] = []

    class Nested(gateway.CustomLLM):
        def completion(self, *args: Any, **kwargs: Any) -> Any:
            seen.append(threading.current_thread().name)
            return gateway.completion("gpt-3.5-turbo", USER, mock_response="nested")

    gateway.register_provider("nested", Nested())
    resp = anyio.run(gateway.acompletion, "nested/m", USER)
    assert resp.choices[0].message.content == "nested"
    assert seen and seen[0] != threading.main_thread().name


# Sync calls of async-only handlers share one long-lived event loop


async def _pong(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"pong"})


class HoldsAnAsyncClient(gateway.CustomLLM):
    """Makes an httpx.AsyncClient on first use and keeps it, as handlers do."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: httpx.AsyncClient | None = None

    async def _get(self) -> str:
        if self.client is None:
            self.client = httpx.AsyncClient(base_url=self.url)
        return (await self.client.get("/")).text

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        return gateway.completion("x", USER, mock_response=await self._get())

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        yield await self._get()


def test_sync_calls_of_an_async_handler_keep_its_client_working() -> None:
    with serve_in_thread(_pong, lifespan="off") as server:
        handler = HoldsAnAsyncClient(server.url)
        gateway.register_provider("holds", handler)
        try:
            for _ in range(3):
                resp = gateway.completion("holds/m", USER, timeout=10)
                assert resp.choices[0].message.content == "pong"
                chunks = list(gateway.completion("holds/m", USER, stream=True))
                assert chunks[0].choices[0].delta.content == "pong"
        finally:
            if handler.client is not None:
                run_async(handler.client.aclose)
