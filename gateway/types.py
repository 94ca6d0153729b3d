"""OpenAI-shaped response types.

msgspec Structs: one encoder call turns any of them into the exact JSON OpenAI sends.
They also keep the habits of code written against LiteLLM's pydantic objects:
attribute access, ``model_dump()``, ``resp["choices"]`` and dicts for nested fields.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping, Sequence
from random import getrandbits
from typing import TYPE_CHECKING, Any, TypedDict

import msgspec
from msgspec import UNSET, UnsetType, field

__all__ = [
    "ChatCompletionDelta",
    "ChatCompletionMessageToolCall",
    "Choices",
    "Delta",
    "Embedding",
    "EmbeddingResponse",
    "Function",
    "GenericStreamingChunk",
    "ImageObject",
    "ImageResponse",
    "Message",
    "ModelResponse",
    "ModelResponseStream",
    "StreamingChoices",
    "Usage",
]


class _Compat(msgspec.Struct):
    """Pydantic-style conveniences for code written against LiteLLM's types."""

    def model_dump(self, **_: Any) -> dict[str, Any]:
        return msgspec.to_builtins(self)

    def model_dump_json(self, **_: Any) -> str:
        return msgspec.json.encode(self).decode()

    dict = model_dump  # pydantic v1 spelling
    json = model_dump_json

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.__struct_fields__ and getattr(self, key) is not UNSET


def _convert(value: Any, cls: type[Any]) -> Any:
    if isinstance(value, cls) or value is None or value is UNSET:
        return value
    if not isinstance(value, dict) and hasattr(value, "model_dump"):
        value = value.model_dump()
    return msgspec.convert(value, cls, from_attributes=not isinstance(value, dict))


def _convert_list(values: list[Any], cls: type[Any]) -> list[Any]:
    for i, value in enumerate(values):
        if not isinstance(value, cls):
            values[i] = _convert(value, cls)
    return values


class _RequiredChunkKeys(TypedDict):
    text: str
    tool_use: dict[str, Any] | None
    is_finished: bool
    finish_reason: str
    usage: dict[str, int] | None
    index: int


# total=False, not NotRequired[...]: under `from __future__ import annotations`
# Python 3.11 cannot see NotRequired and would make the key required.
class GenericStreamingChunk(_RequiredChunkKeys, total=False):
    """One chunk yielded by a handler's ``streaming``/``astreaming``."""

    provider_specific_fields: dict[str, Any] | None


class Usage(_Compat, omit_defaults=True):
    """Token counts, as in OpenAI's ``usage``.

    Details the answer did not give read as None and are left out of the JSON; the
    counts are always sent (a ``default_factory`` value is never omitted).
    """

    prompt_tokens: int = field(default_factory=int)
    completion_tokens: int = field(default_factory=int)
    total_tokens: int = field(default_factory=int)
    prompt_tokens_details: Any = None
    completion_tokens_details: Any = None


class Function(_Compat):
    name: str | None = None
    arguments: str = ""


class ChatCompletionMessageToolCall(_Compat):
    """A tool call in a message: ``message.tool_calls[0].function.name`` works, as in
    LiteLLM, and so does ``message.tool_calls[0]["function"]["name"]``."""

    id: str | None = None
    type: str = "function"
    function: Function = field(default_factory=Function)

    if TYPE_CHECKING:  # nested fields may be given as dicts, as with LiteLLM's types

        def __init__(
            self,
            id: str | None = ...,
            type: str = ...,
            function: Function | Mapping[str, Any] = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        if not isinstance(self.function, Function):
            self.function = _convert(self.function, Function)


class Message(_Compat):
    content: str | None = None
    role: str = "assistant"
    tool_calls: list[ChatCompletionMessageToolCall] | None = None
    function_call: Any = None
    reasoning_content: Any = UNSET
    refusal: Any = UNSET

    if TYPE_CHECKING:

        def __init__(
            self,
            content: str | None = ...,
            role: str = ...,
            tool_calls: Sequence[ChatCompletionMessageToolCall | Mapping[str, Any]] | None = ...,
            function_call: Any = ...,
            reasoning_content: Any = ...,
            refusal: Any = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        if self.tool_calls:
            _convert_list(self.tool_calls, ChatCompletionMessageToolCall)


class Choices(_Compat):
    finish_reason: str | None = "stop"
    index: int = 0
    message: Message = field(default_factory=Message)
    logprobs: Any = UNSET

    if TYPE_CHECKING:

        def __init__(
            self,
            finish_reason: str | None = ...,
            index: int = ...,
            message: Message | Mapping[str, Any] = ...,
            logprobs: Any = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        if not isinstance(self.message, Message):
            self.message = _convert(self.message, Message)


def _new_id_prefix() -> None:
    # ``chatcmpl-`` and the first 20 hex digits of a uuid4 (version and variant bits
    # set), random per process; a forked worker draws its own.
    global _id_prefix, _id_next
    h = f"{getrandbits(80) & ~(0xF << 28) & ~(0xC << 12) | (0x4 << 28) | (0x8 << 12):020x}"
    _id_prefix = f"chatcmpl-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:]}-"
    # The last 12 digits count up from a random start; the top bit keeps hex() at 13
    # digits, so the id is always uuid4-shaped.
    _id_next = itertools.count((1 << 48) | getrandbits(47)).__next__


_id_prefix = ""
_id_next = itertools.count().__next__
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def _chat_id() -> str:
    """``chatcmpl-<uuid4>``: an id, unique in the process and across processes (a
    random prefix each), not a secret. A count and ``hex()`` rather than 122 random
    bits formatted per id: 2.7k instructions against 9.5k, and two ids are made per
    chat request (the handler's ``model_response`` and its answer)."""
    return _id_prefix + hex(_id_next())[3:]


def _now() -> int:
    return int(time.time())


class ModelResponse(_Compat):
    """A chat completion (``object: chat.completion``)."""

    id: str = field(default_factory=_chat_id)
    choices: list[Choices] = field(default_factory=lambda: [Choices()])
    created: int = field(default_factory=_now)
    model: str | None = None
    object: str = "chat.completion"
    system_fingerprint: str | None = None
    usage: Usage = field(default_factory=Usage)

    if TYPE_CHECKING:

        def __init__(
            self,
            id: str = ...,
            choices: Sequence[Choices | Mapping[str, Any]] = ...,
            created: int = ...,
            model: str | None = ...,
            object: str = ...,
            system_fingerprint: str | None = ...,
            usage: Usage | Mapping[str, Any] = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        # Made twice a chat request (the handler's answer, its blank ``model_response``):
        # the usual Choices checked here, not in a call of _convert_list (~1k
        # instructions each).
        for choice in self.choices:
            if choice.__class__ is not Choices:
                _convert_list(self.choices, Choices)
                break
        if self.usage.__class__ is not Usage:
            self.usage = _convert(self.usage, Usage) or Usage()


class Delta(_Compat, omit_defaults=True):
    """A stream delta: fields it does not carry read as None (``delta.content`` of the
    finish chunk is None, as in LiteLLM) and are left out of the JSON, as OpenAI does."""

    role: str | None = None
    content: str | None = None
    tool_calls: list[Any] | None = None
    function_call: Any = None
    reasoning_content: Any = None
    refusal: Any = None


ChatCompletionDelta = Delta


class StreamingChoices(_Compat):
    index: int = 0
    delta: Delta = field(default_factory=Delta)
    finish_reason: str | None = None
    logprobs: Any = UNSET

    if TYPE_CHECKING:

        def __init__(
            self,
            index: int = ...,
            delta: Delta | Mapping[str, Any] = ...,
            finish_reason: str | None = ...,
            logprobs: Any = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        if not isinstance(self.delta, Delta):
            self.delta = _convert(self.delta, Delta)


class ModelResponseStream(_Compat):
    """One chunk of a streamed chat completion (``object: chat.completion.chunk``)."""

    id: str = field(default_factory=_chat_id)
    choices: list[StreamingChoices] = field(default_factory=lambda: [StreamingChoices()])
    created: int = field(default_factory=_now)
    model: str | None = None
    object: str = "chat.completion.chunk"
    system_fingerprint: str | None = None
    usage: Usage | UnsetType | None = UNSET

    if TYPE_CHECKING:

        def __init__(
            self,
            id: str = ...,
            choices: Sequence[StreamingChoices | Mapping[str, Any]] = ...,
            created: int = ...,
            model: str | None = ...,
            object: str = ...,
            system_fingerprint: str | None = ...,
            usage: Usage | Mapping[str, Any] | UnsetType | None = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        _convert_list(self.choices, StreamingChoices)
        if self.usage is not UNSET and not isinstance(self.usage, Usage):
            self.usage = _convert(self.usage, Usage)


class ImageObject(_Compat, omit_defaults=True):
    """One generated image: ``url`` or ``b64_json``."""

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImageResponse(_Compat, omit_defaults=True):
    """The answer to an image generation request."""

    created: int = field(default_factory=_now)
    data: list[ImageObject] = field(default_factory=list)
    usage: Any = None
    # Sent by OpenAI's gpt-image models; None (and left out of the JSON) otherwise.
    background: Any = None
    output_format: Any = None
    quality: Any = None
    size: Any = None

    if TYPE_CHECKING:

        def __init__(
            self,
            created: int = ...,
            data: Sequence[ImageObject | Mapping[str, Any]] = ...,
            usage: Any = ...,
            background: Any = ...,
            output_format: Any = ...,
            quality: Any = ...,
            size: Any = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        _convert_list(self.data, ImageObject)


class Embedding(_Compat):
    embedding: list[float] | str = field(default_factory=list)
    index: int = 0
    object: str = "embedding"


class EmbeddingResponse(_Compat):
    """The answer to an embeddings request (``object: list``)."""

    object: str = "list"
    data: list[Embedding] = field(default_factory=list)
    model: str | None = None
    usage: Usage = field(default_factory=Usage)

    if TYPE_CHECKING:

        def __init__(
            self,
            object: str = ...,
            data: Sequence[Embedding | Mapping[str, Any]] = ...,
            model: str | None = ...,
            usage: Usage | Mapping[str, Any] = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        _convert_list(self.data, Embedding)
        if not isinstance(self.usage, Usage):
            self.usage = _convert(self.usage, Usage) or Usage()
