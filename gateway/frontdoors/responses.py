"""OpenAI's Responses API (``POST /v1/responses``) onto a chat completion.

``to_chat`` turns a request (plus the stored conversation of ``previous_response_id``)
into a chat call; ``to_response`` turns a chat answer into a response object;
``ResponseEvents`` turns chat stream chunks into the Responses event stream.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec

from ..errors import BadRequestError, GatewayError
from ._chat import (
    ChatIn,
    answer_parts,
    chunk_parts,
    new_id,
    sse,
    text_of,
    text_of_raw,
    usage_counts,
)

__all__ = ["ResponseEvents", "ResponsesRequest", "conversation", "to_chat", "to_response"]

_encode = msgspec.json.Encoder().encode

_Seconds = Annotated[float, msgspec.Meta(gt=0, le=1e7)]


class ResponsesRequest(msgspec.Struct):
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    background: bool | None = None
    timeout: _Seconds | None = None


# Request fields the translation consumes; every other field set passes to the handler.
_CONSUMED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "stream",
        "previous_response_id",
        "store",
        "metadata",
        "text",
        "reasoning",
        "background",
        "timeout",
        "include",
        "truncation",
        "stream_options",
    }
)


# -- request -> chat ------------------------------------------------------------------------


def _content(content: Any, where: str) -> Any:
    """Responses content parts as chat content: a plain string when it is one text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequestError(f"{where} must be a string or a list of parts", param=where)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file" and (part.get("file_data") or part.get("file_id")):
            file = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k)}
            parts.append({"type": "file", "file": file})
        else:
            raise BadRequestError(
                f"{where}[{i}] has an unsupported content part type {kind!r}",
                param=f"{where}[{i}].type",
            )
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def input_messages(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``input`` of a request as chat messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise BadRequestError(
                    f"{where}.role must be user, assistant, system or developer",
                    param=f"{where}.role",
                )
            # "developer" is the Responses name of "system", which every handler knows.
            role = "system" if role == "developer" else role
            messages.append({"role": role, "content": _content(item.get("content"), where)})
        elif kind == "function_call":
            name, arguments = item.get("name"), item.get("arguments")
            if not isinstance(name, str) or not isinstance(arguments, str):
                raise BadRequestError(
                    f"{where} needs a `name` and `arguments` (a JSON string)", param=where
                )
            call = {
                "id": item.get("call_id") or item.get("id") or new_id("call_"),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            last = messages[-1] if messages else None
            # Parallel calls are one assistant message in chat, several items here.
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise BadRequestError(f"{where}.call_id is required", param=f"{where}.call_id")
            output = item.get("output")
            if not isinstance(output, str):
                output = text_of(output, f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue  # a model's own reasoning summary: nothing a chat call takes
        else:
            raise BadRequestError(
                f"{where} has an unsupported item type {kind!r}", param=f"{where}.type"
            )
    return messages


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise BadRequestError(
                f"tools[{i}]: only function tools (type 'function' with a name) are supported",
                param=f"tools[{i}].type",
            )
        function = {"name": tool["name"]}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice in ("auto", "none", "required"):
            return choice
    elif choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequestError(
        "tool_choice must be 'auto', 'none', 'required' or a function", param="tool_choice"
    )


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    fmt = text.get("format")
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise BadRequestError("text.format.type must be text, json_object or json_schema", param="text")


def to_chat(
    request: ResponsesRequest, data: dict[str, Any], history: list[dict[str, Any]] | None = None
) -> ChatIn:
    """The chat call for a request; ``history`` is the stored conversation it continues."""
    if request.background:
        raise BadRequestError("background responses are not supported", param="background")
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    messages.extend(history or ())
    messages.extend(input_messages(request.input))
    optional = {k: v for k, v in data.items() if k not in _CONSUMED and v is not None}
    if request.max_output_tokens is not None:
        optional["max_tokens"] = request.max_output_tokens
    if request.tools:
        optional["tools"] = _tools(request.tools)
    if request.tool_choice is not None:
        optional["tool_choice"] = _tool_choice(request.tool_choice)
    if request.text:
        response_format = _response_format(request.text)
        if response_format is not None:
            optional["response_format"] = response_format
    if request.reasoning and request.reasoning.get("effort"):
        optional["reasoning_effort"] = request.reasoning["effort"]
    stream = bool(request.stream)
    if stream:
        optional["stream"] = True
        optional["stream_options"] = {"include_usage": True}  # usage ends the event stream
    return ChatIn(request.model, messages, optional, stream)


# -- chat -> response -----------------------------------------------------------------------


def skeleton(request: ResponsesRequest, response_id: str | None = None) -> dict[str, Any]:
    """A response object before its output: what the request asked for, echoed."""
    return {
        "id": response_id or new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": request.model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": request.store is not False,
        "temperature": request.temperature,
        "text": request.text or {"format": {"type": "text"}},
        "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
        "tools": request.tools or [],
        "top_p": request.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call["id"],
        "name": call["name"],
        "arguments": call["arguments"],
    }


def _finish(response: dict[str, Any], finish_reason: str | None) -> None:
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "content_filter"}
    else:
        response["status"] = "completed"


def to_response(answer: Any, request: ResponsesRequest) -> dict[str, Any]:
    """A chat answer (``ModelResponse``) as a response object."""
    text, calls, finish, (prompt, completion) = answer_parts(answer)
    response = skeleton(request)
    output = response["output"]
    if text or not calls:
        output.append(_message_item(new_id("msg_"), text or ""))
    for call in calls:
        output.append(_call_item(new_id("fc_"), call))
    response["usage"] = _usage(prompt, completion)
    _finish(response, finish)
    return response


def conversation(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A response's output as the chat message it adds to a conversation."""
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response["output"]:
        if item["type"] == "message":
            text.extend(part.get("text", "") for part in item["content"])
        elif item["type"] == "function_call":
            calls.append(
                {
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


# -- chat chunks -> events ------------------------------------------------------------------


class _Call:
    __slots__ = ("call_id", "item_id", "name", "output_index", "parts")

    def __init__(self, output_index: int, call_id: str, name: str) -> None:
        self.output_index = output_index
        self.item_id = new_id("fc_")
        self.call_id = call_id
        self.name = name
        self.parts: list[str] = []


class ResponseEvents:
    """The Responses event stream for one chat stream: ``start``, ``feed`` per chunk,
    then ``close`` (or ``fail``). Each returns the encoded events to send.

    Every text delta is one bytes template filled in (no dict, no encoder walk),
    as the chat stream does for its own text chunks.
    """

    __slots__ = (
        "_calls",
        "_finish_reason",
        "_msg_id",
        "_msg_index",
        "_next_index",
        "_seq",
        "_text",
        "_text_prefix",
        "_usage",
        "response",
    )

    def __init__(self, request: ResponsesRequest) -> None:
        self.response = skeleton(request)
        self._seq = 0
        self._next_index = 0
        self._msg_index = -1
        self._msg_id = ""
        self._text: list[str] = []
        self._text_prefix = b""
        self._calls: dict[int, _Call] = {}
        self._finish_reason: str | None = None
        self._usage: Any = None

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data["sequence_number"] = self._seq
        self._seq += 1
        return sse(kind, {"type": kind, **data})

    def start(self) -> list[bytes]:
        return [
            self._event("response.created", {"response": self.response}),
            self._event("response.in_progress", {"response": self.response}),
        ]

    def _open_message(self, out: list[bytes]) -> None:
        self._msg_index = index = self._next_index
        self._next_index += 1
        self._msg_id = item_id = new_id("msg_")
        item = _message_item(item_id, "", "in_progress")
        item["content"] = []
        out.append(self._event("response.output_item.added", {"output_index": index, "item": item}))
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        added = {"item_id": item_id, "output_index": index, "content_index": 0, "part": part}
        out.append(self._event("response.content_part.added", added))
        self._text_prefix = (
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"item_id":"%s","output_index":%d,"content_index":0,"delta":'
            % (item_id.encode(), index)
        )

    def feed(self, chunk: Any) -> list[bytes]:
        if type(chunk) is msgspec.Raw and self._msg_index >= 0:
            # Most chunks: more text for the open message.
            text = text_of_raw(chunk)
            if not text:
                return []
            self._text.append(text)
            seq = self._seq
            self._seq = seq + 1
            return [
                self._text_prefix
                + _encode(text)
                + b',"logprobs":[],"sequence_number":%d}\n\n' % seq
            ]
        text, tools, finish, usage = chunk_parts(chunk)
        out: list[bytes] = []
        if text:
            if self._msg_index < 0:
                self._open_message(out)
            self._text.append(text)
            out.append(
                self._text_prefix
                + _encode(text)
                + b',"logprobs":[],"sequence_number":%d}\n\n' % self._seq
            )
            self._seq += 1
        if tools:
            for piece in tools:
                self._tool(piece, out)
        if finish is not None:
            self._finish_reason = finish
        if usage:
            self._usage = usage
        return out

    def _tool(self, piece: Any, out: list[bytes]) -> None:
        call = self._calls.get(piece.index)
        if call is None:
            call = _Call(self._next_index, piece.id or new_id("call_"), piece.name or "")
            self._next_index += 1
            self._calls[piece.index] = call
            item = _call_item(
                call.item_id,
                {"id": call.call_id, "name": call.name, "arguments": ""},
                "in_progress",
            )
            out.append(
                self._event(
                    "response.output_item.added", {"output_index": call.output_index, "item": item}
                )
            )
        elif piece.name and not call.name:
            call.name = piece.name
        if piece.arguments:
            call.parts.append(piece.arguments)
            delta = {
                "item_id": call.item_id,
                "output_index": call.output_index,
                "delta": piece.arguments,
            }
            out.append(self._event("response.function_call_arguments.delta", delta))

    def _output(self) -> list[tuple[int, dict[str, Any]]]:
        items: list[tuple[int, dict[str, Any]]] = []
        if self._msg_index >= 0:
            items.append((self._msg_index, _message_item(self._msg_id, "".join(self._text))))
        for call in self._calls.values():
            done = {"id": call.call_id, "name": call.name, "arguments": "".join(call.parts)}
            items.append((call.output_index, _call_item(call.item_id, done)))
        items.sort(key=lambda pair: pair[0])
        return items

    def close(self) -> list[bytes]:
        """The events that end a stream: each item done, then the whole response."""
        out: list[bytes] = []
        if self._msg_index < 0 and not self._calls:
            self._open_message(out)  # an empty answer is still one (empty) message
        items = self._output()
        for index, item in items:
            if item["type"] == "message":
                text = item["content"][0]["text"]
                ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
                out.append(
                    self._event("response.output_text.done", {**ids, "text": text, "logprobs": []})
                )
                out.append(
                    self._event("response.content_part.done", {**ids, "part": item["content"][0]})
                )
            else:
                done = {
                    "item_id": item["id"],
                    "output_index": index,
                    "name": item["name"],
                    "arguments": item["arguments"],
                }
                out.append(self._event("response.function_call_arguments.done", done))
            out.append(
                self._event("response.output_item.done", {"output_index": index, "item": item})
            )
        response = self.response
        response["output"] = [item for _, item in items]
        response["usage"] = _usage(*usage_counts(self._usage))
        _finish(response, self._finish_reason)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, {"response": response}))
        return out

    def fail(self, exc: GatewayError) -> bytes:
        """The event for a failure after the stream started: ``response.failed``."""
        response = self.response
        response["status"] = "failed"
        response["output"] = [item for _, item in self._output()]
        code = "rate_limit_exceeded" if exc.status_code == 429 else "server_error"
        response["error"] = {"code": code, "message": exc.message}
        return self._event("response.failed", {"response": response})
