"""An async-first, OpenAI-compatible gateway for your own LLM handlers.

Handlers written for LiteLLM's custom-provider API run here with only the import
changed: ``import litellm`` -> ``import gateway``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import calls as calls  # the old home of the library API (gateway.calls.X)
from . import types
from ._threads import set_thread_limit
from .api import (
    abatch_completion,
    acompletion,
    aembedding,
    aimage_generation,
    batch_completion,
    completion,
    embedding,
    image_generation,
)
from .custom_llm import CustomLLM
from .errors import (
    APIConnectionError,
    AuthenticationError,
    BadGatewayError,
    BadRequestError,
    ContextWindowExceededError,
    CustomLLMError,
    GatewayError,
    GatewayTimeoutError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    Timeout,
    UnprocessableEntityError,
)
from .http import http_client
from .provider import Provider
from .registry import get_llm_provider, register_provider, unregister_provider
from .streaming import stream_chunk_builder
from .types import (
    EmbeddingResponse,
    GenericStreamingChunk,
    ImageObject,
    ImageResponse,
    ModelResponse,
    ModelResponseStream,
    Usage,
)

if TYPE_CHECKING:
    from .router import Router

__version__ = "0.1.0"

# Read at call time, as in LiteLLM: assign a list of
# {"provider": name, "custom_handler": handler} to register handlers.
custom_provider_map: list[dict[str, Any]] = []
# Read at call time, as in LiteLLM: CustomLogger instances whose events library calls
# (completion, acompletion, embedding, ...) fire. The HTTP gateway's come from its config.
callbacks: list[Any] = []

__all__ = [
    "APIConnectionError",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "ContextWindowExceededError",
    "CustomLLM",
    "CustomLLMError",
    "EmbeddingResponse",
    "GatewayError",
    "GatewayTimeoutError",
    "GenericStreamingChunk",
    "ImageObject",
    "ImageResponse",
    "InternalServerError",
    "ModelResponse",
    "ModelResponseStream",
    "NotFoundError",
    "PermissionDeniedError",
    "Provider",
    "RateLimitError",
    "Router",
    "ServiceUnavailableError",
    "Timeout",
    "UnprocessableEntityError",
    "Usage",
    "__version__",
    "abatch_completion",
    "acompletion",
    "aembedding",
    "aimage_generation",
    "batch_completion",
    "callbacks",
    "completion",
    "create_app",
    "custom_provider_map",
    "embedding",
    "get_llm_provider",
    "http_client",
    "image_generation",
    "register_provider",
    "set_thread_limit",
    "stream_chunk_builder",
    "types",
    "unregister_provider",
]


def __getattr__(name: str) -> Any:
    # The HTTP app pulls in Starlette; import it only when asked, so `import gateway`
    # stays fast for library users.
    if name == "create_app":
        from .app import create_app

        return create_app
    # The router (and the config module it uses) is a fifth of the import time.
    if name == "Router":
        from .router import Router

        return Router
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
