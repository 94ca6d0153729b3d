"""LiteLLM's side of the comparison: the benchmark handlers written for LiteLLM.

Never imported by this project: the harness copies this file next to a generated
LiteLLM config (as ``litellm_bench_handlers.py``) when ``--litellm PATH`` is given, and
LiteLLM's proxy loads it. Same answers as ``benchmarks/handlers.py`` and the same mock
timing as the gateway's ``bench-ttft`` model; the constants are copies of
``benchmarks/payloads.py`` (that module is not importable from LiteLLM's environment).
"""

# ruff: noqa
import asyncio
import time

import litellm
from litellm import CustomLLM
from litellm.types.utils import Choices, Message, ModelResponse, Usage

CHAT_TEXT = (
    "Hello! I am a benchmark handler. This answer has the size of a short chat reply, "
    "so the figures measure the gateway and not the network."
)
CHAT_USAGE = {"prompt_tokens": 6, "completion_tokens": 32, "total_tokens": 38}
STREAM_PIECES = tuple(("token" if i == 0 else f" token{i}") for i in range(50))
TTFT_MS, TTFT_TOKENS, TTFT_TPS = 200, 10, 100
_WORDS = (
    "the quick brown fox jumps over a lazy dog while this gateway streams tokens at a "
    "steady pace so that clients can measure time to first token and the gaps between "
    "chunks under load without any real model behind it and every answer is the same "
    "for the same length which keeps benchmark runs comparable from one day to the next"
).split()
TTFT_PIECES = tuple(
    _WORDS[i % len(_WORDS)] if i == 0 else " " + _WORDS[i % len(_WORDS)] for i in range(TTFT_TOKENS)
)


def _response():
    return ModelResponse(
        choices=[Choices(message=Message(content=CHAT_TEXT, role="assistant"))],
        usage=Usage(**CHAT_USAGE),
    )


def _chunk(text, finished=False):
    return {
        "text": text,
        "tool_use": None,
        "is_finished": finished,
        "finish_reason": "stop" if finished else "",
        "usage": None,
        "index": 0,
    }


class AsyncBench(CustomLLM):
    async def acompletion(self, *args, **kwargs):
        return _response()

    async def astreaming(self, *args, **kwargs):
        for piece in STREAM_PIECES:
            yield _chunk(piece)
        yield _chunk("", True)


def _stream_list():
    return [_chunk(piece) for piece in STREAM_PIECES] + [_chunk("", True)]


class SyncBench(CustomLLM):
    """LiteLLM's proxy only calls ``acompletion``/``astreaming``: a handler with only
    ``completion`` answers "Not implemented yet!" there. So the sync work is handed to a
    thread by hand, as a LiteLLM user has to."""

    def completion(self, *args, **kwargs):
        return _response()

    def streaming(self, *args, **kwargs):
        return iter(_stream_list())

    async def acompletion(self, *args, **kwargs):
        return await asyncio.to_thread(self.completion, *args, **kwargs)

    async def astreaming(self, *args, **kwargs):
        for chunk in await asyncio.to_thread(_stream_list):
            yield chunk


class TtftBench(CustomLLM):
    async def acompletion(self, *args, **kwargs):
        await asyncio.sleep(TTFT_MS / 1000 + TTFT_TOKENS / TTFT_TPS)
        return _response()

    async def astreaming(self, *args, **kwargs):
        start = time.monotonic()
        for i, piece in enumerate(TTFT_PIECES):
            delay = start + TTFT_MS / 1000 + i / TTFT_TPS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            yield _chunk(piece)
        yield _chunk("", True)


class SeedBench(CustomLLM):
    """The handler of LiteLLM's own custom-handler docs."""

    async def acompletion(self, *args, **kwargs):
        return litellm.completion(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "Hello world"}],
            mock_response="Hi!",
        )


async_handler = AsyncBench()
sync_handler = SyncBench()
ttft_handler = TtftBench()
seed_handler = SeedBench()
