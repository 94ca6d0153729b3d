"""Shared by the bare servers: request decoding, the paced mock stream, running uvicorn."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec

from benchmarks.payloads import (
    PROXY_DROP_MODEL,
    PROXY_DROP_STEP_S,
    PROXY_MODEL,
    PROXY_PIECES,
    STREAM_PIECES,
    TTFT_SETTINGS,
    stream_events,
    ttft_pieces,
)

__all__ = [
    "TTFT_MODEL",
    "ChatBody",
    "decode_chat",
    "options",
    "paced_events",
    "run",
    "serve",
    "stream_for",
]

TTFT_MODEL = "bench-ttft"


class ChatBody(msgspec.Struct):
    model: str
    messages: list[Any]
    stream: bool = False


decode_chat = msgspec.json.Decoder(ChatBody).decode


async def paced_events(model: str) -> AsyncIterator[bytes]:
    """The mock's timing without the gateway: first token after the ttft, then the pace."""
    ttft = TTFT_SETTINGS["mock_ttft_ms"] / 1000
    step = 1 / TTFT_SETTINGS["mock_tokens_per_second"]
    pieces = ttft_pieces()
    start = anyio.current_time()
    for i, event in enumerate(stream_events(model, pieces)):
        if i < len(pieces):
            await anyio.sleep_until(start + ttft + i * step)
        yield event


async def _fast_events(model: str, pieces: tuple[str, ...]) -> AsyncIterator[bytes]:
    for event in stream_events(model, pieces):
        yield event


async def _stepped_events(model: str) -> AsyncIterator[bytes]:
    start = anyio.current_time()
    for i, event in enumerate(stream_events(model, PROXY_PIECES)):
        await anyio.sleep_until(start + i * PROXY_DROP_STEP_S)
        yield event


def stream_for(model: str) -> AsyncIterator[bytes]:
    """The SSE events a streaming request for ``model`` gets."""
    if model == TTFT_MODEL:
        return paced_events(model)
    if model == PROXY_DROP_MODEL:
        return _stepped_events(model)
    return _fast_events(model, PROXY_PIECES if model == PROXY_MODEL else STREAM_PIECES)


def options(description: str) -> argparse.ArgumentParser:
    """The command line every bare server takes (``--host``, ``--port``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    return parser


def run(app: Any, host: str, port: int, *, lifespan: str = "off") -> None:
    """Run ``app`` on uvicorn the way the benchmarks serve every Python target."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan=lifespan,
    )


def serve(app: Any, description: str) -> None:
    """Parse ``--host``/``--port`` and run ``app``."""
    args = options(description).parse_args()
    run(app, args.host, args.port)
