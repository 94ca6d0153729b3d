"""Canned answers: ``mock_response=`` on any call, and ``mock/<anything>`` models.

Never calls a handler or the network. Delays use ``anyio.sleep`` in async calls, so
many slow mock streams cost nothing while they wait.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import msgspec

from gateway.errors import BadRequestError
from gateway.provider import ChatCall, EmbeddingCall, ImageCall, Provider
from gateway.types import (
    Embedding,
    EmbeddingResponse,
    ImageObject,
    ImageResponse,
    Message,
    ModelResponse,
    Usage,
)

__all__ = ["DEFAULT_TEXT", "MockProvider"]

DEFAULT_TEXT = "This is a mock response from the gateway."
_PIECES = re.compile(r"\s*\S+|\s+")


def _param(call: Any, name: str, default: Any = None) -> Any:
    """A mock setting from the request (optional_params) or the deployment (litellm_params)."""
    value = call.optional_params.get(name)
    if value is None:
        value = call.litellm_params.get(name, default)
    return default if value is None else value


def _response(call: ChatCall) -> ModelResponse:
    mock = _param(call, "mock_response", DEFAULT_TEXT)
    if isinstance(mock, BaseException):
        raise mock
    if isinstance(mock, ModelResponse):
        return mock
    if isinstance(mock, dict):
        try:
            return msgspec.convert(mock, ModelResponse)
        except msgspec.ValidationError as exc:
            raise BadRequestError(f"mock_response is not a valid response: {exc}") from exc
    return ModelResponse(
        choices=[{"message": Message(content=str(mock))}],
        model=call.model,
        usage=Usage(prompt_tokens=10, completion_tokens=20, total_tokens=30),
    )


def _pieces(response: ModelResponse) -> list[Any]:
    """A mock answer as small deltas, the way a model streams it."""
    choice = response.choices[0]
    text = choice.message.content or ""
    items: list[Any] = [
        {"text": piece, "is_finished": False, "finish_reason": None, "index": 0, "usage": None}
        for piece in _PIECES.findall(text)
    ]
    items.append(
        {
            "text": "",
            "is_finished": True,
            "finish_reason": choice.finish_reason or "stop",
            "index": 0,
            "usage": msgspec.to_builtins(response.usage),
        }
    )
    return items


class MockProvider(Provider):
    name = "mock"

    async def acompletion(self, call: ChatCall) -> ModelResponse:
        delay = float(_param(call, "mock_delay", 0))
        if delay:
            await anyio.sleep(delay)
        return _response(call)

    async def astream(self, call: ChatCall) -> AsyncIterator[Any]:
        delay = float(_param(call, "mock_delay", 0))
        if delay:
            await anyio.sleep(delay)
        for item in _pieces(_response(call)):
            yield item

    def completion(self, call: ChatCall) -> ModelResponse:
        delay = float(_param(call, "mock_delay", 0))
        if delay:
            time.sleep(delay)
        return _response(call)

    def stream(self, call: ChatCall) -> Iterator[Any]:
        delay = float(_param(call, "mock_delay", 0))
        if delay:
            time.sleep(delay)
        yield from _pieces(_response(call))

    async def aembedding(self, call: EmbeddingCall) -> EmbeddingResponse:
        return self.embedding(call)

    def embedding(self, call: EmbeddingCall) -> EmbeddingResponse:
        inputs = call.input if isinstance(call.input, list) else [call.input]
        if inputs and isinstance(inputs[0], int):  # one token array
            inputs = [inputs]
        dims = int(_param(call, "dimensions", 8))
        return EmbeddingResponse(
            data=[
                Embedding(embedding=[round(0.1 * (i + 1), 3)] * dims, index=i)
                for i in range(len(inputs))
            ],
            model=call.model,
            usage=Usage(prompt_tokens=len(inputs), total_tokens=len(inputs)),
        )

    async def aimage_generation(self, call: ImageCall) -> ImageResponse:
        return self.image_generation(call)

    def image_generation(self, call: ImageCall) -> ImageResponse:
        n = int(_param(call, "n", 1))
        url = _param(call, "mock_response", "https://example.com/mock.png")
        return ImageResponse(data=[ImageObject(url=str(url)) for _ in range(n)])
