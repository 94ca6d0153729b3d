"""chat-sync: non-streaming chat completions served by a sync-only handler.

The gateway runs the handler's ``completion`` on a worker thread; the bare apps answer
from the event loop, so the ratio is the cost of the thread hop.
"""

from __future__ import annotations

from typing import Any

from ..harness import Context
from ._common import run_throughput

NAME = "chat-sync"
TITLE = "chat-sync: non-streaming completion, sync handler on worker threads (wrk)"


def run(ctx: Context) -> dict[str, Any]:
    return run_throughput(
        ctx,
        name=NAME,
        model="bench-chat-sync",
        checks=[("req/s gateway/baseline", "gateway/baseline", ">=", 0.35)],
    )
