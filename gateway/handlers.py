"""The handler contract at work: user handlers (``CustomLLM`` subclasses or any
duck-typed object) served as a ``Provider``.

This is where the contract's method selection lives: which handler method serves a
call, the keyword arguments it is passed, and how whatever it returns becomes an OpenAI
response. Core code: it depends on nothing in the ``gateway_providers`` package.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from typing import Any

import msgspec

from ._threads import DONE, Pull, iterate_async, run_async, run_in_thread
from .custom_llm import serves
from .errors import BadGatewayError, NotImplementedByHandlerError
from .provider import DEFAULT_TIMEOUT, ChatCall, EmbeddingCall, ImageCall, Provider
from .streaming import StreamState, is_single_item, stream_chunk_builder
from .types import (
    Choices,
    Embedding,
    EmbeddingResponse,
    ImageResponse,
    Message,
    ModelResponse,
)

__all__ = ["CustomProvider"]


class _Logging:
    """Stands in for LiteLLM's ``logging_obj``: handlers may call any method on it."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _noop


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


_LOGGING = _Logging()


class _Method:
    """One handler method, with what it accepts worked out once."""

    __slots__ = ("accepts", "fn", "served")

    def __init__(self, handler: Any, name: str) -> None:
        self.served = serves(handler, name)
        fn = getattr(handler, name, None)
        # Called only when served (callable); the stand-in keeps the type honest.
        self.fn: Callable[..., Any] = fn if callable(fn) else _noop
        self.accepts: frozenset[str] | None = None
        if self.served:
            try:
                params = inspect.signature(self.fn).parameters.values()
            except (TypeError, ValueError):
                return
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                self.accepts = frozenset(
                    p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                )

    def __call__(self, kwargs: dict[str, Any]) -> Any:
        # A handler with an explicit signature gets only what it accepts (LiteLLM
        # passes everything and breaks the seed's own aimage_generation).
        if self.accepts is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self.accepts}
        return self.fn(**kwargs)


def _chat_kwargs(call: ChatCall, *, is_async: bool) -> dict[str, Any]:
    return {
        "model": call.model,
        "messages": call.messages,
        "optional_params": call.optional_params,
        "litellm_params": call.litellm_params,
        "model_response": ModelResponse(),
        "api_key": call.api_key,
        "api_base": call.api_base,
        "headers": call.headers,
        "timeout": call.timeout if call.timeout is not None else DEFAULT_TIMEOUT,
        "client": None,
        "logging_obj": _LOGGING,
        "print_verbose": _noop,
        "encoding": None,
        "acompletion": is_async,
        "custom_prompt_dict": {},
        "logger_fn": None,
    }


def _embedding_kwargs(call: EmbeddingCall) -> dict[str, Any]:
    return {
        "model": call.model,
        "input": call.input,
        "model_response": EmbeddingResponse(),
        "optional_params": call.optional_params,
        "litellm_params": call.litellm_params,
        "logging_obj": _LOGGING,
        "print_verbose": _noop,
        "api_key": call.api_key,
        "api_base": call.api_base,
        "timeout": call.timeout if call.timeout is not None else DEFAULT_TIMEOUT,
        "headers": call.headers,
        "client": None,
    }


def _image_kwargs(call: ImageCall) -> dict[str, Any]:
    return {
        "model": call.model,
        "prompt": call.prompt,
        "model_response": ImageResponse(),
        "optional_params": call.optional_params,
        "litellm_params": call.litellm_params,
        "logging_obj": _LOGGING,
        "api_key": call.api_key,
        "api_base": call.api_base,
        "timeout": call.timeout if call.timeout is not None else DEFAULT_TIMEOUT,
        "headers": call.headers,
        "client": None,
    }


def _as(cls: type[Any], result: Any, fallback: Any, what: str) -> Any:
    if isinstance(result, cls):
        return result
    if result is None:
        return fallback
    try:
        if isinstance(result, dict):
            return msgspec.convert(result, cls)
        if hasattr(result, "model_dump"):
            return msgspec.convert(result.model_dump(), cls)
        if isinstance(result, msgspec.Struct):
            return msgspec.convert(msgspec.to_builtins(result), cls)
    except msgspec.ValidationError as exc:
        raise BadGatewayError(f"handler returned an invalid {what}: {exc}") from exc
    raise BadGatewayError(f"handler returned {type(result).__name__}, expected a {what}")


def _to_model_response(result: Any, provider: CustomProvider, method: str) -> ModelResponse:
    if isinstance(result, str):
        return ModelResponse(choices=[Choices(message=Message(content=result))])
    if result is None:
        # Not an empty answer (a 200 with null content): the handler forgot to return.
        raise BadGatewayError(
            f"handler {type(provider.handler).__name__}.{method} of provider "
            f"{provider.name!r} returned None, expected a chat completion"
        )
    return _as(ModelResponse, result, None, "chat completion")


def _to_embedding(result: Any, fallback: EmbeddingResponse) -> EmbeddingResponse:
    if isinstance(result, list):  # bare vectors
        return EmbeddingResponse(
            data=[Embedding(embedding=vector, index=i) for i, vector in enumerate(result)]
        )
    return _as(EmbeddingResponse, result, fallback, "embedding response")


@contextlib.asynccontextmanager
async def _aclosing(iterator: Any) -> AsyncIterator[Any]:
    # Close inner async generators when the stream is closed, so the handler's
    # `finally` runs now and not whenever the garbage collector gets to it.
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def _aiter_any(result: Any) -> AsyncIterator[Any]:
    if inspect.isawaitable(result):
        result = await result
    if hasattr(result, "__aiter__"):
        async with _aclosing(result):
            async for item in result:
                yield item
    elif is_single_item(result):
        yield result
    else:
        for item in result:
            yield item


async def _pull_in_threads(iterator: Iterator[Any], lane: Hashable) -> AsyncIterator[Any]:
    """Pull a sync iterator on worker threads, one item per hop, and close it at the end."""
    pull = Pull(iterator)
    try:
        while True:
            item = await run_in_thread(pull.next, lane=lane)
            if item is DONE:
                return
            yield item
    finally:
        pull.close()


def _iter_any(result: Any, timeout: float | None) -> Iterator[Any]:
    if hasattr(result, "__aiter__"):
        yield from iterate_async(lambda: _aiter_any(result), timeout)
    elif is_single_item(result):
        yield result
    else:
        yield from result


class CustomProvider(Provider):
    """Serves calls with a user handler, picking the method the contract says."""

    def __init__(self, handler: Any, name: str = "custom") -> None:
        self.handler = handler
        self.name = name
        self._completion = _Method(handler, "completion")
        self._acompletion = _Method(handler, "acompletion")
        self._streaming = _Method(handler, "streaming")
        self._astreaming = _Method(handler, "astreaming")
        self._embedding = _Method(handler, "embedding")
        self._aembedding = _Method(handler, "aembedding")
        self._image = _Method(handler, "image_generation")
        self._aimage = _Method(handler, "aimage_generation")

    def _lane(self, call: Any) -> Hashable:
        # The thread budget's unit: one model of this handler (per upstream, if any).
        return (self.name, call.model, call.api_base)

    def _missing(self, what: str) -> NotImplementedByHandlerError:
        return NotImplementedByHandlerError(
            f"handler {type(self.handler).__name__} of provider {self.name!r} implements "
            f"no {what} method"
        )

    # chat, async

    async def acompletion(self, call: ChatCall) -> ModelResponse:
        kwargs = _chat_kwargs(call, is_async=True)
        used = "acompletion"
        if self._acompletion.served:
            result = await self._acompletion(kwargs)
        elif self._completion.served:
            used = "completion"
            kwargs["acompletion"] = False
            result = await run_in_thread(self._completion, kwargs, lane=self._lane(call))
        elif self._astreaming.served or self._streaming.served:
            # include_usage: the usage the handler streamed reaches the built answer.
            state = StreamState(call.model, include_usage=True)
            chunks = [c async for item in self.astream(call) for c in state.feed(item)]
            return stream_chunk_builder(chunks + state.close())
        else:
            raise self._missing("completion")
        return _to_model_response(result, self, used)

    def astream(self, call: ChatCall) -> AsyncIterator[Any]:
        if self._astreaming.served:
            result = self._astreaming(_chat_kwargs(call, is_async=True))
            if inspect.isasyncgen(result):
                # The common case, handed over as it is: no generator hop per chunk,
                # and closing the stream closes the handler's generator itself.
                return result
            return self._astream_any(result)
        return self._astream_other(call)

    async def _astream_any(self, result: Any) -> AsyncIterator[Any]:
        items = _aiter_any(result)
        async with _aclosing(items):
            async for item in items:
                yield item

    async def _astream_other(self, call: ChatCall) -> AsyncIterator[Any]:
        if self._streaming.served:
            result = await run_in_thread(
                self._streaming, _chat_kwargs(call, is_async=False), lane=self._lane(call)
            )
            if hasattr(result, "__aiter__") or is_single_item(result):
                items = _aiter_any(result)
            else:
                items = _pull_in_threads(iter(result), self._lane(call))
        else:
            # No streaming method: stream the whole answer.
            yield await self.acompletion(call)
            return
        async with _aclosing(items):
            async for item in items:
                yield item

    # chat, sync

    def completion(self, call: ChatCall) -> ModelResponse:
        kwargs = _chat_kwargs(call, is_async=False)
        used = "completion"
        if self._completion.served:
            result = self._completion(kwargs)
        elif self._acompletion.served:
            used = "acompletion"
            kwargs["acompletion"] = True
            result = run_async(_awaited, self._acompletion, kwargs, timeout=call.timeout)
        elif self._streaming.served or self._astreaming.served:
            state = StreamState(call.model, include_usage=True)
            chunks = [c for item in self.stream(call) for c in state.feed(item)]
            return stream_chunk_builder(chunks + state.close())
        else:
            raise self._missing("completion")
        return _to_model_response(result, self, used)

    def stream(self, call: ChatCall) -> Iterator[Any]:
        if self._streaming.served:
            yield from _iter_any(self._streaming(_chat_kwargs(call, is_async=False)), call.timeout)
        elif self._astreaming.served:
            yield from iterate_async(
                lambda: _aiter_any(self._astreaming(_chat_kwargs(call, is_async=True))),
                call.timeout,
            )
        else:
            yield self.completion(call)

    # embeddings

    async def aembedding(self, call: EmbeddingCall) -> EmbeddingResponse:
        kwargs = _embedding_kwargs(call)
        if self._aembedding.served:
            result = await self._aembedding(kwargs)
        elif self._embedding.served:
            result = await run_in_thread(self._embedding, kwargs, lane=self._lane(call))
        else:
            raise self._missing("embedding")
        return _to_embedding(result, kwargs["model_response"])

    def embedding(self, call: EmbeddingCall) -> EmbeddingResponse:
        kwargs = _embedding_kwargs(call)
        if self._embedding.served:
            result = self._embedding(kwargs)
        elif self._aembedding.served:
            result = run_async(_awaited, self._aembedding, kwargs, timeout=call.timeout)
        else:
            raise self._missing("embedding")
        return _to_embedding(result, kwargs["model_response"])

    # images

    async def aimage_generation(self, call: ImageCall) -> ImageResponse:
        kwargs = _image_kwargs(call)
        if self._aimage.served:
            result = await self._aimage(kwargs)
        elif self._image.served:
            result = await run_in_thread(self._image, kwargs, lane=self._lane(call))
        else:
            raise self._missing("image generation")
        return _as(ImageResponse, result, kwargs["model_response"], "image response")

    def image_generation(self, call: ImageCall) -> ImageResponse:
        kwargs = _image_kwargs(call)
        if self._image.served:
            result = self._image(kwargs)
        elif self._aimage.served:
            result = run_async(_awaited, self._aimage, kwargs, timeout=call.timeout)
        else:
            raise self._missing("image generation")
        return _as(ImageResponse, result, kwargs["model_response"], "image response")


async def _awaited(method: _Method, kwargs: dict[str, Any]) -> Any:
    return await method(kwargs)
