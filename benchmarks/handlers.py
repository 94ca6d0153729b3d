"""The handlers the gateway serves in the benchmarks: plain CustomLLM handlers.

They answer ``benchmarks.payloads`` (the same bytes as the bare apps), the way a user's
handler would: build a ``ModelResponse``, yield ``GenericStreamingChunk`` dicts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import gateway
from benchmarks.payloads import CHAT_TEXT, CHAT_USAGE, STREAM_PIECES
from gateway.types import Choices, GenericStreamingChunk, Message, ModelResponse, Usage

__all__ = ["AsyncBench", "SyncBench", "async_handler", "sync_handler"]


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


async_handler = AsyncBench()
sync_handler = SyncBench()
