"""The request bodies of the OpenAI routes (msgspec Structs) and their decoding.

Only what the gateway itself needs is typed; every other field is passed to the handler
as-is in ``optional_params``. Decoding errors become 400s naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .errors import (
    BadRequestError,
)

_decode = msgspec.json.Decoder().decode


# Request bodies. Only what the gateway itself needs is typed; every other field is
# passed to the handler as-is in ``optional_params``.


# A request's own timeout in seconds: positive and finite (else a 400 naming it).
_Seconds = Annotated[float, msgspec.Meta(gt=0, le=1e7)]


# Counts a client chooses, bounded where OpenAI bounds them: each multiplies what one call
# costs the operator or builds in memory (a 400 naming the field beyond).
_ChatChoices = Annotated[int, msgspec.Meta(ge=1, le=128)]
_TopLogprobs = Annotated[int, msgspec.Meta(ge=0, le=20)]
_Images = Annotated[int, msgspec.Meta(ge=1, le=10)]
_Dimensions = Annotated[int, msgspec.Meta(ge=1, le=65536)]


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


# What the endpoints check beyond the Structs, said in the OpenAPI document too
# (``extra_json_schema`` is schema only: no cost when decoding).
_Message = Annotated[
    dict[str, Any],
    msgspec.Meta(
        extra_json_schema={"required": ["role"], "properties": {"role": {"type": "string"}}}
    ),
]
# A non-empty list of strings, of token ids, or of token-id lists (checked below).
_EmbeddingList = Annotated[
    list[Any],
    msgspec.Meta(
        extra_json_schema={
            "minItems": 1,
            "anyOf": [
                {"items": {"type": "string"}},
                {"items": {"type": "integer"}},
                {"items": {"type": "array", "items": {"type": "integer"}}},
            ],
        }
    ),
]


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[_Message]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    timeout: _Seconds | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: _ChatChoices | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: _TopLogprobs | None = None
    logit_bias: dict[str, float] | None = None
    parallel_tool_calls: bool | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: str | _EmbeddingList
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: _Dimensions | None = None
    user: str | None = None
    timeout: _Seconds | None = None


class ImageRequest(msgspec.Struct):
    model: str
    prompt: str
    n: _Images | None = None
    size: str | None = None
    quality: str | None = None
    style: str | None = None
    response_format: str | None = None
    user: str | None = None
    timeout: _Seconds | None = None


_NOT_OPTIONAL = frozenset({"model", "messages", "stream", "stream_options", "timeout"})
_NOT_OPTIONAL_OTHER = frozenset({"model", "input", "prompt", "timeout"})


def _validation_error(exc: msgspec.ValidationError) -> BadRequestError:
    message = str(exc)
    param = None
    if "missing required field `" in message:
        param = message.split("`")[1]
    elif "- at `$." in message:
        param = message.rsplit("- at `$.", 1)[1].rstrip("`").split("[")[0].split(".")[0]
    return BadRequestError(f"Invalid request: {message}", param=param)


def _decode_body(body: bytes, kind: type[Any]) -> tuple[Any, dict[str, Any]]:
    try:
        data = _decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"Request body is not valid JSON: {exc}") from None
    except RecursionError:
        # msgspec recurses per nesting level; deeper than Python's limit is never a real
        # request (100,000 levels of [ fit in 200 KB).
        raise BadRequestError("Request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequestError("Request body must be a JSON object")
    try:  # _convert_body's first try, inline: a call less on every request
        return msgspec.convert(data, kind), data
    except msgspec.ValidationError:
        return _convert_body(data, kind)


def _convert_body(data: dict[str, Any], kind: type[Any]) -> tuple[Any, dict[str, Any]]:
    try:
        return msgspec.convert(data, kind), data
    except msgspec.ValidationError as exc:
        error = exc
    # JSON does not tell 8.0 from 8 (JSON Schema's "integer" takes both, and some
    # clients write every number as a float): integral floats in integer fields are
    # read as ints. Only on this error path, so a normal request pays nothing.
    if _integral_floats_to_ints(data, kind):
        try:
            return msgspec.convert(data, kind), data
        except msgspec.ValidationError as exc:
            error = exc
    raise _validation_error(error) from None


_INT_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _integral_floats_to_ints(data: dict[str, Any], kind: type[Any]) -> bool:
    names = _INT_FIELDS.get(kind)
    if names is None:
        import msgspec.inspect  # first bad request only: not at start-up

        names = _INT_FIELDS[kind] = tuple(
            f.encode_name
            for f in msgspec.inspect.type_info(kind).fields  # type: ignore[attr-defined]
            if _takes_int(f.type)
        )
    changed = False
    for name in names:
        value = data.get(name)
        if isinstance(value, float) and value.is_integer():
            data[name] = int(value)
            changed = True
    return changed


def _takes_int(info: Any) -> bool:
    if isinstance(info, msgspec.inspect.UnionType):
        return any(isinstance(t, msgspec.inspect.IntType) for t in info.types)
    return isinstance(info, msgspec.inspect.IntType)
