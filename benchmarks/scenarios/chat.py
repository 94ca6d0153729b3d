"""chat: non-streaming chat completions served by an async handler."""

from __future__ import annotations

from typing import Any

from ..harness import Context
from ._common import run_throughput

NAME = "chat"
TITLE = (
    "chat: non-streaming completion, async handler (wrk); the gateway also with metrics, "
    "request ids and a no-op logging callback on (gw-observed) and off (gw-off)"
)


def run(ctx: Context) -> dict[str, Any]:
    return run_throughput(
        ctx,
        name=NAME,
        model="bench-chat",
        checks=[
            ("req/s gateway/baseline", "gateway/baseline", ">=", 0.9),
            ("req/s gateway/raw", "gateway/raw", ">=", 0.6),
            ("p99 gateway/baseline", "p99 gateway/baseline", "<=", 1.5),
            ("req/s observability on/off", "observed/off", ">=", 0.9),
        ],
        pairs=[("observed/off", "gw-observed", "gw-off")],
    )
