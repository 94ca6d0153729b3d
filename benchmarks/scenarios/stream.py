"""stream: 50-chunk streams as fast as they go; chunks per second.

The bare apps send the same SSE events (50 content chunks, the finish chunk, ``[DONE]``).
"""

from __future__ import annotations

from typing import Any

from ..harness import Context
from ..payloads import STREAM_PIECES
from ._common import run_throughput

NAME = "stream"
TITLE = "stream: 50-chunk SSE streams, async handler (wrk; chunks/s = req/s x 51)"


def run(ctx: Context) -> dict[str, Any]:
    return run_throughput(
        ctx,
        name=NAME,
        model="bench-stream",
        stream=True,
        events_per_response=len(STREAM_PIECES) + 1,  # content chunks + the finish chunk
        checks=[("chunks/s gateway/baseline", "gateway/baseline", ">=", 0.8)],
    )
