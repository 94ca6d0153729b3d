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
from ._chat import ChatIn, answer_parts, chunk_parts, new_id, text_of, usage_counts

__all__ = ["ResponseEvents", "ResponsesRequest", "conversation", "to_chat", "to_response"]

_encode = msgspec.json.Encoder().encode

_Seconds = Annotated[float, msgspec.Meta(gt=0, le=1e7)]

# A text delta's end, after its JSON string; made once for the first 1024 (0.3 us a delta).
_DELTA_END = b',"logprobs":[],"sequence_number":%d}\n\n'
_DELTA_ENDS = tuple(_DELTA_END % seq for seq in range(1024))
# A message item and its text part, as ``_message_item`` makes them (a test compares).
_MESSAGE = b'{"id":"%s","type":"message","status":"%s","role":"assistant","content":[%s]}'
_PART = b'{"type":"output_text","text":%s,"annotations":[],"logprobs":[]}'
_EVENT = b'event: %s\ndata: {"type":"%s",%s,"sequence_number":%d}\n\n'


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
    (
        "model input instructions tools tool_choice max_output_tokens stream "
        "previous_response_id store metadata text reasoning background timeout include "
        "truncation stream_options"
    ).split()
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
            call_id = item.get("call_id") or item.get("id") or new_id("call_")
            function = {"name": name, "arguments": arguments}
            call = {"id": call_id, "type": "function", "function": function}
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
    fmt = text.get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
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
    response_format = _response_format(request.text) if request.text else None
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


def skeleton(request: ResponsesRequest) -> dict[str, Any]:
    """A response object before its output: what the request asked for, echoed."""
    return {
        "id": new_id("resp_"),
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


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _finish(response: dict[str, Any], finish_reason: str | None) -> None:
    reason = _INCOMPLETE.get(finish_reason or "")
    response["status"] = "incomplete" if reason else "completed"
    if reason:
        response["incomplete_details"] = {"reason": reason}


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
            function = {"name": item["name"], "arguments": item["arguments"]}
            calls.append({"id": item["call_id"], "type": "function", "function": function})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


# -- chat chunks -> events ------------------------------------------------------------------


class _Call(msgspec.Struct):
    """A function call being streamed: its output item and its arguments so far."""

    output_index: int
    item_id: str
    call_id: str
    name: str
    parts: list[str]


class ResponseEvents:
    """The Responses event stream for one chat stream: ``start``, ``feed`` per chunk,
    then ``close`` (or ``fail``). Each returns the encoded events to send.

    Every text delta is one bytes template filled in (no dict, no encoder walk), and
    the response object is encoded once for the events that carry it whole.
    """

    __slots__ = (
        "_calls",
        "_finish_reason",
        "_msg_id",
        "_msg_ids",
        "_msg_index",
        "_next_index",
        "_seq",
        "_text",
        "_text_prefix",
        "_usage",
        "body",
        "response",
    )

    def __init__(self, request: ResponsesRequest) -> None:
        self.response = skeleton(request)
        self.body = b""  # the final response as sent in the last event (for the store)
        self._seq = 0
        self._next_index = 0
        self._msg_index = -1
        self._msg_id = ""
        self._msg_ids = b""  # the open message's "item_id", "output_index", "content_index"
        self._text: list[str] = []
        self._text_prefix = b""
        self._calls: dict[int, _Call] = {}
        self._finish_reason: str | None = None
        self._usage: Any = None

    def _raw(self, kind: bytes, fields: bytes) -> bytes:
        """An event from its fields, encoded (``"name":value,...``: a dict's JSON unbraced)."""
        seq = self._seq
        self._seq = seq + 1
        return _EVENT % (kind, kind, fields, seq)

    def start(self) -> bytes:
        fields = b'"response":' + _encode(self.response)
        return self._raw(b"response.created", fields) + self._raw(b"response.in_progress", fields)

    def feed(self, chunk: Any) -> bytes:
        if chunk.__class__ is str and self._msg_index >= 0:
            # Most chunks: more text for the open message.
            self._text.append(chunk)
            seq = self._seq
            self._seq = seq + 1
            end = _DELTA_ENDS[seq] if seq < 1024 else _DELTA_END % seq
            return self._text_prefix + _encode(chunk) + end
        text, tools, finish, usage = chunk_parts(chunk)
        out: list[bytes] = []
        if text:
            if self._msg_index < 0:
                self._open_message(out)
            out.append(self.feed(text))
        if tools:
            for piece in tools:
                self._tool(piece, out)
        if finish is not None:
            self._finish_reason = finish
        if usage:
            self._usage = usage
        return b"".join(out)

    def _open_message(self, out: list[bytes]) -> None:
        self._msg_index = index = self._next_index
        self._next_index += 1
        self._msg_id = item_id = new_id("msg_")
        item = _MESSAGE % (item_id.encode(), b"in_progress", b"")
        out.append(
            self._raw(b"response.output_item.added", b'"output_index":%d,"item":%s' % (index, item))
        )
        ids = self._msg_ids = b'"item_id":"%s","output_index":%d,"content_index":0' % (
            item_id.encode(),
            index,
        )
        out.append(self._raw(b"response.content_part.added", ids + b',"part":' + _PART % b'""'))
        self._text_prefix = (
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            + ids
            + b',"delta":'
        )

    def _tool(self, piece: Any, out: list[bytes]) -> None:
        call = self._calls.get(piece.index)
        if call is None:
            call_id = piece.id or new_id("call_")
            call = _Call(self._next_index, new_id("fc_"), call_id, piece.name or "", [])
            self._next_index += 1
            self._calls[piece.index] = call
            opened = {"id": call.call_id, "name": call.name, "arguments": ""}
            item = _call_item(call.item_id, opened, "in_progress")
            added = {"output_index": call.output_index, "item": item}
            out.append(self._raw(b"response.output_item.added", _encode(added)[1:-1]))
        elif piece.name and not call.name:
            call.name = piece.name
        arguments = piece.arguments
        if arguments:
            call.parts.append(arguments)
            delta = {"item_id": call.item_id, "output_index": call.output_index, "delta": arguments}
            out.append(self._raw(b"response.function_call_arguments.delta", _encode(delta)[1:-1]))

    def _output(self) -> list[tuple[int, dict[str, Any]]]:
        items: list[tuple[int, dict[str, Any]]] = []
        if self._msg_index >= 0:
            items.append((self._msg_index, _message_item(self._msg_id, "".join(self._text))))
        for call in self._calls.values():
            done = {"id": call.call_id, "name": call.name, "arguments": "".join(call.parts)}
            items.append((call.output_index, _call_item(call.item_id, done)))
        items.sort(key=lambda pair: pair[0])
        return items

    def _message_done(self, item: dict[str, Any], out: list[bytes]) -> msgspec.Raw:
        """The message's closing events, the answer's text encoded once for all of them
        (and for the whole response): the message item, encoded."""
        text = _encode(item["content"][0]["text"])
        ids = self._msg_ids
        part = _PART % text
        out.append(
            self._raw(b"response.output_text.done", b'%s,"text":%s,"logprobs":[]' % (ids, text))
        )
        out.append(self._raw(b"response.content_part.done", b'%s,"part":%s' % (ids, part)))
        return msgspec.Raw(_MESSAGE % (self._msg_id.encode(), b"completed", part))

    def close(self) -> bytes:
        """The events that end a stream: each item done, then the whole response."""
        out: list[bytes] = []
        if self._msg_index < 0 and not self._calls:
            self._open_message(out)  # an empty answer is still one (empty) message
        items = self._output()
        encoded: list[Any] = []
        for index, item in items:
            if item["type"] == "message":
                sent: Any = self._message_done(item, out)
            else:
                done = {"item_id": item["id"], "output_index": index, "name": item["name"]}
                done["arguments"] = item["arguments"]
                done_fields = _encode(done)[1:-1]
                out.append(self._raw(b"response.function_call_arguments.done", done_fields))
                sent = item
            encoded.append(sent)
            fields = b'"output_index":%d,"item":%s' % (index, _encode(sent))
            out.append(self._raw(b"response.output_item.done", fields))
        response = self.response
        response["output"] = [item for _, item in items]
        response["usage"] = _usage(*usage_counts(self._usage))
        _finish(response, self._finish_reason)
        self.body = _encode({**response, "output": encoded})
        kind = b"response." + response["status"].encode()  # completed or incomplete
        out.append(self._raw(kind, b'"response":' + self.body))
        return b"".join(out)

    def fail(self, exc: GatewayError) -> bytes:
        """The event for a failure after the stream started: ``response.failed``."""
        response = self.response
        response["status"] = "failed"
        response["output"] = [item for _, item in self._output()]
        code = "rate_limit_exceeded" if exc.status_code == 429 else "server_error"
        response["error"] = {"code": code, "message": exc.message}
        return self._raw(b"response.failed", b'"response":' + _encode(response))
