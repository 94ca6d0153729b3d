"""The library API: ``completion`` and friends, sync and async.

Each call resolves its model string to a provider, builds a call and runs it under the
call's timeout (``gateway.invoke``); with ``gateway.callbacks`` set, the logged twin in
``_callbacks_library`` wraps it.
"""

from __future__ import annotations

import contextvars
import sys
from typing import Any

import anyio

from ._threads import run_async
from .errors import BadRequestError, GatewayError
from .invoke import (
    astream_chunks,
    prepare_chat,
    prepare_other,
    run_acompletion,
    run_aembedding,
    run_aimage_generation,
    run_sync,
    seconds,
    sync_stream,
)
from .provider import EmbeddingCall, ImageCall
from .types import (
    Choices,
    EmbeddingResponse,
    ImageResponse,
    Message,
    ModelResponse,
    Usage,
    _chat_id,
    _now,
)

__all__ = [
    "abatch_completion",
    "acompletion",
    "aembedding",
    "aimage_generation",
    "batch_completion",
    "completion",
    "embedding",
    "image_generation",
]

# ``gateway.callbacks``, read at call time as in LiteLLM. While a logged call runs the
# plain one, ``_logging`` is set so it is not logged twice.
_gateway = sys.modules[__name__.rpartition(".")[0]]
_logging: contextvars.ContextVar[bool] = contextvars.ContextVar("gateway_logging", default=False)


def _mock_text(model: str, messages: Any, timeout: Any, text: str) -> ModelResponse:
    """``completion(model, messages, mock_response="Hi!")``, the seed's handler idiom,
    without resolving a provider or building a call: what the mock provider answers
    when nothing else (no delay, no failure rate, no stream) is asked for. Positional
    fields: 11.6k instructions a call against 23.7k with keywords and the old ids."""
    if (
        messages is not None
        and messages.__class__ is not list
        and not isinstance(messages, _SEQUENCES)
    ):
        raise BadRequestError(
            f"messages must be a list of messages, got {type(messages).__name__}",
            param="messages",
        )
    if timeout is not None:
        seconds(timeout)
    return ModelResponse(
        _chat_id(), [Choices("stop", 0, Message(text))], _now(), model, "chat.completion",
        None, Usage(10, 20, 30),
    )  # fmt: skip


_SEQUENCES = (list, tuple)


# The public calls.


def completion(
    model: str,
    messages: list[Any] | None = None,
    *,
    stream: bool = False,
    timeout: float | None = None,
    mock_response: Any = None,
    custom_llm_provider: str | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> Any:
    """A chat completion: a ``ModelResponse``, or with ``stream=True`` an iterator of
    ``ModelResponseStream`` chunks."""
    if _gateway.callbacks and not _logging.get():
        from ._callbacks_library import call_sync

        return call_sync(
            _gateway.callbacks,
            "completion",
            completion,
            model,
            messages,
            stream=stream,
            timeout=timeout,
            mock_response=mock_response,
            custom_llm_provider=custom_llm_provider,
            api_key=api_key,
            api_base=api_base,
            headers=headers,
            **kwargs,
        )
    if mock_response.__class__ is str and not stream and not kwargs:
        return _mock_text(model, messages, timeout, mock_response)
    prepared = prepare_chat(
        model, messages, stream, timeout, mock_response, custom_llm_provider,
        api_key, api_base, headers, kwargs,
    )  # fmt: skip
    if stream:
        return sync_stream(prepared, model)
    response = run_sync(prepared.provider.completion, prepared.call)
    response.model = model
    return response


async def acompletion(
    model: str,
    messages: list[Any] | None = None,
    *,
    stream: bool = False,
    timeout: float | None = None,
    mock_response: Any = None,
    custom_llm_provider: str | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> Any:
    """Async ``completion``; with ``stream=True`` returns an async iterator of chunks."""
    if _gateway.callbacks and not _logging.get():
        from ._callbacks_library import call_async

        return await call_async(
            _gateway.callbacks,
            "acompletion",
            acompletion,
            model,
            messages,
            stream=stream,
            timeout=timeout,
            mock_response=mock_response,
            custom_llm_provider=custom_llm_provider,
            api_key=api_key,
            api_base=api_base,
            headers=headers,
            **kwargs,
        )
    if mock_response.__class__ is str and not stream and not kwargs:
        return _mock_text(model, messages, timeout, mock_response)
    prepared = prepare_chat(
        model, messages, stream, timeout, mock_response, custom_llm_provider,
        api_key, api_base, headers, kwargs,
    )  # fmt: skip
    if stream:
        return astream_chunks(prepared.provider, prepared.call, model)
    return await run_acompletion(prepared.provider, prepared.call, model)


def embedding(
    model: str,
    input: Any = None,
    *,
    timeout: float | None = None,
    mock_response: Any = None,
    custom_llm_provider: str | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> EmbeddingResponse:
    """Embeddings for ``input`` (a string or a list), as an ``EmbeddingResponse``."""
    if _gateway.callbacks and not _logging.get():
        from ._callbacks_library import call_sync

        return call_sync(
            _gateway.callbacks,
            "embedding",
            embedding,
            model,
            input,
            timeout=timeout,
            mock_response=mock_response,
            custom_llm_provider=custom_llm_provider,
            api_key=api_key,
            api_base=api_base,
            headers=headers,
            **kwargs,
        )
    prepared = prepare_other(
        EmbeddingCall, model, {"input": input}, timeout, mock_response,
        custom_llm_provider, api_key, api_base, headers, kwargs,
    )  # fmt: skip
    response = run_sync(prepared.provider.embedding, prepared.call)
    response.model = model
    return response


async def aembedding(
    model: str,
    input: Any = None,
    *,
    timeout: float | None = None,
    mock_response: Any = None,
    custom_llm_provider: str | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> EmbeddingResponse:
    """Async ``embedding``."""
    if _gateway.callbacks and not _logging.get():
        from ._callbacks_library import call_async

        return await call_async(
            _gateway.callbacks,
            "aembedding",
            aembedding,
            model,
            input,
            timeout=timeout,
            mock_response=mock_response,
            custom_llm_provider=custom_llm_provider,
            api_key=api_key,
            api_base=api_base,
            headers=headers,
            **kwargs,
        )
    prepared = prepare_other(
        EmbeddingCall, model, {"input": input}, timeout, mock_response,
        custom_llm_provider, api_key, api_base, headers, kwargs,
    )  # fmt: skip
    return await run_aembedding(prepared.provider, prepared.call, model)


def image_generation(
    prompt: str,
    model: str | None = None,
    *,
    timeout: float | None = None,
    mock_response: Any = None,
    custom_llm_provider: str | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> ImageResponse:
    """Images for ``prompt``, as an ``ImageResponse``."""
    if _gateway.callbacks and not _logging.get():
        from ._callbacks_library import call_sync

        return call_sync(
            _gateway.callbacks,
            "image_generation",
            _image_first,
            model,
            prompt,
            timeout=timeout,
            mock_response=mock_response,
            custom_llm_provider=custom_llm_provider,
            api_key=api_key,
            api_base=api_base,
            headers=headers,
            **kwargs,
        )
    prepared = prepare_other(
        ImageCall, model, {"prompt": prompt}, timeout, mock_response,
        custom_llm_provider, api_key, api_base, headers, kwargs,
    )  # fmt: skip
    return run_sync(prepared.provider.image_generation, prepared.call)


async def aimage_generation(
    prompt: str,
    model: str | None = None,
    *,
    timeout: float | None = None,
    mock_response: Any = None,
    custom_llm_provider: str | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> ImageResponse:
    """Async ``image_generation``."""
    if _gateway.callbacks and not _logging.get():
        from ._callbacks_library import call_async

        return await call_async(
            _gateway.callbacks,
            "aimage_generation",
            _aimage_first,
            model,
            prompt,
            timeout=timeout,
            mock_response=mock_response,
            custom_llm_provider=custom_llm_provider,
            api_key=api_key,
            api_base=api_base,
            headers=headers,
            **kwargs,
        )
    prepared = prepare_other(
        ImageCall, model, {"prompt": prompt}, timeout, mock_response,
        custom_llm_provider, api_key, api_base, headers, kwargs,
    )  # fmt: skip
    return await run_aimage_generation(prepared.provider, prepared.call)


def _image_first(model: str | None, prompt: str, **kwargs: Any) -> ImageResponse:
    return image_generation(prompt, model, **kwargs)


async def _aimage_first(model: str | None, prompt: str, **kwargs: Any) -> ImageResponse:
    return await aimage_generation(prompt, model, **kwargs)


async def abatch_completion(
    model: str, messages: list[list[Any]], *, max_concurrency: int = 100, **kwargs: Any
) -> list[ModelResponse | GatewayError]:
    """One completion per message list, concurrently; results in input order.

    A failed request yields its error in its slot and does not cancel the others.
    """
    results: list[Any] = [None] * len(messages)
    limit = anyio.Semaphore(max_concurrency)

    async def one(index: int, conversation: list[Any]) -> None:
        async with limit:
            try:
                results[index] = await acompletion(model, conversation, **kwargs)
            except GatewayError as exc:
                results[index] = exc

    async with anyio.create_task_group() as tg:
        for index, conversation in enumerate(messages):
            tg.start_soon(one, index, conversation)
    return results


def batch_completion(
    model: str, messages: list[list[Any]], *, max_concurrency: int = 100, **kwargs: Any
) -> list[ModelResponse | GatewayError]:
    """Sync ``abatch_completion``."""

    async def run() -> list[Any]:
        return await abatch_completion(model, messages, max_concurrency=max_concurrency, **kwargs)

    return run_async(run)
