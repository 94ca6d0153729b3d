"""The library API: ``completion`` and friends, sync and async.

Each call resolves its model string to a provider, builds a call, and runs it under
the call's timeout. The HTTP gateway uses the same ``run_*`` functions with calls it
built from a deployment.
"""

from __future__ import annotations

import contextvars
import math
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import anyio

from . import registry
from ._aio import IdleTimeout, within
from ._threads import current_pool, iterate_in_thread, run_async
from .errors import BadGatewayError, BadRequestError, GatewayError, Timeout, as_gateway_error
from .provider import DEFAULT_TIMEOUT, ChatCall, EmbeddingCall, ImageCall, Provider
from .streaming import StreamState
from .types import (
    Choices,
    EmbeddingResponse,
    ImageResponse,
    Message,
    ModelResponse,
    ModelResponseStream,
    Usage,
    _chat_id,
    _now,
)

__all__ = [
    "abatch_completion",
    "acompletion",
    "aembedding",
    "aimage_generation",
    "astream_chunks",
    "batch_completion",
    "completion",
    "embedding",
    "image_generation",
    "run_acompletion",
    "run_aembedding",
    "run_aimage_generation",
]

T = TypeVar("T")

# ``gateway.callbacks``, read at call time as in LiteLLM. While a logged call runs the
# plain one, ``_logging`` is set so it is not logged twice.
_gateway = sys.modules[__name__.rpartition(".")[0]]
_logging: contextvars.ContextVar[bool] = contextvars.ContextVar("gateway_logging", default=False)

# Call kwargs about how to call, not what to ask: they go to ``litellm_params``;
# everything else (OpenAI params and unknown extras) goes to ``optional_params``.
_CALL_KWARGS = frozenset(
    {
        "api_version",
        "base_model",
        "caching",
        "client",
        "context_window_fallbacks",
        "deployment_id",
        "drop_params",
        "fallbacks",
        "input_cost_per_token",
        "litellm_call_id",
        "litellm_logging_obj",
        "logger_fn",
        "max_retries",
        "metadata",
        "mock_delay",
        "model_info",
        "num_retries",
        "organization",
        "output_cost_per_token",
        "proxy_server_request",
        "request_timeout",
        "verbose",
    }
)


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    optional: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _CALL_KWARGS:
            params[key] = value
        elif value is not None:
            optional[key] = value
    return optional, params


class _Prepared:
    __slots__ = ("call", "provider", "timeout")

    def __init__(self, provider: Provider, call: Any, timeout: float | None) -> None:
        self.provider, self.call, self.timeout = provider, call, timeout


def _seconds(timeout: Any) -> float | None:
    # A call's timeout as seconds: a number, a numeric string or an httpx.Timeout.
    if timeout is None:
        return None
    if hasattr(timeout, "read") and hasattr(timeout, "connect"):
        # httpx.Timeout (LiteLLM accepts it): bound each wait by its longest phase.
        phases = (timeout.connect, timeout.read, timeout.write, timeout.pool)
        timeout = max((t for t in phases if t is not None), default=None)
        if timeout is None:
            return None
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise BadRequestError(
            f"timeout must be a positive number of seconds, got {timeout!r}", param="timeout"
        )
    return seconds


def _resolve(
    model: str, mock_response: Any, custom_llm_provider: str | None
) -> tuple[Provider, str, str]:
    if mock_response is not None:
        return registry.provider_for("mock"), model, "mock"
    return registry.resolve(model, custom_llm_provider)


def _common(
    model: str,
    kwargs: dict[str, Any],
    mock_response: Any,
    custom_llm_provider: str | None,
    api_key: str | None,
    api_base: str | None,
    headers: dict[str, str] | None,
) -> tuple[Provider, str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    provider, provider_model, name = _resolve(model, mock_response, custom_llm_provider)
    optional, params = _split_kwargs(kwargs)
    params.update(
        {
            "model": model,
            "custom_llm_provider": name,
            "api_key": api_key,
            "api_base": api_base,
        }
    )
    if mock_response is not None:
        params["mock_response"] = mock_response
    merged = dict(headers or {})
    merged.update(optional.pop("extra_headers", None) or {})
    return provider, provider_model, optional, params, merged


def _prepare_chat(
    model: str,
    messages: list[Any] | None,
    stream: bool,
    timeout: float | None,
    mock_response: Any,
    custom_llm_provider: str | None,
    api_key: str | None,
    api_base: str | None,
    headers: dict[str, str] | None,
    kwargs: dict[str, Any],
) -> _Prepared:
    if messages is not None and not isinstance(messages, list | tuple):
        raise BadRequestError(
            f"messages must be a list of messages, got {type(messages).__name__}",
            param="messages",
        )
    timeout = _seconds(timeout)
    provider, provider_model, optional, params, merged = _common(
        model, kwargs, mock_response, custom_llm_provider, api_key, api_base, headers
    )
    if stream:
        optional["stream"] = True
    else:
        optional.pop("stream_options", None)
    call = ChatCall(
        model=provider_model,
        messages=list(messages or []),
        optional_params=optional,
        litellm_params=params,
        api_key=api_key,
        api_base=api_base,
        headers=merged,
        timeout=timeout,
        stream=stream,
    )
    return _Prepared(provider, call, timeout)


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
        _seconds(timeout)
    return ModelResponse(
        _chat_id(), [Choices("stop", 0, Message(text))], _now(), model, "chat.completion",
        None, Usage(10, 20, 30),
    )  # fmt: skip


_SEQUENCES = (list, tuple)


def _include_usage(call: ChatCall) -> bool:
    options = call.optional_params.get("stream_options")
    return bool(isinstance(options, dict) and options.get("include_usage"))


def _feed(state: StreamState, item: Any) -> list[Any]:
    try:
        return state.feed(item)
    except (TypeError, ValueError) as exc:  # msgspec.ValidationError is a ValueError
        raise BadGatewayError(f"handler streamed an invalid chunk: {exc}") from exc


def _timeout_error(timeout: float | None) -> Timeout:
    return Timeout(f"Request timed out after {timeout:g} s")


# The runners: a provider, a call, a timeout, and one error hierarchy out.


async def run_acompletion(
    provider: Provider, call: ChatCall, model_name: str | None
) -> ModelResponse:
    timeout = call.timeout if call.timeout is not None else DEFAULT_TIMEOUT
    try:
        response = await within(timeout, provider.acompletion(call))
    except TimeoutError as exc:
        raise _timeout_error(timeout) from exc
    except GatewayError:
        raise
    except Exception as exc:
        raise as_gateway_error(exc) from exc
    response.model = model_name
    return response


async def astream_chunks(
    provider: Provider,
    call: ChatCall,
    model_name: str | None,
    *,
    raw_dicts: bool = False,
    plain_text: bool = False,
) -> AsyncIterator[Any]:
    """OpenAI chunks for a streaming call.

    The timeout bounds each wait for the next item, so a long stream that keeps
    talking is never cut, and a stalled one is. Closing this iterator closes the
    provider's stream (the handler's generator runs its ``finally``).
    """
    timeout = call.timeout if call.timeout is not None else DEFAULT_TIMEOUT
    state = StreamState(
        model_name,
        include_usage=_include_usage(call),
        raw_dicts=raw_dicts,
        plain_text=plain_text,
    )
    try:
        iterator = provider.astream(call)
    except GatewayError:
        raise
    except Exception as exc:
        raise as_gateway_error(exc) from exc
    idle = IdleTimeout(timeout)
    anext_ = iterator.__anext__
    try:
        while True:
            try:
                item = await idle.wait(anext_())
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                raise _timeout_error(timeout) from exc
            except GatewayError:
                raise
            except Exception as exc:
                raise as_gateway_error(exc) from exc
            for chunk in _feed(state, item):
                yield chunk
        for chunk in state.close():
            yield chunk
    finally:
        idle.close()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):
                await aclose()


async def run_aembedding(
    provider: Provider, call: EmbeddingCall, model_name: str | None
) -> EmbeddingResponse:
    response = await _run(provider.aembedding, call)
    response.model = model_name
    return response


async def run_aimage_generation(provider: Provider, call: ImageCall) -> ImageResponse:
    return await _run(provider.aimage_generation, call)


async def _run(method: Callable[[Any], Any], call: Any) -> Any:
    timeout = call.timeout if call.timeout is not None else DEFAULT_TIMEOUT
    try:
        return await within(timeout, method(call))
    except TimeoutError as exc:
        raise _timeout_error(timeout) from exc
    except GatewayError:
        raise
    except Exception as exc:
        raise as_gateway_error(exc) from exc


def _run_sync(func: Callable[[Any], T], call: Any) -> T:
    """A sync provider call; with a timeout it runs on a worker thread of the process's
    pool, left running (in its slot) on expiry."""
    try:
        if call.timeout is None:
            return func(call)
        lane = (func, call.model, call.api_base)
        return current_pool().run_blocking(func, call, lane=lane, timeout=call.timeout)
    except GatewayError:
        raise
    except TimeoutError as exc:  # ours, or the provider's own deadline fired first
        raise _timeout_error(call.timeout) from exc
    except Exception as exc:
        raise as_gateway_error(exc) from exc


def _sync_stream(prepared: _Prepared, model_name: str) -> Iterator[ModelResponseStream]:
    call = prepared.call
    state = StreamState(model_name, include_usage=_include_usage(call))
    iterator = prepared.provider.stream(call)
    if call.timeout is not None:
        # Bounds each wait for an item, as in astream_chunks; a stuck handler is abandoned.
        lane = (prepared.provider, call.model, call.api_base)
        iterator = iterate_in_thread(iterator, call.timeout, lane)
    try:
        for item in iterator:
            yield from _feed(state, item)
        yield from state.close()
    except GatewayError:
        raise
    except TimeoutError as exc:
        raise _timeout_error(call.timeout) from exc
    except Exception as exc:
        raise as_gateway_error(exc) from exc
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


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
    prepared = _prepare_chat(
        model, messages, stream, timeout, mock_response, custom_llm_provider,
        api_key, api_base, headers, kwargs,
    )  # fmt: skip
    if stream:
        return _sync_stream(prepared, model)
    response = _run_sync(prepared.provider.completion, prepared.call)
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
    prepared = _prepare_chat(
        model, messages, stream, timeout, mock_response, custom_llm_provider,
        api_key, api_base, headers, kwargs,
    )  # fmt: skip
    if stream:
        return astream_chunks(prepared.provider, prepared.call, model)
    return await run_acompletion(prepared.provider, prepared.call, model)


_CallT = TypeVar("_CallT", EmbeddingCall, ImageCall)


def _prepare_other(
    call_type: type[_CallT],
    model: str | None,
    payload: dict[str, Any],
    timeout: float | None,
    mock_response: Any,
    custom_llm_provider: str | None,
    api_key: str | None,
    api_base: str | None,
    headers: dict[str, str] | None,
    kwargs: dict[str, Any],
) -> _Prepared:
    if not model:
        raise BadRequestError("a model is required", param="model")
    timeout = _seconds(timeout)
    provider, provider_model, optional, params, merged = _common(
        model, kwargs, mock_response, custom_llm_provider, api_key, api_base, headers
    )
    call = call_type(
        model=provider_model, optional_params=optional, litellm_params=params,
        api_key=api_key, api_base=api_base, headers=merged, timeout=timeout, **payload,
    )  # fmt: skip
    return _Prepared(provider, call, timeout)


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
    prepared = _prepare_other(
        EmbeddingCall, model, {"input": input}, timeout, mock_response,
        custom_llm_provider, api_key, api_base, headers, kwargs,
    )  # fmt: skip
    response = _run_sync(prepared.provider.embedding, prepared.call)
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
    prepared = _prepare_other(
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
    prepared = _prepare_other(
        ImageCall, model, {"prompt": prompt}, timeout, mock_response,
        custom_llm_provider, api_key, api_base, headers, kwargs,
    )  # fmt: skip
    return _run_sync(prepared.provider.image_generation, prepared.call)


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
    prepared = _prepare_other(
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
