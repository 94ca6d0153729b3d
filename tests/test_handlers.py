"""The handler contract: which method serves a call, what it is passed, duck typing."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import pytest

import gateway
from gateway.types import ModelResponse


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The library runs on either anyio backend."""
    return request.param


USER = [{"role": "user", "content": "hi"}]


def register(name: str, handler: Any) -> Any:
    gateway.custom_provider_map = [{"provider": name, "custom_handler": handler}]
    return handler


def text(resp: Any) -> Any:
    return resp.choices[0].message.content


# Method selection and fallbacks


class SyncOnly(gateway.CustomLLM):
    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.threads: list[int] = []
        self.lock = threading.Lock()
        self.running = self.peak = 0

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.get_ident())
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(self.delay)
        finally:
            with self.lock:
                self.running -= 1
        return "sync"


class AsyncOnly(gateway.CustomLLM):
    def __init__(self) -> None:
        super().__init__()
        self.loop_threads: list[int] = []

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        self.loop_threads.append(threading.get_ident())
        await anyio.sleep(0)
        return "async"


async def test_sync_only_handler_runs_on_worker_threads_concurrently() -> None:
    handler = register("slow", SyncOnly(delay=0.2))
    seen_running: list[int] = []  # handler calls in progress, as the event loop saw them
    done = anyio.Event()

    async def ticker() -> None:
        while not done.is_set():
            seen_running.append(handler.running)
            await anyio.sleep(0.01)

    results: list[Any] = [None] * 20

    async def one(i: int) -> None:
        results[i] = await gateway.acompletion("slow/m", USER)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with anyio.create_task_group() as calls:
            for i in range(20):
                calls.start_soon(one, i)
        done.set()

    assert [text(r) for r in results] == ["sync"] * 20
    # Side by side on worker threads, not one after another (how fast is for benchmarks/).
    assert handler.peak >= 5, handler.peak
    # The event loop ran while handlers slept in their threads: it was never blocked.
    assert max(seen_running) > 0, seen_running
    assert threading.get_ident() not in handler.threads
    assert len(handler.threads) == 20


async def test_sync_handlers_use_a_dedicated_limiter() -> None:
    active = peak = 0
    lock = threading.Lock()
    default = anyio.to_thread.current_default_thread_limiter()
    borrowed: list[float] = []

    class Counting(gateway.CustomLLM):
        def completion(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            borrowed.append(default.borrowed_tokens)
            time.sleep(0.1)
            with lock:
                active -= 1
            return "ok"

    register("counted", Counting())
    gateway.set_thread_limit(2, per_model=2)
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(gateway.acompletion, "counted/m", USER)
    finally:
        gateway.set_thread_limit(gateway._threads.DEFAULT_THREAD_LIMIT)
    assert peak == 2
    # anyio's shared default pool (Starlette's too) is left alone.
    assert set(borrowed) == {0}


def test_async_only_handler_via_sync_completion() -> None:
    handler = register("aonly", AsyncOnly())
    assert text(gateway.completion("aonly/m", USER)) == "async"
    assert len(handler.loop_threads) == 1


async def test_async_only_handler_via_sync_completion_inside_a_running_loop() -> None:
    # As the seed's handlers do: sync API called from code running on an event loop.
    register("aonly", AsyncOnly())
    assert text(gateway.completion("aonly/m", USER)) == "async"


async def test_async_call_prefers_the_async_method() -> None:
    calls: list[str] = []

    class Both(gateway.CustomLLM):
        def completion(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("completion")
            return "s"

        async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("acompletion")
            return "a"

    register("both", Both())
    assert text(await gateway.acompletion("both/m", USER)) == "a"
    assert text(gateway.completion("both/m", USER)) == "s"
    assert calls == ["acompletion", "completion"]


async def test_stream_without_streaming_method_streams_the_full_result() -> None:
    register("s", SyncOnly())
    chunks = list(gateway.completion("s/m", USER, stream=True))
    assert gateway.stream_chunk_builder(chunks).choices[0].message.content == "sync"
    assert all(isinstance(c, gateway.ModelResponseStream) for c in chunks)

    register("a", AsyncOnly())
    stream = await gateway.acompletion("a/m", USER, stream=True)
    chunks = [c async for c in stream]
    assert gateway.stream_chunk_builder(chunks).choices[0].message.content == "async"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_completion_from_a_streaming_only_handler() -> None:
    class StreamOnly(gateway.CustomLLM):
        def streaming(self, *args: Any, **kwargs: Any) -> Any:
            yield from ["to", "ge", "ther"]

    register("so", StreamOnly())
    assert text(gateway.completion("so/m", USER)) == "together"
    assert text(await gateway.acompletion("so/m", USER)) == "together"


async def test_handler_with_no_chat_method_is_a_clear_error() -> None:
    class ImagesOnly(gateway.CustomLLM):
        def image_generation(self, *args: Any, **kwargs: Any) -> Any:
            return {"data": [{"url": "u"}]}

    register("img", ImagesOnly())
    with pytest.raises(gateway.GatewayError, match="no completion method") as info:
        await gateway.acompletion("img/m", USER)
    assert info.value.status_code == 501
    with pytest.raises(gateway.GatewayError, match="no embedding method"):
        gateway.embedding("img/m", "x")


async def test_embedding_and_image_fallbacks() -> None:
    class Sync(gateway.CustomLLM):
        def embedding(self, model: str, input: Any, **kwargs: Any) -> Any:
            return [[float(len(s))] for s in input]

        def image_generation(self, *args: Any, **kwargs: Any) -> Any:
            return {"created": 1, "data": [{"url": "sync"}]}

    class Async(gateway.CustomLLM):
        async def aembedding(self, model: str, input: Any, **kwargs: Any) -> Any:
            return {"data": [{"embedding": [1.0], "index": 0}]}

        async def aimage_generation(self, *args: Any, **kwargs: Any) -> Any:
            return gateway.ImageResponse(data=[gateway.ImageObject(b64_json="QQ==")])

    register("sync", Sync())
    emb = await gateway.aembedding("sync/e", ["ab", "abc"])
    assert [d.embedding for d in emb.data] == [[2.0], [3.0]]
    assert emb.model == "sync/e"
    assert (await gateway.aimage_generation("p", model="sync/i")).data[0].url == "sync"

    register("async", Async())
    assert gateway.embedding("async/e", "x").data[0].embedding == [1.0]
    assert gateway.image_generation("p", model="async/i").data[0].b64_json == "QQ=="


# Kwargs


class Capture(gateway.CustomLLM):
    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, dict[str, Any]] = {}

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        self.seen["completion"] = kwargs
        return kwargs["model_response"]

    def streaming(self, *args: Any, **kwargs: Any) -> Any:
        self.seen["streaming"] = kwargs
        return "x"

    def embedding(self, *args: Any, **kwargs: Any) -> Any:
        self.seen["embedding"] = kwargs
        return [[0.0]]

    def image_generation(self, *args: Any, **kwargs: Any) -> Any:
        self.seen["image_generation"] = kwargs
        return None


CHAT_KWARGS = {
    "model", "messages", "optional_params", "litellm_params", "model_response", "api_key",
    "api_base", "headers", "timeout", "client", "logging_obj", "print_verbose", "encoding",
    "acompletion", "custom_prompt_dict", "logger_fn",
}  # fmt: skip


async def test_chat_kwargs_follow_the_contract() -> None:
    handler = register("my-custom-llm", Capture())
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    resp = gateway.completion(
        "my-custom-llm/my-model",
        USER,
        temperature=0.2,
        max_tokens=7,
        stop=["\n"],
        tools=tools,
        seed=3,
        user="u1",
        top_k=5,  # not an OpenAI param: passed through
        api_key="sk-test",
        api_base="http://127.0.0.1:9",
        headers={"x-a": "1"},
        metadata={"trace": "t"},
    )
    kw = handler.seen["completion"]
    assert set(kw) == CHAT_KWARGS
    assert kw["model"] == "my-model"
    assert kw["messages"] == USER
    assert kw["optional_params"] == {
        "temperature": 0.2, "max_tokens": 7, "stop": ["\n"], "tools": tools, "seed": 3,
        "user": "u1", "top_k": 5,
    }  # fmt: skip
    assert "stream" not in kw["optional_params"]
    assert kw["api_key"] == "sk-test" and kw["api_base"] == "http://127.0.0.1:9"
    assert kw["headers"] == {"x-a": "1"}
    assert kw["timeout"] == 600 and isinstance(kw["timeout"], float)
    assert kw["acompletion"] is False
    assert kw["custom_prompt_dict"] == {}
    assert kw["litellm_params"]["metadata"] == {"trace": "t"}
    assert isinstance(kw["model_response"], ModelResponse)
    # The model_response it filled and returned is the answer.
    assert resp.id == kw["model_response"].id
    # logging_obj accepts whatever LiteLLM-era handlers call on it.
    kw["logging_obj"].pre_call(input="x", api_key="k")
    kw["print_verbose"]("ok")

    await gateway.acompletion("my-custom-llm/my-model", USER, timeout=30)
    kw = handler.seen["completion"]  # the sync method, on a worker thread
    assert kw["timeout"] == 30.0
    assert kw["headers"] == {}


def test_stream_kwargs_carry_stream_flags() -> None:
    handler = register("my-custom-llm", Capture())
    list(
        gateway.completion(
            "my-custom-llm/m", USER, stream=True, stream_options={"include_usage": True}
        )
    )
    params = handler.seen["streaming"]["optional_params"]
    assert params == {"stream": True, "stream_options": {"include_usage": True}}
    assert set(handler.seen["streaming"]) == CHAT_KWARGS
    # stream_options without streaming is dropped, as OpenAI ignores it.
    gateway.completion("my-custom-llm/m", USER, stream_options={"include_usage": True})
    assert handler.seen["completion"]["optional_params"] == {}


def test_embedding_and_image_kwargs() -> None:
    handler = register("my-custom-llm", Capture())
    gateway.embedding("my-custom-llm/e", ["a", "b"], dimensions=4, api_key="k")
    kw = handler.seen["embedding"]
    assert kw["model"] == "e"
    assert kw["input"] == ["a", "b"]
    assert kw["optional_params"] == {"dimensions": 4}
    assert isinstance(kw["model_response"], gateway.EmbeddingResponse)
    for name in ("litellm_params", "logging_obj", "print_verbose", "api_key", "api_base"):
        assert name in kw
    gateway.embedding("my-custom-llm/e", "single")
    assert handler.seen["embedding"]["input"] == "single"  # passed through unchanged

    image = gateway.image_generation(
        "an otter", model="my-custom-llm/i", n=2, size="512x512", quality="hd", style="vivid"
    )
    kw = handler.seen["image_generation"]
    assert kw["prompt"] == "an otter"
    assert kw["optional_params"] == {"n": 2, "size": "512x512", "quality": "hd", "style": "vivid"}
    # A handler returning None answers with the model_response it was given.
    assert image is kw["model_response"] or image == kw["model_response"]


def test_explicit_signature_gets_only_what_it_accepts() -> None:
    seen: dict[str, Any] = {}

    class Explicit(gateway.CustomLLM):
        def completion(self, model: str, messages: list[Any], optional_params: dict) -> Any:
            seen.update(model=model, messages=messages, optional_params=optional_params)
            return "explicit"

        def embedding(self, model: str, input: Any, *, timeout: float | None = None) -> Any:
            seen["timeout"] = timeout
            return [[1.0]]

    register("ex", Explicit())
    resp = gateway.completion("ex/m", USER, temperature=1, api_key="sk")
    assert text(resp) == "explicit"
    assert seen["optional_params"] == {"temperature": 1}
    gateway.embedding("ex/e", "x", api_key="sk", timeout=5)
    assert seen["timeout"] == 5


# Duck typing: handlers written against LiteLLM, which is not installed here.


class CustomLLMError(Exception):
    """Like LiteLLM's: a status code and a message."""

    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        self.message = message
        super().__init__(message)


class CustomLLM:
    """Stands in for ``litellm.CustomLLM``: every default raises "Not implemented yet!"."""

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        raise CustomLLMError(500, "Not implemented yet!")

    def streaming(self, *args: Any, **kwargs: Any) -> Any:
        raise CustomLLMError(500, "Not implemented yet!")

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        raise CustomLLMError(500, "Not implemented yet!")

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        raise CustomLLMError(500, "Not implemented yet!")

    def image_generation(self, *args: Any, **kwargs: Any) -> Any:
        raise CustomLLMError(500, "Not implemented yet!")

    async def aimage_generation(self, *args: Any, **kwargs: Any) -> Any:
        raise CustomLLMError(500, "Not implemented yet!")


class PydanticLike:
    """What LiteLLM's pydantic objects offer: ``model_dump()`` (with extra fields)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def model_dump(self) -> dict[str, Any]:
        return self._data


LITELLM_DUMP = {
    "id": "chatcmpl-from-litellm",
    "created": 1721955063,
    "model": "gpt-3.5-turbo",
    "object": "chat.completion",
    "system_fingerprint": None,
    "choices": [
        {
            "finish_reason": "stop",
            "index": 0,
            "message": {
                "content": "from pydantic",
                "role": "assistant",
                "tool_calls": None,
                "function_call": None,
                "provider_specific_fields": None,
            },
            "provider_specific_fields": {},
        }
    ],
    "usage": {
        "completion_tokens": 2,
        "prompt_tokens": 1,
        "total_tokens": 3,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    },
}


class LiteLLMStyle(CustomLLM):
    """Overrides only the sync completion and the async streaming."""

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        return PydanticLike(LITELLM_DUMP)

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        for piece in ("lite", "llm"):
            yield PydanticLike(
                {
                    "id": "chatcmpl-x",
                    "created": 1,
                    "model": None,
                    "object": "chat.completion.chunk",
                    "choices": [
                        {
                            "index": 0,
                            "delta": {
                                "content": piece,
                                "role": None,
                                "tool_calls": None,
                                "function_call": None,
                                "audio": None,
                                "provider_specific_fields": None,
                            },
                            "finish_reason": None,
                            "logprobs": None,
                        }
                    ],
                    "provider_specific_fields": None,
                }
            )


async def test_duck_typed_litellm_subclass() -> None:
    assert not isinstance(LiteLLMStyle(), gateway.CustomLLM)
    register("lite", LiteLLMStyle())
    resp = gateway.completion("lite/m", USER)
    assert isinstance(resp, ModelResponse)
    assert text(resp) == "from pydantic"
    assert resp.usage.total_tokens == 3

    # acompletion is the base's "Not implemented yet!": the sync method serves it.
    resp = await gateway.acompletion("lite/m", USER)
    assert text(resp) == "from pydantic"

    stream = await gateway.acompletion("lite/m", USER, stream=True)
    chunks = [c async for c in stream]
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert gateway.stream_chunk_builder(chunks).choices[0].message.content == "litellm"
    # Sync streaming: `streaming` is the base default, so astreaming serves it.
    chunks = list(gateway.completion("lite/m", USER, stream=True))
    assert gateway.stream_chunk_builder(chunks).choices[0].message.content == "litellm"


async def test_duck_typed_image_and_embedding_dumps() -> None:
    class Media(CustomLLM):
        async def aimage_generation(self, *args: Any, **kwargs: Any) -> Any:
            return PydanticLike(
                {
                    "created": 5,
                    "data": [{"b64_json": None, "url": "https://x/i.png", "revised_prompt": None}],
                    "usage": None,
                    "_hidden_params": {},
                }
            )

        def embedding(self, *args: Any, **kwargs: Any) -> Any:
            return PydanticLike(
                {
                    "model": "e",
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.25]}],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1, "prompt_tokens_details": None},
                }
            )

    register("media", Media())
    image = gateway.image_generation("p", model="media/i")
    assert image.data[0].url == "https://x/i.png"
    assert msgspec.json.decode(msgspec.json.encode(image)) == {
        "created": 5,
        "data": [{"url": "https://x/i.png"}],
    }
    emb = await gateway.aembedding("media/e", "x")
    assert emb.data[0].embedding == [0.25]
    assert emb.usage.total_tokens == 1


async def test_duck_typed_plain_object() -> None:
    class Plain:
        async def acompletion(self, model: str, messages: list[Any], **kwargs: Any) -> Any:
            return {"choices": [{"message": {"content": f"{model}:{len(messages)}"}}]}

    register("plain", Plain())
    assert text(await gateway.acompletion("plain/m", USER)) == "m:1"
    assert text(gateway.completion("plain/m", USER)) == "m:1"


def test_litellm_style_error_keeps_its_status() -> None:
    class Failing(CustomLLM):
        def completion(self, *args: Any, **kwargs: Any) -> Any:
            raise CustomLLMError(503, "backend down")

    register("fail", Failing())
    with pytest.raises(gateway.ServiceUnavailableError, match="backend down") as info:
        gateway.completion("fail/m", USER)
    assert info.value.status_code == 503


def test_handler_class_is_instantiated_once() -> None:
    made: list[Any] = []

    class Counted(gateway.CustomLLM):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

        def completion(self, *args: Any, **kwargs: Any) -> Any:
            return "c"

    register("cls", Counted)
    for _ in range(3):
        assert text(gateway.completion("cls/m", USER)) == "c"
    assert len(made) == 1
