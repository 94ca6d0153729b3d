"""The seed document's handlers, with ``import litellm`` -> ``import gateway``.

- ``my_custom_llm``: the seed's ``MyCustomLLM`` (chat, "Hi!") with its image generation.
- ``unixtime``: the seed's ``UnixTimeLLM`` (chat and streaming: the unix time).
- ``word_streamer``: streams a reply word by word with a small delay between words.
- ``hash_embedder``: a small deterministic embedding of each input text.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import gateway
from gateway import CustomLLM, acompletion, completion, get_llm_provider  # noqa: F401
from gateway.types import (
    EmbeddingResponse,
    GenericStreamingChunk,
    ImageObject,
    ImageResponse,
    ModelResponse,
)

if TYPE_CHECKING:
    import httpx


class MyCustomLLM(CustomLLM):
    def completion(self, *args, **kwargs) -> gateway.ModelResponse:
        return gateway.completion(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "Hello world"}],
            mock_response="Hi!",
        )  # type: ignore

    async def acompletion(self, *args, **kwargs) -> gateway.ModelResponse:
        return gateway.completion(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "Hello world"}],
            mock_response="Hi!",
        )  # type: ignore

    async def aimage_generation(
        self,
        model: str,
        prompt: str,
        model_response: ImageResponse,
        optional_params: dict,
        logging_obj: Any,
        timeout: float | httpx.Timeout | None = None,
        client: Any = None,
    ) -> ImageResponse:
        return ImageResponse(
            created=int(time.time()),
            data=[ImageObject(url="https://example.com/image.png")],
        )


my_custom_llm = MyCustomLLM()


class UnixTimeLLM(CustomLLM):
    def completion(self, *args, **kwargs) -> ModelResponse:
        return completion(
            model="test/unixtime",
            mock_response=str(int(time.time())),
        )  # type: ignore

    async def acompletion(self, *args, **kwargs) -> ModelResponse:
        return await acompletion(
            model="test/unixtime",
            mock_response=str(int(time.time())),
        )  # type: ignore

    def streaming(self, *args, **kwargs) -> Iterator[GenericStreamingChunk]:
        generic_streaming_chunk: GenericStreamingChunk = {
            "finish_reason": "stop",
            "index": 0,
            "is_finished": True,
            "text": str(int(time.time())),
            "tool_use": None,
            "usage": {"completion_tokens": 0, "prompt_tokens": 0, "total_tokens": 0},
        }
        return generic_streaming_chunk  # type: ignore

    async def astreaming(self, *args, **kwargs) -> AsyncIterator[GenericStreamingChunk]:
        generic_streaming_chunk: GenericStreamingChunk = {
            "finish_reason": "stop",
            "index": 0,
            "is_finished": True,
            "text": str(int(time.time())),
            "tool_use": None,
            "usage": {"completion_tokens": 0, "prompt_tokens": 0, "total_tokens": 0},
        }
        yield generic_streaming_chunk  # type: ignore


unixtime = UnixTimeLLM()


def _last_user_text(messages: list) -> str:
    for message in reversed(messages or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


class WordStreamLLM(CustomLLM):
    """Answers "You said: <your last message>", streamed one word at a time.

    The pause between words comes from the deployment's custom ``chunk_delay`` key in
    config.yaml (``litellm_params``), 0.05 s if it is not set.
    """

    def _words(self, kwargs: dict) -> list[str]:
        text = "You said: " + _last_user_text(kwargs.get("messages", []))
        return text.split()

    async def astreaming(self, *args, **kwargs) -> AsyncIterator[GenericStreamingChunk]:
        delay = float((kwargs.get("litellm_params") or {}).get("chunk_delay", 0.05))
        words = self._words(kwargs)
        for i, word in enumerate(words):
            await asyncio.sleep(delay)
            yield {
                "text": word if i == 0 else " " + word,
                "tool_use": None,
                "is_finished": False,
                "finish_reason": "",
                "index": 0,
                "usage": None,
            }
        yield {
            "text": "",
            "tool_use": None,
            "is_finished": True,
            "finish_reason": "stop",
            "index": 0,
            "usage": {
                "prompt_tokens": len(_last_user_text(kwargs.get("messages", [])).split()),
                "completion_tokens": len(words),
                "total_tokens": len(words) + len(_last_user_text(kwargs["messages"]).split()),
            },
        }

    async def acompletion(self, *args, **kwargs) -> ModelResponse:
        model_response: ModelResponse = kwargs["model_response"]
        words = self._words(kwargs)
        model_response.choices[0].message.content = " ".join(words)
        prompt_tokens = len(_last_user_text(kwargs.get("messages", [])).split())
        model_response.usage = gateway.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=len(words),
            total_tokens=prompt_tokens + len(words),
        )
        return model_response


word_streamer = WordStreamLLM()


class HashEmbeddingLLM(CustomLLM):
    """A deterministic unit vector per input text (``dimensions`` from config.yaml)."""

    @staticmethod
    def _vector(text: str, dimensions: int) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()
        raw = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dimensions)]
        norm = math.sqrt(sum(x * x for x in raw)) or 1.0
        return [round(x / norm, 6) for x in raw]

    def embedding(self, *args, **kwargs) -> EmbeddingResponse:
        texts = kwargs["input"]
        if isinstance(texts, str):
            texts = [texts]
        params = kwargs.get("litellm_params") or {}
        dimensions = int(kwargs["optional_params"].get("dimensions") or params.get("dimensions", 8))
        return EmbeddingResponse(
            data=[
                {"object": "embedding", "embedding": self._vector(str(t), dimensions), "index": i}
                for i, t in enumerate(texts)
            ],
            model=kwargs["model"],
            usage={
                "prompt_tokens": sum(len(str(t).split()) for t in texts),
                "completion_tokens": 0,
                "total_tokens": sum(len(str(t).split()) for t in texts),
            },
        )

    async def aembedding(self, *args, **kwargs) -> EmbeddingResponse:
        return self.embedding(*args, **kwargs)


hash_embedder = HashEmbeddingLLM()
