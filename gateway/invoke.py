"""Running one call on a provider: the kwargs split, the call objects, the timeout, and
one error hierarchy out.

The library's public calls (``gateway.api``) prepare calls here; the router runs the
calls it built from a deployment with the same ``run_*`` functions. Every provider
failure is mapped once, by ``_mapped``: a ``GatewayError`` passes as it is, a timeout of
ours becomes ``Timeout``, anything else goes through ``as_gateway_error``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import anyio

from . import registry
from ._aio import IdleTimeout, deadline, within
from ._threads import current_pool, iterate_in_thread
from .errors import BadGatewayError, BadRequestError, GatewayError, Timeout, as_gateway_error
from .provider import DEFAULT_TIMEOUT, ChatCall, EmbeddingCall, ImageCall, Provider
from .streaming import StreamState, relay_hint
from .types import EmbeddingResponse, ImageResponse, ModelResponse, ModelResponseStream

__all__ = [
    "Prepared",
    "astream_chunks",
    "prepare_chat",
    "prepare_other",
    "run_acompletion",
    "run_aembedding",
    "run_aimage_generation",
    "run_sync",
    "seconds",
    "split_kwargs",
    "sync_stream",
]

T = TypeVar("T")

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


def split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    optional: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _CALL_KWARGS:
            params[key] = value
        elif value is not None:
            optional[key] = value
    return optional, params


class Prepared:
    __slots__ = ("call", "provider", "timeout")

    def __init__(self, provider: Provider, call: Any, timeout: float | None) -> None:
        self.provider, self.call, self.timeout = provider, call, timeout


def seconds(timeout: Any) -> float | None:
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
    optional, params = split_kwargs(kwargs)
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


def prepare_chat(
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
) -> Prepared:
    if messages is not None and not isinstance(messages, list | tuple):
        raise BadRequestError(
            f"messages must be a list of messages, got {type(messages).__name__}",
            param="messages",
        )
    timeout = seconds(timeout)
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
    return Prepared(provider, call, timeout)


def _include_usage(call: ChatCall) -> bool:
    options = call.optional_params.get("stream_options")
    return bool(isinstance(options, dict) and options.get("include_usage"))


def _feed(state: StreamState, item: Any) -> list[Any]:
    try:
        return state.feed(item)
    except (TypeError, ValueError) as exc:  # msgspec.ValidationError is a ValueError
        raise BadGatewayError(f"handler streamed an invalid chunk: {exc}") from exc


def _mapped(exc: Exception, timeout: float | None) -> GatewayError:
    # The one mapping of a provider's failure (GatewayErrors pass before this): a
    # TimeoutError is ours (``within``, the idle timer, the thread pool) or the
    # provider's own deadline, reported with the call's timeout.
    if isinstance(exc, TimeoutError):
        return Timeout(f"Request timed out after {timeout:g} s")
    return as_gateway_error(exc)


# The runners: a provider, a call, a timeout, and one error hierarchy out.


async def run_acompletion(
    provider: Provider, call: ChatCall, model_name: str | None
) -> ModelResponse:
    timeout = call.timeout if call.timeout is not None else DEFAULT_TIMEOUT
    # The deadline in this frame, not a within() frame more under every request's task.
    guard = deadline(timeout)
    try:
        if guard is None:
            response = await within(timeout, provider.acompletion(call))
        else:
            try:
                response = await provider.acompletion(call)
            except asyncio.CancelledError:
                if guard.timed_out():
                    raise TimeoutError from None
                raise
            finally:
                guard.end()
    except GatewayError:
        raise
    except Exception as exc:
        raise _mapped(exc, timeout) from exc
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
    hint = relay_hint.get()
    try:
        while True:
            try:
                item = await idle.wait(anext_())
            except StopAsyncIteration:
                break
            except GatewayError:
                raise
            except Exception as exc:
                raise _mapped(exc, timeout) from exc
            chunks = _feed(state, item)
            if hint is not None and len(chunks) > 1:
                # One read's chunks (``Events``) go out in one send: each but the last
                # is marked held (see ``RelayHint``).
                last = chunks.pop()
                for chunk in chunks:
                    hint.held = chunk
                    yield chunk
                yield last
                continue
            for chunk in chunks:
                yield chunk
        for chunk in state.close():
            yield chunk
    finally:
        idle.close()
        aclose = getattr(iterator, "aclose", None)
        # A native async generator that ran to its end has nothing to close: no cancel
        # scope for it (~6 us under uvloop, and three getpid() on Python 3.11).
        if aclose is not None and getattr(iterator, "ag_frame", True) is not None:
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
    except GatewayError:
        raise
    except Exception as exc:
        raise _mapped(exc, timeout) from exc


def run_sync(func: Callable[[Any], T], call: Any) -> T:
    """A sync provider call; with a timeout it runs on a worker thread of the process's
    pool, left running (in its slot) on expiry."""
    try:
        if call.timeout is None:
            return func(call)
        lane = (func, call.model, call.api_base)
        return current_pool().run_blocking(func, call, lane=lane, timeout=call.timeout)
    except GatewayError:
        raise
    except Exception as exc:
        raise _mapped(exc, call.timeout) from exc


def sync_stream(prepared: Prepared, model_name: str) -> Iterator[ModelResponseStream]:
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
    except Exception as exc:
        raise _mapped(exc, call.timeout) from exc
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


_CallT = TypeVar("_CallT", EmbeddingCall, ImageCall)


def prepare_other(
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
) -> Prepared:
    if not model:
        raise BadRequestError("a model is required", param="model")
    timeout = seconds(timeout)
    provider, provider_model, optional, params, merged = _common(
        model, kwargs, mock_response, custom_llm_provider, api_key, api_base, headers
    )
    call = call_type(
        model=provider_model, optional_params=optional, litellm_params=params,
        api_key=api_key, api_base=api_base, headers=merged, timeout=timeout, **payload,
    )  # fmt: skip
    return Prepared(provider, call, timeout)
