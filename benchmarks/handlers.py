"""The handlers the gateway serves in the benchmarks: plain CustomLLM handlers.

They answer ``benchmarks.payloads`` (the same bytes as the bare apps), the way a user's
handler would: build a ``ModelResponse``, yield ``GenericStreamingChunk`` dicts. ``SeedBench``
is the seed's own idiom instead: ``acompletion`` returns the library's
``gateway.completion(..., mock_response="Hi!")``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import gateway
from benchmarks.payloads import CHAT_TEXT, CHAT_USAGE, STREAM_PIECES
from gateway.types import Choices, GenericStreamingChunk, Message, ModelResponse, Usage

__all__ = [
    "AsyncBench",
    "SeedBench",
    "SyncBench",
    "async_handler",
    "seed_handler",
    "sync_handler",
]


def _response() -> ModelResponse:
    return ModelResponse(
        choices=[Choices(message=Message(content=CHAT_TEXT))], usage=Usage(**CHAT_USAGE)
    )


def _chunks() -> Iterator[GenericStreamingChunk]:
    for piece in STREAM_PIECES:
        yield {
            "text": piece,
            "tool_use": None,
            "is_finished": False,
            "finish_reason": "",
            "usage": None,
            "index": 0,
        }
    yield {
        "text": "",
        "tool_use": None,
        "is_finished": True,
        "finish_reason": "stop",
        "usage": None,
        "index": 0,
    }


class AsyncBench(gateway.CustomLLM):
    """Async-only: ``acompletion`` and ``astreaming``."""

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return _response()

    async def astreaming(self, *args: Any, **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:
        for chunk in _chunks():
            yield chunk


class SyncBench(gateway.CustomLLM):
    """Sync-only: the gateway runs ``completion`` and ``streaming`` on worker threads."""

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return _response()

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        return _chunks()


class SeedBench(gateway.CustomLLM):
    """The seed's handler, as its docs write it (tests/test_seed.py runs the original)."""

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return gateway.completion(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "Hello world"}],
            mock_response="Hi!",
        )  # type: ignore


async_handler = AsyncBench()
sync_handler = SyncBench()
seed_handler = SeedBench()
