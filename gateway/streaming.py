"""Turning whatever a handler streams into OpenAI chat-completion chunks.

Accepted items: ``GenericStreamingChunk`` dicts, OpenAI-shaped chunk dicts,
``ModelResponseStream`` objects, plain strings, a whole ``ModelResponse``, and any
object with ``model_dump()`` (LiteLLM's pydantic types). Every chunk of one stream
gets the same ``id`` and ``created``, as OpenAI sends them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import msgspec

from .types import (
    ChatCompletionMessageToolCall,
    Choices,
    Delta,
    Message,
    ModelResponse,
    ModelResponseStream,
    StreamingChoices,
    Usage,
    _chat_id,
)

__all__ = [
    "Events",
    "RelayHint",
    "StreamState",
    "is_single_item",
    "plain",
    "relay_hint",
    "stream_chunk_builder",
]

_UNSET = msgspec.UNSET
_encode = msgspec.json.Encoder().encode


class Events(list[Any]):
    """The items of one upstream read, yielded at once by a provider's ``astream``.

    A read often holds several server-sent events. Yielded one by one, each would cost
    a step of the provider's generator and a wait under the idle timeout (~90 bytecodes
    an event); yielded as one ``Events``, that is paid once a read. ``StreamState.feed``
    takes it as the items in turn, so every consumer of ``astream`` accepts it.
    """

    __slots__ = ()


class RelayHint:
    """Which chunk has another right behind it, already in memory.

    An upstream's network read often holds several SSE events. A provider relaying
    them sets ``held`` to the item it is about to yield when the next event of the
    same read is queued and will surely make a chunk too; the HTTP stream writer then
    writes that item's chunk together with the next one: one send, not one each.
    Nothing waits for the network: what one read brought is written before the next
    read. The item itself marks it (an identity test), so an item of another stream
    (a hedged attempt that lost) can never hold a chunk back. Providers that never
    set it keep one send a chunk.
    """

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: Any = None


# Set by the HTTP app for each stream it answers (None elsewhere).
relay_hint: ContextVar[RelayHint | None] = ContextVar("gateway_relay_hint", default=None)


def is_single_item(value: Any) -> bool:
    """Whether a stream method returned one chunk rather than an iterable of them."""
    return isinstance(value, str | bytes | dict | msgspec.Struct) or (
        hasattr(value, "model_dump") and not hasattr(value, "__iter__")
    )


class StreamState:
    """Per-stream state: one id, role on the first chunk, exactly one finish chunk.

    ``raw_dicts=True`` is the HTTP gateway's mode, where chunks are only ever encoded:
    OpenAI-shaped dicts (from an OpenAI-compatible upstream) pass through as dicts,
    unknown fields and all, only re-stamped; and plain text chunks, most of any
    stream, come out as ``msgspec.Raw`` JSON made from a per-stream template (the
    same bytes the Structs encode to, without building three Structs per chunk).

    ``plain_text=True`` (``raw_dicts`` implied) is the front doors' mode: text chunks
    come out as the text itself, a ``str``, and no chunk is given a role. A front door
    frames each text in its own API's event, so a chat chunk built only to be decoded
    back would be wasted work (2 us a chunk, a fifth of a Responses stream's cost).
    """

    __slots__ = (
        "_finished",
        "_prefix",
        "_role_sent",
        "_suffix",
        "_tools_seen",
        "created",
        "id",
        "include_usage",
        "model",
        "plain_text",
        "raw_dicts",
        "usage",
    )

    def __init__(
        self,
        model: str | None,
        *,
        include_usage: bool = False,
        raw_dicts: bool = False,
        plain_text: bool = False,
    ) -> None:
        self.id = _chat_id()
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.raw_dicts = raw_dicts or plain_text
        self.plain_text = plain_text
        self.usage: Any = None
        self._role_sent = plain_text  # a role is chat's own: no front door sends one
        self._finished = False
        self._tools_seen = False
        self._prefix: bytes | None = None
        self._suffix = b""
        if raw_dicts and not plain_text:
            self._prefix = (
                b'{"id":"%s","choices":[{"index":0,"delta":{"content":' % self.id.encode()
            )
            self._suffix = b'},"finish_reason":null}],"created":%d,"model":%s,%s}' % (
                self.created,
                _encode(model),
                b'"object":"chat.completion.chunk","system_fingerprint":null'
                + (b',"usage":null' if include_usage else b""),
            )

    def _text(self, out: list[Any], text: str) -> None:
        if self._prefix is not None and self._role_sent:
            out.append(msgspec.Raw(self._prefix + _encode(text) + self._suffix))
        elif self.plain_text:
            out.append(text)
        else:
            self._emit(out, Delta(content=text))

    def _make(self, delta: Delta, finish_reason: str | None = None) -> ModelResponseStream:
        return ModelResponseStream(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[StreamingChoices(delta=delta, finish_reason=finish_reason)],
            usage=None if self.include_usage else _UNSET,
        )

    def _emit(self, out: list[Any], delta: Delta, finish_reason: str | None = None) -> None:
        if not self._role_sent:
            self._role_sent = True
            if delta.role is None:
                if finish_reason is not None:
                    out.append(self._make(Delta(role="assistant", content="")))
                else:
                    delta.role = "assistant"
        out.append(self._make(delta, finish_reason))

    def _finish(self, out: list[Any], reason: str | None) -> None:
        if self._finished:
            return
        if reason is None or reason == "stop":
            reason = "tool_calls" if self._tools_seen else "stop"
        self._finished = True
        self._emit(out, Delta(), reason)

    def feed(self, item: Any) -> list[Any]:
        """The OpenAI chunks for one item a handler yielded (often one, sometimes none)."""
        out: list[Any] = []
        if isinstance(item, str):
            if item:
                self._text(out, item)
        elif isinstance(item, dict):
            if "choices" in item:
                self._feed_openai_dict(item, out)
            else:
                self._feed_generic(item, out)
        elif isinstance(item, ModelResponseStream):
            self._feed_stream_chunk(item, out)
        elif isinstance(item, ModelResponse):
            self._feed_response(item, out)
        elif isinstance(item, bytes):
            if item:
                self._emit(out, Delta(content=item.decode()))
        elif item is None:
            pass
        elif item.__class__ is Events:
            for one in item:
                # An upstream's own chunks, most of any stream: no call of feed each.
                if one.__class__ is dict and "choices" in one:
                    self._feed_openai_dict(one, out)
                else:
                    out += self.feed(one)
        elif hasattr(item, "model_dump"):
            return self.feed(item.model_dump())
        else:
            raise TypeError(f"cannot stream an item of type {type(item).__name__}")
        return out

    def close(self) -> list[Any]:
        """The chunks that end the stream: the finish chunk if none came, then usage (if
        asked for and the handler reported it)."""
        out: list[Any] = []
        self._finish(out, None)
        # The usage chunk reports what the handler reported. Without a report there is
        # none (every chunk's "usage" stays null): zeros would read as a free answer.
        usage = self.usage
        if self.include_usage and usage:
            if not isinstance(usage, Usage):
                usage = msgspec.convert(usage, Usage)
            out.append(
                ModelResponseStream(
                    id=self.id, created=self.created, model=self.model, choices=[], usage=usage
                )
            )
        return out

    def _feed_generic(self, item: dict[str, Any], out: list[Any]) -> None:
        text = item.get("text")
        tool_use = item.get("tool_use")
        if text and not tool_use:
            self._text(out, text)
        elif tool_use:
            delta = Delta(content=text) if text else Delta()
            if tool_use:
                self._tools_seen = True
                tool = dict(tool_use)
                tool.setdefault("index", item.get("index", 0) or 0)
                tool.setdefault("type", "function")
                delta.tool_calls = [tool]
            self._emit(out, delta)
        usage = item.get("usage")
        if usage:
            self.usage = usage
        if item.get("is_finished"):
            self._finish(out, item.get("finish_reason") or None)

    def _feed_stream_chunk(self, chunk: ModelResponseStream, out: list[Any]) -> None:
        if chunk.usage:
            self.usage = chunk.usage
        if not chunk.choices:
            return  # a usage-only chunk: usage is sent once, at the end
        chunk.id, chunk.created, chunk.model = self.id, self.created, self.model
        chunk.usage = None if self.include_usage else _UNSET
        finish = None
        for choice in chunk.choices:
            if choice.delta.tool_calls:
                self._tools_seen = True
            if choice.finish_reason is not None:
                finish = choice.finish_reason
        if not self._role_sent:
            self._role_sent = True
            first = chunk.choices[0].delta
            if first.role is None:
                first.role = "assistant"
        if finish is not None:
            if self._finished:
                return
            self._finished = True
        out.append(chunk)

    def _feed_openai_dict(self, item: dict[str, Any], out: list[Any]) -> None:
        if not self.raw_dicts:
            self._feed_stream_chunk(msgspec.convert(item, ModelResponseStream), out)
            return
        if item.get("usage"):
            self.usage = item["usage"]
        choices = item.get("choices")
        if not choices:
            return
        item["id"], item["created"], item["model"] = self.id, self.created, self.model
        if self.include_usage:
            item["usage"] = None
        else:
            item.pop("usage", None)
        finish = None
        for choice in choices:
            delta = choice.get("delta") or {}
            if delta.get("tool_calls"):
                self._tools_seen = True
            if choice.get("finish_reason") is not None:
                finish = choice["finish_reason"]
        if not self._role_sent:
            self._role_sent = True
            choices[0].setdefault("delta", {}).setdefault("role", "assistant")
        if finish is not None:
            if self._finished:
                return
            self._finished = True
        out.append(item)

    def _feed_response(self, resp: ModelResponse, out: list[Any]) -> None:
        """A whole answer as a stream: content, tool calls, then the finish chunk."""
        if resp.usage:
            self.usage = resp.usage
        choice = resp.choices[0] if resp.choices else Choices()
        message = choice.message
        if message.content:
            self._emit(out, Delta(content=message.content))
        if message.tool_calls:
            self._tools_seen = True
            calls = [{**plain(call), "index": i} for i, call in enumerate(message.tool_calls)]
            self._emit(out, Delta(tool_calls=calls))
        self._finish(out, choice.finish_reason)


def plain(value: Any) -> dict[str, Any]:
    """A chunk, tool call or usage as a dict (a Struct's, a pydantic model's or a
    mapping's fields)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return dict(value)


def stream_chunk_builder(chunks: Iterable[Any], model: str | None = None) -> ModelResponse:
    """Reassemble a whole ``ModelResponse`` from OpenAI stream chunks."""
    content: list[str] = []
    tools: dict[int, dict[str, Any]] = {}
    finish: str | None = None
    usage: Any = None
    chunk_id: str | None = None
    created: int | None = None
    for chunk in chunks:
        data = plain(chunk)
        chunk_id = chunk_id or data.get("id")
        created = created or data.get("created")
        model = model or data.get("model")
        if data.get("usage"):
            usage = data["usage"]
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                slot = tools.setdefault(
                    call.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                function = call.get("function") or {}
                if function.get("name"):
                    slot["function"]["name"] += function["name"]
                if function.get("arguments"):
                    slot["function"]["arguments"] += function["arguments"]
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    message = Message(
        content="".join(content) if content else None,
        tool_calls=[_as_tool_call(tools[i]) for i in sorted(tools)] or None,
    )
    response = ModelResponse(
        choices=[Choices(finish_reason=finish or "stop", message=message)],
        model=model,
        usage=msgspec.convert(usage, Usage) if isinstance(usage, dict) else (usage or Usage()),
    )
    if chunk_id:
        response.id = chunk_id
    if created:
        response.created = created
    return response


def _as_tool_call(value: dict[str, Any]) -> ChatCompletionMessageToolCall:
    return msgspec.convert(value, ChatCompletionMessageToolCall)
