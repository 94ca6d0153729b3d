"""Legacy text completions (``POST /v1/completions``) onto chat completions.

Each prompt is one chat call with the prompt as the user's message; ``to_completion``
merges the chat answers into one text completion, ``CompletionChunks`` turns a chat
stream into text-completion chunks.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec

from ..errors import BadRequestError, GatewayError
from ..types import ModelResponse
from ._chat import ChatIn, chunk_parts, new_id, plain, usage_counts

__all__ = ["MAX_PROMPTS", "CompletionChunks", "CompletionRequest", "to_chat", "to_completion"]

_encode = msgspec.json.Encoder().encode

_Seconds = Annotated[float, msgspec.Meta(gt=0, le=1e7)]

# Prompts in one request, each its own routed chat call run at the same time: bounded
# so one request cannot occupy every deployment slot.
MAX_PROMPTS = 16


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class CompletionRequest(msgspec.Struct):
    model: str
    prompt: str | list[str]
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=16)] | None = None
    timeout: _Seconds | None = None


_CONSUMED = frozenset(
    {
        "model",
        "prompt",
        "stream",
        "stream_options",
        "echo",
        "suffix",
        "best_of",
        "logprobs",
        "timeout",
    }
)


def to_chat(request: CompletionRequest, data: dict[str, Any]) -> list[ChatIn]:
    """One chat call per prompt."""
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    if not prompts:
        raise BadRequestError("`prompt` must not be empty", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise BadRequestError(
            f"at most {MAX_PROMPTS} prompts in one request, got {len(prompts)}", param="prompt"
        )
    if request.suffix:
        raise BadRequestError("`suffix` (insertion) is not supported", param="suffix")
    if request.logprobs is not None:
        raise BadRequestError("`logprobs` is not supported on completions", param="logprobs")
    if request.best_of not in (None, 1):
        raise BadRequestError("`best_of` is not supported", param="best_of")
    stream = bool(request.stream)
    if stream and len(prompts) > 1:
        raise BadRequestError("a streamed completion takes one prompt", param="prompt")
    if stream and (request.n or 1) > 1:
        raise BadRequestError("a streamed completion takes n = 1", param="n")
    optional = {k: v for k, v in data.items() if k not in _CONSUMED and v is not None}
    if stream:
        optional["stream"] = True
        optional["stream_options"] = {"include_usage": True}
    return [
        ChatIn(request.model, [{"role": "user", "content": prompt}], dict(optional), stream)
        for prompt in prompts
    ]


def to_completion(answers: list[Any], request: CompletionRequest) -> dict[str, Any]:
    """The chat answers, one per prompt in order, as one text completion."""
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    choices: list[dict[str, Any]] = []
    prompt_tokens = completion_tokens = 0
    for answer, prompt in zip(answers, prompts, strict=True):
        if not isinstance(answer, ModelResponse):
            answer = msgspec.convert(plain(answer), ModelResponse, strict=False)
        for choice in answer.choices:
            content = choice.message.content
            choices.append(
                {
                    "text": (prompt if request.echo else "")
                    + (content if isinstance(content, str) else ""),
                    "index": len(choices),
                    "logprobs": None,
                    "finish_reason": "length" if choice.finish_reason == "length" else "stop",
                }
            )
        p, c = usage_counts(answer.usage)
        prompt_tokens += p
        completion_tokens += c
    return {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class CompletionChunks:
    """Text-completion chunks for one chat stream (``data:`` events, then ``[DONE]``)."""

    __slots__ = ("_finish", "_head", "_include_usage", "_prefix", "_request", "_suffix", "_usage")

    def __init__(self, request: CompletionRequest) -> None:
        self._request = request
        self._include_usage = bool(request.stream_options and request.stream_options.include_usage)
        self._finish: str | None = None
        self._usage: Any = None
        self._head = head = {
            "id": new_id("cmpl-"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": request.model,
        }
        # Every text chunk is this template filled in: no dict or encoder walk per chunk.
        self._prefix = b"data: " + _encode(head)[:-1] + b',"choices":[{"text":'
        self._suffix = b',"index":0,"logprobs":null,"finish_reason":null}]}\n\n'

    def _chunk(self, text: str) -> bytes:
        return self._prefix + _encode(text) + self._suffix

    def start(self) -> bytes:
        if self._request.echo and isinstance(self._request.prompt, str):
            return self._chunk(self._request.prompt)
        return b""

    def feed(self, chunk: Any) -> bytes:
        if chunk.__class__ is str:
            return self._prefix + _encode(chunk) + self._suffix  # most chunks: text
        text, _, finish, usage = chunk_parts(chunk)
        if finish is not None:
            self._finish = finish
        if usage:
            self._usage = usage
        return self._chunk(text) if text else b""

    def close(self) -> bytes:
        finish = b'"length"' if self._finish == "length" else b'"stop"'
        out = [
            self._prefix
            + b'""'
            + self._suffix.replace(b'"finish_reason":null', b'"finish_reason":' + finish)
        ]
        if self._include_usage:
            p, c = usage_counts(self._usage)
            usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
            out.append(b"data: " + _encode({**self._head, "choices": [], "usage": usage}) + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)

    def fail(self, exc: GatewayError) -> bytes:
        return b"data: " + _encode(exc.to_dict()) + b"\n\n"
