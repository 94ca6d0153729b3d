"""The one small interface every provider module implements.

A provider turns a *call* (the request, already resolved to a deployment) into a
response. It implements the async methods it supports; the sync ones default to
running the async method on a private event loop. Streams yield items in any form
``gateway.streaming`` accepts; the caller normalises them into OpenAI chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec

from ._threads import iterate_async, run_async
from .errors import NotImplementedByHandlerError
from .types import EmbeddingResponse, ImageResponse, ModelResponse

__all__ = ["DEFAULT_TIMEOUT", "ChatCall", "EmbeddingCall", "ImageCall", "Provider"]

# Seconds a call may take when neither the request, the deployment nor the config says
# (LiteLLM's default; handlers are passed it as ``timeout``).
DEFAULT_TIMEOUT = 600.0


class ChatCall(msgspec.Struct, kw_only=True):
    model: str  # the provider's model name: prefix stripped (``my-custom-llm/x`` -> ``x``)
    messages: list[Any]
    optional_params: dict[str, Any]  # OpenAI params that were set, plus unknown extras
    litellm_params: dict[str, Any]  # the deployment's params, custom keys included
    api_key: str | None = None
    api_base: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeout: float | None = None
    stream: bool = False


class EmbeddingCall(msgspec.Struct, kw_only=True):
    model: str
    input: Any
    optional_params: dict[str, Any]
    litellm_params: dict[str, Any]
    api_key: str | None = None
    api_base: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeout: float | None = None


class ImageCall(msgspec.Struct, kw_only=True):
    model: str
    prompt: str
    optional_params: dict[str, Any]
    litellm_params: dict[str, Any]
    api_key: str | None = None
    api_base: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeout: float | None = None


class Provider:
    """Base class of providers. ``name`` is the model-string prefix it serves."""

    name: str = ""

    async def acompletion(self, call: ChatCall) -> ModelResponse:
        raise NotImplementedByHandlerError(
            f"provider {self.name!r} does not serve chat completions"
        )

    def astream(self, call: ChatCall) -> AsyncIterator[Any]:
        raise NotImplementedByHandlerError(f"provider {self.name!r} does not serve streaming")

    async def aembedding(self, call: EmbeddingCall) -> EmbeddingResponse:
        raise NotImplementedByHandlerError(f"provider {self.name!r} does not serve embeddings")

    async def aimage_generation(self, call: ImageCall) -> ImageResponse:
        raise NotImplementedByHandlerError(
            f"provider {self.name!r} does not serve image generation"
        )

    def completion(self, call: ChatCall) -> ModelResponse:
        return run_async(self.acompletion, call, timeout=call.timeout)

    def stream(self, call: ChatCall) -> Iterator[Any]:
        return iterate_async(lambda: self.astream(call), call.timeout)

    def embedding(self, call: EmbeddingCall) -> EmbeddingResponse:
        return run_async(self.aembedding, call, timeout=call.timeout)

    def image_generation(self, call: ImageCall) -> ImageResponse:
        return run_async(self.aimage_generation, call, timeout=call.timeout)

    async def astart(self, settings: Any = None) -> None:
        """Called by the HTTP gateway at start-up with ``GatewaySettings`` (may be None).

        Nothing may depend on it having run: an app mounted in a host that skips the
        sub-app's lifespan never calls it, so resources are also made lazily. While it
        runs, ``gateway.http.current()`` is the app's clients, as during its requests.
        """

    async def aclose(self) -> None:
        """Release what the provider holds (clients, pools); called at shutdown."""
