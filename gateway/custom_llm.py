"""The handler contract: subclass ``CustomLLM`` and override the methods you serve."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from .errors import CustomLLMError
from .llms.base import BaseLLM
from .types import EmbeddingResponse, GenericStreamingChunk, ImageResponse, ModelResponse

__all__ = ["HANDLER_METHODS", "CustomLLM", "serves"]

HANDLER_METHODS = (
    "completion",
    "acompletion",
    "streaming",
    "astreaming",
    "image_generation",
    "aimage_generation",
    "embedding",
    "aembedding",
)

# Classes whose methods are the contract's "Not implemented yet!" defaults: ours,
# and LiteLLM's when a handler was written against it.
_BASE_NAMES = frozenset({"CustomLLM", "BaseLLM", "object"})


def serves(handler: Any, method: str) -> bool:
    """Whether ``handler`` really implements ``method`` (its class overrides the default).

    Duck-typed: any object with the method counts, unless the method comes from a
    class named ``CustomLLM``/``BaseLLM`` (this project's or LiteLLM's).
    """
    if not callable(getattr(handler, method, None)):
        return False
    instance_attrs = getattr(handler, "__dict__", None)
    if instance_attrs and method in instance_attrs:
        return True
    for klass in type(handler).__mro__:
        if method in vars(klass):
            return klass.__name__ not in _BASE_NAMES
    return True


def _not_implemented() -> CustomLLMError:
    return CustomLLMError(status_code=500, message="Not implemented yet!")


class CustomLLM(BaseLLM):
    """Base class of user handlers; same methods and defaults as LiteLLM's.

    Override only what your backend serves: the gateway fills the gaps (an async call
    runs your sync method on a worker thread, a stream request on a handler without
    streaming streams the whole answer, and so on).
    """

    def __init__(self) -> None:
        super().__init__()

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        raise _not_implemented()

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        raise _not_implemented()

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        raise _not_implemented()

    # Not `async def`: an override is an async generator (`async def ...: yield`), whose
    # type is a function returning an AsyncIterator, not a coroutine. Declared async here,
    # every correct override would fail type checking.
    def astreaming(self, *args: Any, **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:
        raise _not_implemented()

    def image_generation(self, *args: Any, **kwargs: Any) -> ImageResponse:
        raise _not_implemented()

    async def aimage_generation(self, *args: Any, **kwargs: Any) -> ImageResponse:
        raise _not_implemented()

    def embedding(self, *args: Any, **kwargs: Any) -> EmbeddingResponse:
        raise _not_implemented()

    async def aembedding(self, *args: Any, **kwargs: Any) -> EmbeddingResponse:
        raise _not_implemented()
