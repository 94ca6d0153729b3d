"""soak: minutes of steady mixed load on the gateway; RSS growth and errors.

The mix cycles a non-streaming async call, a non-streaming sync call, a 50-chunk async
stream and a 50-chunk sync stream. RSS is sampled every second; growth is the last
sample minus the first one after a warm-up (a tenth of the run, at most 10 s).
"""

from __future__ import annotations

import time
from typing import Any

from ..harness import Context, ServerError
from ..payloads import chat_body
from ._common import check, fmt

NAME = "soak"
TITLE = "soak: steady mixed load on the gateway (RSS growth, errors)"
MB = 1024 * 1024
BODIES = [
    chat_body("bench-chat"),
    chat_body("bench-chat-sync"),
    chat_body("bench-stream", stream=True),
    chat_body("bench-stream-sync", stream=True),
]


def run(ctx: Context) -> dict[str, Any]:
    duration = ctx.soak_duration
    warm = 0.3 if ctx.quick else min(10.0, max(1.0, duration / 10))
    connections = 4 if ctx.quick else 32
    samples: list[tuple[float, float]] = []
    result: dict[str, Any] = {"targets": ["gateway"], "failed": {}}
    try:
        server = ctx.start("gateway")
        ctx.throughput(server, BODIES, connections, duration=warm)
        start = time.perf_counter()
        progress = ctx.progress(f"{NAME} gateway", server, seconds=duration)

        def sample(done: int | None = None) -> None:
            samples.append((round(time.perf_counter() - start, 1), round(server.rss() / MB, 2)))
            progress(done)

        sample()
        point = ctx.throughput(server, BODIES, connections, duration=duration, on_tick=sample)
        sample()
    except ServerError as exc:
        result["failed"]["gateway"] = str(exc)
        ctx.echo(f"  ! gateway: {exc}")
        point = None
    finally:
        ctx.stop_all()
    growth = round(samples[-1][1] - samples[0][1], 2) if len(samples) >= 2 else None
    errors = point["errors"] if point else None
    if point:
        ctx.echo(
            f"  {NAME:<9} gateway   {point['requests']:,} requests in {point['duration_s']:.0f} s,"
            f" errors {errors}, RSS {samples[0][1]:.1f} -> {samples[-1][1]:.1f} MB"
        )
    result.update(
        {
            "duration_s": duration,
            "connections": connections,
            "point": point,
            "rss_samples_mb": samples,
            "headline": {
                "rss_start_mb": samples[0][1] if samples else None,
                "rss_end_mb": samples[-1][1] if samples else None,
                "rss_growth_mb": growth,
                "errors": errors,
            },
            "checks": [
                check("errors", errors, "<=", 0),
                check("RSS growth MB", growth, "<", 5),
            ],
            "columns": ["requests", "req/s", "errors", "RSS start MB", "RSS end MB", "growth MB"],
            "rows": [
                [
                    fmt(point["requests"] if point else None),
                    fmt(point["rps"] if point else None),
                    fmt(errors),
                    fmt(samples[0][1] if samples else None, 1),
                    fmt(samples[-1][1] if samples else None, 1),
                    fmt(growth),
                ]
            ],
        }
    )
    return result
