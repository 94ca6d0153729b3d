"""Canned answers: ``mock_response=`` on any call, and ``mock/<anything>`` models.

Never calls a handler or the network. Besides LiteLLM's ``mock_response`` (text, an
exception, or a response dict) and ``mock_delay`` (seconds), a latency model for load
tests, read from the request's extra fields first and the deployment's
``litellm_params`` second:

- ``mock_tokens``: the reply is that many generated word tokens (deterministic text);
  ``mock_response``, when set, wins over it.
- ``mock_ttft_ms``: time to the first token.
- ``mock_tokens_per_second``: pace of the following tokens (unset: no pacing). A
  non-streaming answer comes after ``ttft + tokens / tokens_per_second``.
- ``mock_failure_rate`` (0..1) and ``mock_failure_status`` (default 500): that share of
  calls fail with the gateway error for that status.

Delays use ``anyio.sleep`` in async calls, so many slow mock streams cost nothing while
they wait. Usage is counted (word tokens) except for a ``mock_response`` text, which
reports LiteLLM's fixed 10/20/30.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import lru_cache
from typing import Any

import anyio
import msgspec

from gateway.errors import BadRequestError, error_for_status
from gateway.provider import ChatCall, EmbeddingCall, ImageCall, Provider
from gateway.types import (
    Choices,
    Embedding,
    EmbeddingResponse,
    ImageObject,
    ImageResponse,
    Message,
    ModelResponse,
    Usage,
)

__all__ = ["DEFAULT_TEXT", "MockProvider", "generated_text", "generated_tokens"]

DEFAULT_TEXT = "This is a mock response from the gateway."
_PIECES = re.compile(r"\s*\S+|\s+")
_DEFAULT_PIECES = tuple(_PIECES.findall(DEFAULT_TEXT))

# The vocabulary of generated replies: common short English words, cycled.
_WORDS = (
    "the quick brown fox jumps over a lazy dog while this gateway streams tokens at a "
    "steady pace so that clients can measure time to first token and the gaps between "
    "chunks under load without any real model behind it and every answer is the same "
    "for the same length which keeps benchmark runs comparable from one day to the next"
).split()

# Randomness only decides injected failures; the text never depends on it.
_random = random.Random()

# Sizes a request can choose, bounded like any client input: a reply of 10**12 tokens,
# embeddings or images would be built in memory on the event loop.
_MAX_TOKENS = 100_000
_MAX_DIMENSIONS = 65_536
_MAX_IMAGES = 10  # OpenAI's own bound for n


def _param(call: Any, name: str, default: Any = None) -> Any:
    """A mock setting from the request (optional_params) or the deployment (litellm_params)."""
    value = call.optional_params.get(name)
    if value is None:
        value = call.litellm_params.get(name, default)
    return default if value is None else value


def _number(call: Any, name: str, default: float, *, upper: float | None = None) -> float:
    value = _param(call, name, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRequestError(f"{name} must be a number, got {value!r}", param=name)
    try:
        number = float(value)
    except ValueError:
        raise BadRequestError(f"{name} must be a number, got {value!r}", param=name) from None
    if not number >= 0 or (upper is not None and number > upper):  # rejects NaN too
        bound = f"between 0 and {upper:g}" if upper is not None else ">= 0"
        raise BadRequestError(f"{name} must be {bound}, got {value!r}", param=name)
    return number


def _count(call: Any, name: str, default: int, upper: int) -> int:
    value = _param(call, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise BadRequestError(
            f"{name} must be an integer between 1 and {upper}, got {value!r}", param=name
        )
    return value


@lru_cache(maxsize=256)
def generated_tokens(count: int) -> tuple[str, ...]:
    """The deterministic reply of ``count`` word tokens, as stream pieces."""
    n = len(_WORDS)
    return tuple(_WORDS[i % n] if i == 0 else " " + _WORDS[i % n] for i in range(count))


@lru_cache(maxsize=256)
def generated_text(count: int) -> str:
    """``generated_tokens(count)`` joined: the non-streaming reply."""
    return "".join(generated_tokens(count))


def _prompt_tokens(messages: Sequence[Any]) -> int:
    count = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            count += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    count += len(part["text"].split())
    return count


class _Plan:
    """What one mock chat call answers and when: read once from the call."""

    __slots__ = ("delay", "failure", "pieces", "response", "tps", "ttft")

    def __init__(self, call: ChatCall) -> None:
        self.delay = _number(call, "mock_delay", 0)
        self.ttft = _number(call, "mock_ttft_ms", 0) / 1000
        self.tps = _number(call, "mock_tokens_per_second", 0)
        self.failure: BaseException | None = _failure(call)
        mock = _param(call, "mock_response")
        if isinstance(mock, BaseException):
            self.failure = mock
            return
        if mock is not None:
            self.response = _response(call)
            choices = self.response.choices
            self.pieces: Sequence[str] = _PIECES.findall(
                (choices[0].message.content or "") if choices else ""
            )
            return
        if _param(call, "mock_tokens") is not None:
            count = int(_number(call, "mock_tokens", 0, upper=_MAX_TOKENS))
            self.pieces = generated_tokens(count)
            text = generated_text(count)
        else:
            self.pieces = _DEFAULT_PIECES
            text = DEFAULT_TEXT
        prompt = _prompt_tokens(call.messages)
        completion = len(self.pieces)
        self.response = ModelResponse(
            choices=[Choices(message=Message(content=text))],
            model=call.model,
            usage=Usage(
                prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
            ),
        )

    def total_seconds(self) -> float:
        """How long a non-streaming answer takes: ttft + tokens / tokens_per_second."""
        seconds = self.delay + self.ttft
        if self.tps:
            seconds += len(self.pieces) / self.tps
        return seconds

    def items(self) -> list[Any]:
        """The stream items: one per token, then the finish item with usage."""
        choices = self.response.choices
        items: list[Any] = [
            {"text": piece, "is_finished": False, "finish_reason": None, "index": 0, "usage": None}
            for piece in self.pieces
        ]
        finish_reason = choices[0].finish_reason if choices else None
        items.append(_finish_item(finish_reason, self.response.usage))
        return items

    def offsets(self) -> Iterator[float]:
        """Seconds from the start at which each item of ``items()`` is due."""
        first = self.delay + self.ttft
        step = 1 / self.tps if self.tps else 0.0
        for i in range(len(self.pieces)):
            yield first + i * step
        # The finish item follows the last token at once.
        yield first + max(len(self.pieces) - 1, 0) * step


def _failure(call: ChatCall) -> BaseException | None:
    rate = _number(call, "mock_failure_rate", 0, upper=1)
    if not rate or _random.random() >= rate:
        return None
    status = _param(call, "mock_failure_status", 500)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status < 600:
        raise BadRequestError(
            f"mock_failure_status must be an HTTP error status (400-599), got {status!r}",
            param="mock_failure_status",
        )
    return error_for_status(status, f"Injected mock failure (mock_failure_rate={rate:g})")


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
        choices=[Choices(message=Message(content=str(mock)))],
        model=call.model,
        usage=Usage(prompt_tokens=10, completion_tokens=20, total_tokens=30),
    )


def _finish_item(finish_reason: str | None, usage: Usage) -> dict[str, Any]:
    return {
        "text": "",
        "is_finished": True,
        "finish_reason": finish_reason or "stop",
        "index": 0,
        "usage": msgspec.to_builtins(usage),
    }


class MockProvider(Provider):
    name = "mock"

    async def acompletion(self, call: ChatCall) -> ModelResponse:
        plan = _Plan(call)
        if plan.failure is not None:
            await _sleep(plan.delay)
            raise plan.failure
        await _sleep(plan.total_seconds())
        return plan.response

    async def astream(self, call: ChatCall) -> AsyncIterator[Any]:
        plan = _Plan(call)
        if plan.failure is not None:
            await _sleep(plan.delay)
            raise plan.failure
        items = plan.items()
        start = anyio.current_time()
        for item, offset in zip(items, plan.offsets(), strict=True):
            if offset:
                # Due times are absolute, so the pace does not drift with scheduling delays.
                await anyio.sleep_until(start + offset)
            yield item

    def completion(self, call: ChatCall) -> ModelResponse:
        plan = _Plan(call)
        if plan.failure is not None:
            _sleep_sync(plan.delay)
            raise plan.failure
        _sleep_sync(plan.total_seconds())
        return plan.response

    def stream(self, call: ChatCall) -> Iterator[Any]:
        plan = _Plan(call)
        if plan.failure is not None:
            _sleep_sync(plan.delay)
            raise plan.failure
        items = plan.items()
        start = time.monotonic()
        for item, offset in zip(items, plan.offsets(), strict=True):
            if offset:
                _sleep_sync(start + offset - time.monotonic())
            yield item

    async def aembedding(self, call: EmbeddingCall) -> EmbeddingResponse:
        return self.embedding(call)

    def embedding(self, call: EmbeddingCall) -> EmbeddingResponse:
        inputs = call.input if isinstance(call.input, list) else [call.input]
        if inputs and isinstance(inputs[0], int):  # one token array
            inputs = [inputs]
        dims = _count(call, "dimensions", 8, _MAX_DIMENSIONS)
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
        n = _count(call, "n", 1, _MAX_IMAGES)
        url = _param(call, "mock_response", "https://example.com/mock.png")
        return ImageResponse(data=[ImageObject(url=str(url)) for _ in range(n)])


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await anyio.sleep(seconds)


def _sleep_sync(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)
