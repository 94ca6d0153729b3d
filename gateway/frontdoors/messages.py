"""Anthropic's Messages API (``POST /v1/messages``) onto a chat completion.

``to_chat`` turns a Messages request into a chat call; ``to_message`` turns a chat
answer into a message; ``MessageEvents`` turns chat stream chunks into Anthropic's
event stream; ``error_body`` renders a gateway error in Anthropic's error shape.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from ..errors import BadGatewayError, BadRequestError, GatewayError
from ._chat import ChatIn, answer_parts, chunk_parts, new_id, sse, usage_counts

__all__ = [
    "CountTokensRequest",
    "MessageEvents",
    "MessagesRequest",
    "count_tokens",
    "error_body",
    "to_chat",
    "to_message",
]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_Seconds = Annotated[float, msgspec.Meta(gt=0, le=1e7)]


class MessagesRequest(msgspec.Struct):
    model: str
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    stream: bool | None = None
    metadata: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    timeout: _Seconds | None = None


class CountTokensRequest(msgspec.Struct):
    model: str
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    timeout: _Seconds | None = None  # read by every endpoint; nothing to wait for here


# Fields the translation consumes, and Anthropic-only ones that mean nothing to a chat
# call (an OpenAI-compatible upstream would reject them); the rest pass through.
_CONSUMED = frozenset(
    (
        "model max_tokens messages system stop_sequences tools tool_choice stream metadata "
        "timeout output_config thinking service_tier container mcp_servers cache_control "
        "context_management diagnostics inference_geo speed user_profile_id workspace_id"
    ).split()
)


# -- request -> chat ------------------------------------------------------------------------


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    source = source if isinstance(source, dict) else {}
    if source.get("type") == "base64" and source.get("data"):
        url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    elif source.get("type") == "url" and source.get("url"):
        url = source["url"]
    else:
        raise BadRequestError(
            f"{where}.source must be a base64 or url image source", param=f"{where}.source"
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for i, block in enumerate(content if isinstance(content, list) else [content]):
        if isinstance(block, dict) and block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        else:
            raise BadRequestError(
                f"{where}.content[{i}]: only text tool results are supported",
                param=f"{where}.content",
            )
    return "".join(texts)


def _user(content: list[Any], where: str, out: list[dict[str, Any]]) -> None:
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise BadRequestError(f"{at}.tool_use_id is required", param=f"{at}.tool_use_id")
            text = _tool_result_text(block.get("content"), at)
            if block.get("is_error"):
                text = f"Error: {text}"
            # Chat wants tool results right after the assistant's calls, as their own
            # messages; the user's other blocks follow them.
            out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        else:
            raise BadRequestError(
                f"{at} has an unsupported block type {kind!r}", param=f"{at}.type"
            )
    if parts:
        out.append({"role": "user", "content": _one_text(parts)})


def _assistant(content: list[Any], where: str, out: list[dict[str, Any]]) -> None:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise BadRequestError(f"{at} needs an `id` and a `name`", param=at)
            arguments = _encode(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's own reasoning: nothing a chat call takes back
        else:
            raise BadRequestError(
                f"{at} has an unsupported block type {kind!r}", param=f"{at}.type"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    out.append(message)


def _one_text(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Content parts as chat content: a plain string when they are one text (what most
    handlers expect), else the parts as they are (several text blocks are not joined:
    no separator would be the sender's)."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _system(system: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if isinstance(system, str):
        return system
    parts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or not isinstance(block.get("text"), str):
            raise BadRequestError(f"system[{i}] must be a text block", param="system")
        parts.append({"type": "text", "text": block["text"]})
    return _one_text(parts)


def chat_messages(
    messages: list[dict[str, Any]], system: str | list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": _system(system)})
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role")
        content = message.get("content")
        if role not in ("user", "assistant"):
            raise BadRequestError(f"{where}.role must be user or assistant", param=f"{where}.role")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            (_user if role == "user" else _assistant)(content, where, out)
        else:
            raise BadRequestError(
                f"{where}.content must be a string or a list of blocks", param=f"{where}.content"
            )
    return out


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") not in (None, "custom") or not isinstance(tool.get("name"), str):
            raise BadRequestError(
                f"tools[{i}]: only custom tools (a name and an input_schema) are supported",
                param=f"tools[{i}]",
            )
        function: dict[str, Any] = {
            "name": tool["name"],
            "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
        }
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: dict[str, Any], optional: dict[str, Any]) -> None:
    kind = choice.get("type")
    if kind == "auto":
        optional["tool_choice"] = "auto"
    elif kind == "any":
        optional["tool_choice"] = "required"
    elif kind == "none":
        optional["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        optional["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise BadRequestError(
            "tool_choice.type must be auto, any, none or tool (with a name)", param="tool_choice"
        )
    if choice.get("disable_parallel_tool_use"):
        optional["parallel_tool_calls"] = False


def _output_config(config: dict[str, Any], optional: dict[str, Any]) -> None:
    fmt = config.get("format")
    if fmt:
        schema = fmt.get("schema") if isinstance(fmt, dict) else None
        if not isinstance(schema, dict) or fmt.get("type") != "json_schema":
            raise BadRequestError(
                "output_config.format must be a json_schema with a schema",
                param="output_config.format",
            )
        spec = {"name": "output", "schema": schema, "strict": True}
        optional["response_format"] = {"type": "json_schema", "json_schema": spec}
    if config.get("effort"):
        optional["reasoning_effort"] = config["effort"]


def to_chat(request: MessagesRequest, data: dict[str, Any]) -> ChatIn:
    messages = chat_messages(request.messages, request.system)
    optional = {k: v for k, v in data.items() if k not in _CONSUMED and v is not None}
    optional["max_tokens"] = request.max_tokens
    if request.stop_sequences:
        optional["stop"] = request.stop_sequences
    if request.tools:
        optional["tools"] = _tools(request.tools)
    if request.tool_choice:
        _tool_choice(request.tool_choice, optional)
    if request.metadata and isinstance(request.metadata.get("user_id"), str):
        optional["user"] = request.metadata["user_id"]
    if request.output_config:
        _output_config(request.output_config, optional)
    stream = bool(request.stream)
    if stream:
        optional["stream"] = True
        optional["stream_options"] = {"include_usage": True}  # usage ends the event stream
    return ChatIn(request.model, messages, optional, stream)


def count_tokens(request: CountTokensRequest) -> int:
    """An estimate of the prompt's tokens: about four characters a token, as OpenAI's
    rule of thumb; the request is translated first, so a bad one is a 400."""
    messages = chat_messages(request.messages, request.system)
    chars = len(_encode(messages)) // 2  # JSON framing counts about half
    if request.tools:
        chars += len(_encode(_tools(request.tools)))
    return max(1, -(-chars // 4))


# -- chat -> message ------------------------------------------------------------------------


_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: str | None) -> str:
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _input(arguments: str, name: str) -> Any:
    if not arguments.strip():
        return {}
    try:
        return _decode(arguments)
    except msgspec.DecodeError:
        raise BadGatewayError(
            f"the model called tool {name!r} with arguments that are not JSON: {arguments[:200]!r}"
        ) from None


def to_message(answer: Any, model: str) -> dict[str, Any]:
    """A chat answer (``ModelResponse``) as an Anthropic message."""
    text, calls, finish, (prompt, completion) = answer_parts(answer)
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    for call in calls:
        content.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": call["name"],
                "input": _input(call["arguments"], call["name"]),
            }
        )
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": None,
        "usage": _usage(prompt, completion),
    }


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_object(exc: GatewayError) -> dict[str, Any]:
    status = exc.status_code
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def error_body(exc: GatewayError) -> bytes:
    return _encode(error_object(exc))


# -- chat chunks -> events ------------------------------------------------------------------


_PING = sse("ping", {"type": "ping"})
_STOP = sse("message_stop", {"type": "message_stop"})


class MessageEvents:
    """Anthropic's event stream for one chat stream: ``start``, ``feed`` per chunk, then
    ``close`` (or ``fail``); each returns the encoded events to send.

    Blocks are sent one after another, as Anthropic does: text, then each tool call.
    Every text delta is one bytes template filled in (no dict, no encoder walk).
    """

    __slots__ = (
        "_block",
        "_finish_reason",
        "_kind",
        "_model",
        "_next",
        "_text_prefix",
        "_tools",
        "_usage",
        "id",
    )

    def __init__(self, model: str) -> None:
        self.id = new_id("msg_")
        self._model = model
        self._block = -1  # the open block's index
        self._kind: Any = None  # "text" or the chat tool-call index of the open block
        self._next = 0
        self._tools: dict[int, int] = {}  # chat tool-call index -> block index
        self._text_prefix = b""
        self._finish_reason: str | None = None
        self._usage: Any = None

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(0, 0),
        }
        return sse("message_start", {"type": "message_start", "message": message}) + _PING

    def _open(self, kind: Any, block: dict[str, Any], out: list[bytes]) -> int:
        self._stop(out)
        self._block = index = self._next
        self._next += 1
        self._kind = kind
        start = {"type": "content_block_start", "index": index, "content_block": block}
        out.append(sse("content_block_start", start))
        return index

    def _stop(self, out: list[bytes]) -> None:
        if self._block >= 0:
            stop = {"type": "content_block_stop", "index": self._block}
            out.append(sse("content_block_stop", stop))
            self._block = -1
            self._kind = None

    def feed(self, chunk: Any) -> bytes:
        if chunk.__class__ is str and self._kind == "text":
            return self._text_prefix + _encode(chunk) + b"}}\n\n"  # most chunks: more text
        text, tools, finish, usage = chunk_parts(chunk)
        out: list[bytes] = []
        if text:
            if self._kind != "text":
                opened = self._open("text", {"type": "text", "text": ""}, out)
                self._text_prefix = (
                    b'event: content_block_delta\ndata: {"type":"content_block_delta",'
                    b'"index":%d,"delta":{"type":"text_delta","text":' % opened
                )
            out.append(self._text_prefix + _encode(text) + b"}}\n\n")
        if tools:
            for piece in tools:
                self._tool(piece, out)
        if finish is not None:
            self._finish_reason = finish
        if usage:
            self._usage = usage
        return b"".join(out)

    def _tool(self, piece: Any, out: list[bytes]) -> None:
        index = self._tools.get(piece.index)
        if index is None:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": piece.id or new_id("toolu_"),
                "name": piece.name or "",
                "input": {},
            }
            index = self._tools[piece.index] = self._open(piece.index, block, out)
        if piece.arguments:
            delta = {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": piece.arguments},
            }
            out.append(sse("content_block_delta", delta))

    def close(self) -> bytes:
        out: list[bytes] = []
        self._stop(out)
        prompt, completion = usage_counts(self._usage)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self._finish_reason), "stop_sequence": None},
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }
        out.append(sse("message_delta", delta))
        out.append(_STOP)
        return b"".join(out)

    def fail(self, exc: GatewayError) -> bytes:
        return sse("error", error_object(exc))
