"""What every target answers, byte for byte (ids and timestamps aside).

The gateway's handlers, the baseline app, the raw ASGI app and the LiteLLM handlers all
answer from these constants, so each scenario compares the same work. The bare apps
encode their answers per request with msgspec Structs shaped like the gateway's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec

__all__ = [
    "CHAT_TEXT",
    "CHAT_USAGE",
    "DONE",
    "PROXY_DROP_MODEL",
    "PROXY_MODEL",
    "PROXY_PIECES",
    "SEED_MODEL",
    "STREAM_PIECES",
    "TTFT_SETTINGS",
    "chat_body",
    "chat_bytes",
    "chunk_bytes",
    "stream_events",
    "ttft_pieces",
]

# The non-streaming answer: a short paragraph, as a chat reply would be.
CHAT_TEXT = (
    "Hello! I am a benchmark handler. This answer has the size of a short chat reply, "
    "so the figures measure the gateway and not the network."
)
CHAT_USAGE = {"prompt_tokens": 6, "completion_tokens": 32, "total_tokens": 38}

# The streaming answer: 50 content chunks, then the finish chunk.
STREAM_PIECES = tuple(("token" if i == 0 else f" token{i}") for i in range(50))

# The proxy scenario's upstream streams 20 content chunks (then the finish chunk). Its
# "slow" model paces them (PROXY_DROP_STEP_S apart) so that clients which hang up after a
# few chunks leave the gateway in the middle of an upstream stream.
PROXY_MODEL = "bench-proxy"
PROXY_DROP_MODEL = "bench-proxy-slow"
PROXY_PIECES = STREAM_PIECES[:20]
PROXY_DROP_STEP_S = 0.01

# The seed's handler answers ``gateway.completion(..., mock_response="Hi!")``: the mock's
# text and LiteLLM's fixed mock usage (the gateway answers with the model clients asked for).
SEED_MODEL = "bench-chat-seed"
SEED_TEXT = "Hi!"
SEED_USAGE = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}

# The ttft scenario's mock timing (the gateway serves it with providers/mock).
TTFT_SETTINGS = {"mock_ttft_ms": 200, "mock_tokens": 10, "mock_tokens_per_second": 100}

DONE = b"data: [DONE]\n\n"

PROMPT = [{"role": "user", "content": "Hello, how are you today?"}]


def chat_body(model: str, *, stream: bool = False) -> bytes:
    """The request body every load generator sends."""
    body: dict[str, Any] = {"model": model, "messages": PROMPT}
    if stream:
        body["stream"] = True
    return msgspec.json.encode(body)


def ttft_pieces() -> tuple[str, ...]:
    """The mock's generated tokens for ``TTFT_SETTINGS`` (what the gateway streams)."""
    from gateway_providers.mock import generated_tokens

    return generated_tokens(TTFT_SETTINGS["mock_tokens"])


# Structs shaped like the gateway's ModelResponse / ModelResponseStream encodings.


class _Message(msgspec.Struct):
    content: str
    role: str = "assistant"
    tool_calls: None = None
    function_call: None = None


class _Choice(msgspec.Struct):
    finish_reason: str
    index: int
    message: _Message


class _Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Response(msgspec.Struct):
    id: str
    choices: list[_Choice]
    created: int
    model: str
    object: str = "chat.completion"
    system_fingerprint: None = None
    usage: _Usage | None = None


class _Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class _ChunkChoice(msgspec.Struct):
    index: int
    delta: _Delta
    finish_reason: str | None


class _Chunk(msgspec.Struct):
    id: str
    choices: list[_ChunkChoice]
    created: int
    model: str
    object: str = "chat.completion.chunk"
    system_fingerprint: None = None


_encode = msgspec.json.Encoder().encode
_USAGE = _Usage(**CHAT_USAGE)
_SEED_USAGE = _Usage(**SEED_USAGE)


def chat_bytes(model: str) -> bytes:
    """The chat.completion answer to ``model``, encoded now (fresh id and timestamp)."""
    text, usage = CHAT_TEXT, _USAGE
    if model == SEED_MODEL:
        text, usage = SEED_TEXT, _SEED_USAGE
    return _encode(
        _Response(
            id=f"chatcmpl-{uuid.uuid4()}",
            choices=[_Choice(finish_reason="stop", index=0, message=_Message(content=text))],
            created=int(time.time()),
            model=model,
            usage=usage,
        )
    )


def chunk_bytes(
    chat_id: str, created: int, model: str, delta: _Delta, finish: str | None = None
) -> bytes:
    """One SSE event carrying one chunk."""
    chunk = _Chunk(
        id=chat_id,
        choices=[_ChunkChoice(index=0, delta=delta, finish_reason=finish)],
        created=created,
        model=model,
    )
    return b"data: " + _encode(chunk) + b"\n\n"


def stream_events(model: str, pieces: tuple[str, ...]) -> Iterator[bytes]:
    """A whole stream as SSE events, made one at a time: role with the first piece,
    one event per piece, the finish chunk, ``[DONE]``."""
    chat_id, created = f"chatcmpl-{uuid.uuid4()}", int(time.time())
    for i, piece in enumerate(pieces):
        delta = _Delta(role="assistant", content=piece) if i == 0 else _Delta(content=piece)
        yield chunk_bytes(chat_id, created, model, delta)
    yield chunk_bytes(chat_id, created, model, _Delta(), "stop")
    yield DONE
