"""What every front door shares: the chat call it makes and how it reads chat answers."""

from __future__ import annotations

from random import getrandbits
from typing import Any, Protocol

import msgspec

from ..errors import BadRequestError, GatewayError
from ..streaming import plain
from ..types import ModelResponse, ModelResponseStream, Usage

__all__ = [
    "ChatIn",
    "EventWriter",
    "ToolDelta",
    "answer_parts",
    "chunk_parts",
    "new_id",
    "plain",
    "sse",
    "text_of",
    "usage_counts",
]

_encode = msgspec.json.Encoder().encode


class EventWriter(Protocol):
    """A front door's stream translator: the encoded events to send at the start, for
    each chat chunk (often one event, sometimes none: ``b""``), at the end, and
    (instead of the end) for a failure."""

    def start(self) -> bytes: ...

    def feed(self, chunk: Any) -> bytes: ...

    def close(self) -> bytes: ...

    def fail(self, exc: GatewayError) -> bytes: ...


class ChatIn(msgspec.Struct):
    """The chat call a front door's request becomes."""

    model: str
    messages: list[dict[str, Any]]
    optional_params: dict[str, Any]
    stream: bool = False


def new_id(prefix: str) -> str:
    """An id, not a secret: ``random`` as for chat ids (no syscall)."""
    return f"{prefix}{getrandbits(96):024x}"


def sse(event: str, data: Any) -> bytes:
    """One server-sent event with a name, as the Responses and Messages APIs send them."""
    return b"event: " + event.encode() + b"\ndata: " + _encode(data) + b"\n\n"


def usage_counts(usage: Any) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of a chat usage in any of its forms."""
    if not usage:
        return 0, 0
    if isinstance(usage, Usage):
        return usage.prompt_tokens, usage.completion_tokens
    usage = plain(usage)
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _tool_call(call: Any) -> dict[str, Any]:
    call = plain(call)
    function = plain(call.get("function") or {})
    return {
        "id": call.get("id") or new_id("call_"),
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
    }


def answer_parts(
    answer: Any,
) -> tuple[str | None, list[dict[str, Any]], str, tuple[int, int]]:
    """A whole chat answer as (text, tool calls {id, name, arguments}, finish reason, usage)."""
    if not isinstance(answer, ModelResponse):
        answer = msgspec.convert(plain(answer), ModelResponse, strict=False)
    choice = answer.choices[0] if answer.choices else None
    if choice is None:
        return None, [], "stop", usage_counts(answer.usage)
    message = choice.message
    calls = [_tool_call(call) for call in message.tool_calls or ()]
    finish = choice.finish_reason or ("tool_calls" if calls else "stop")
    content = message.content if isinstance(message.content, str) else None
    return content, calls, finish, usage_counts(answer.usage)


class ToolDelta(msgspec.Struct, gc=False):
    """A piece of one streamed tool call: ``index`` names the call, the rest may be empty."""

    index: int
    id: str | None
    name: str | None
    arguments: str


def _tool_delta(value: Any) -> ToolDelta:
    call = plain(value)
    function = call.get("function") or {}
    if not isinstance(function, dict):
        function = plain(function)
    return ToolDelta(
        int(call.get("index") or 0),
        call.get("id") or None,
        function.get("name") or None,
        function.get("arguments") or "",
    )


def chunk_parts(
    chunk: Any,
) -> tuple[str | None, list[ToolDelta] | None, str | None, Any]:
    """One chat stream chunk as (text, tool-call pieces, finish reason, usage).

    Chunks come from the router's front-door mode (``plain_text``): text chunks as
    the text itself, an OpenAI-compatible upstream's chunks as dicts, the rest as
    ``ModelResponseStream``.
    """
    if chunk.__class__ is str:
        return chunk, None, None, None
    if isinstance(chunk, dict):
        usage = chunk.get("usage")
        choices = chunk.get("choices")
        if not choices:
            return None, None, None, usage
        choice = choices[0]
        delta = choice.get("delta") or {}
        text = delta.get("content")
        tools = delta.get("tool_calls")
        return (
            text if isinstance(text, str) else None,
            [_tool_delta(t) for t in tools] if tools else None,
            choice.get("finish_reason"),
            usage,
        )
    if not isinstance(chunk, ModelResponseStream):
        chunk = msgspec.convert(plain(chunk), ModelResponseStream, strict=False)
    usage = chunk.usage or None
    if not chunk.choices:
        return None, None, None, usage
    choice = chunk.choices[0]
    delta = choice.delta
    text = delta.content if isinstance(delta.content, str) else None
    tools = delta.tool_calls
    return (
        text,
        [_tool_delta(t) for t in tools] if tools else None,
        choice.finish_reason,
        usage,
    )


def text_of(content: Any, where: str) -> str:
    """The text of content given as a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise BadRequestError(f"{where}[{i}] must be a text part", param=where)
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequestError(f"{where} must be a string or a list of text parts", param=where)
