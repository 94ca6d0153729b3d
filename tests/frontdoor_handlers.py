"""Handlers and a live gateway the front-door tests share.

Every handler records the kwargs it was called with, so a test can check what the
front door's translation handed over.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import gateway
from gateway import CustomLLM, CustomLLMError

MASTER_KEY = "sk-frontdoor-1234"


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []

    def add(self, kwargs: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append(kwargs)

    @property
    def last(self) -> dict[str, Any]:
        return self.calls[-1]


SEEN = Seen()


def _chunk(text: str = "", **extra: Any) -> dict[str, Any]:
    chunk = {
        "text": text,
        "tool_use": None,
        "is_finished": False,
        "finish_reason": "",
        "usage": None,
        "index": 0,
    }
    chunk.update(extra)
    return chunk


def _last_text(messages: list[dict[str, Any]]) -> str:
    content = messages[-1]["content"]
    return content if isinstance(content, str) else json.dumps(content)


class AsyncEcho(CustomLLM):
    """Async, non-streaming: answers ``echo: <last message>``."""

    async def acompletion(self, *args: Any, **kwargs: Any) -> gateway.ModelResponse:
        SEEN.add(kwargs)
        return gateway.completion(
            model="x", mock_response="echo: " + _last_text(kwargs["messages"])
        )


class SyncEcho(CustomLLM):
    """Sync only: the gateway runs it on a worker thread, streams included."""

    def completion(self, *args: Any, **kwargs: Any) -> gateway.ModelResponse:
        SEEN.add(kwargs)
        time.sleep(0.01)
        return gateway.completion(
            model="x", mock_response="sync: " + _last_text(kwargs["messages"])
        )

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        SEEN.add(kwargs)
        for word in ("sync ", "stream"):
            yield _chunk(word)
        yield _chunk(is_finished=True, finish_reason="stop")


class Streamer(CustomLLM):
    """Async streaming only, with usage on its last chunk."""

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        SEEN.add(kwargs)
        for word in ("one ", "two ", "three"):
            yield _chunk(word)
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        yield _chunk(is_finished=True, finish_reason="stop", usage=usage)


WEATHER_ARGS = '{"city": "Paris"}'


class ToolUser(CustomLLM):
    """Calls ``get_weather`` while no tool result is in the conversation, then answers
    with the tool's result; streams the call's arguments in two pieces."""

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        SEEN.add(kwargs)
        messages = kwargs["messages"]
        if messages[-1]["role"] == "tool":
            text = f"It is {messages[-1]['content']} ({messages[-1]['tool_call_id']})"
            return gateway.completion(model="x", mock_response=text)
        call = {
            "id": "call_w1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": WEATHER_ARGS},
        }
        return gateway.ModelResponse(
            choices=[
                {
                    "finish_reason": "tool_calls",
                    "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                }
            ],
            usage={"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        )

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        SEEN.add(kwargs)
        messages = kwargs["messages"]
        if messages[-1]["role"] == "tool":
            yield _chunk(f"It is {messages[-1]['content']}")
            return
        yield _chunk("Let me check. ")
        first = {
            "id": "call_s1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": WEATHER_ARGS[:8]},
            "index": 0,
        }
        yield _chunk(tool_use=first)
        rest = {"function": {"arguments": WEATHER_ARGS[8:]}, "index": 0}
        yield _chunk(tool_use=rest)
        yield _chunk(is_finished=True, finish_reason="tool_calls")


class Failing(CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        raise CustomLLMError(status_code=429, message="slow down")

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        yield _chunk("partial ")
        raise CustomLLMError(status_code=500, message="died mid-stream")


class Down(CustomLLM):
    """Always unavailable: what a fallback is for."""

    def __init__(self) -> None:
        self.calls = 0

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise CustomLLMError(status_code=503, message="down for maintenance")

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise CustomLLMError(status_code=503, message="down for maintenance")
        yield  # pragma: no cover


DOWN = Down()


class Slow(CustomLLM):
    """Hangs (or streams slowly) until cancelled; ``stopped`` is set by its ``finally``."""

    def __init__(self) -> None:
        self.stopped = threading.Event()

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        try:
            await asyncio.sleep(30)
        finally:
            self.stopped.set()

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        try:
            for i in range(300):
                yield _chunk(f"tick {i} ")
                await asyncio.sleep(0.05)
        finally:
            self.stopped.set()


SLOW = Slow()

HANDLERS: dict[str, Any] = {
    "echo": AsyncEcho(),
    "sync": SyncEcho(),
    "streamer": Streamer(),
    "tools": ToolUser(),
    "failing": Failing(),
    "down": DOWN,
    "slow": SLOW,
}


def config(**extra: Any) -> dict[str, Any]:
    model_list = [
        {"model_name": name, "litellm_params": {"model": f"{name}/m"}} for name in HANDLERS
    ]
    # "primary" is always down; the router falls back to "echo".
    model_list.append({"model_name": "primary", "litellm_params": {"model": "down/m"}})
    data: dict[str, Any] = {
        "model_list": model_list,
        "litellm_settings": {
            "custom_provider_map": [
                {"provider": name, "custom_handler": handler} for name, handler in HANDLERS.items()
            ]
        },
        "general_settings": {"master_key": MASTER_KEY},
        "router_settings": {"fallbacks": [{"primary": ["echo"]}]},
    }
    data.update(extra)
    return data
