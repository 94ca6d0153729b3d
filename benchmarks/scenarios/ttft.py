"""ttft: time to first token and gaps between chunks, through the gateway vs the mock alone.

The gateway serves ``bench-ttft`` with ``providers/mock`` (``mock_ttft_ms=200``, 10 tokens
at 100 tokens/s). "The mock alone" is the same timing served by the bare Starlette app.
The asyncio client stamps each SSE event as it arrives: a buffering gateway would show
a late first token and near-zero gaps.
"""

from __future__ import annotations

from typing import Any

from ..harness import Context
from ..payloads import TTFT_SETTINGS, chat_body
from ._common import check, fmt, ratio

NAME = "ttft"
TITLE = (
    f"ttft: mock stream, first token after {TTFT_SETTINGS['mock_ttft_ms']} ms, "
    f"{TTFT_SETTINGS['mock_tokens']} tokens at {TTFT_SETTINGS['mock_tokens_per_second']}/s "
    "(asyncio client)"
)
LEVELS = (1, 16, 64)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def run(ctx: Context) -> dict[str, Any]:
    targets = ctx.targets("gateway", "mock", "litellm")
    levels = [4] if ctx.quick else list(LEVELS)
    body = chat_body("bench-ttft", stream=True)
    servers, failed = ctx.start_all(targets)
    points: list[dict[str, Any]] = []
    try:
        same = ctx.same_bytes(servers, body)
        for server in servers.values():  # warm-up: first streams pay one-time costs
            if not ctx.quick:
                ctx.streams(server, body, 4, duration=1.0)
        for connections in levels:
            for target in targets:
                if target not in servers:
                    continue
                # One connection gives few 300 ms streams in a point: run it longer, so
                # its p99 is not simply the slowest of a dozen.
                duration = ctx.duration if ctx.quick or connections > 1 else 4 * ctx.duration
                point = ctx.streams(servers[target], body, connections, duration=duration)
                point["target"] = target
                points.append(point)
                ctx.echo(
                    f"  {NAME:<9} c={connections:<4} {target:<9} ttft p50"
                    f" {fmt(point['ttft_p50_ms'])} p99 {fmt(point['ttft_p99_ms'])} ms,"
                    f" gap p50 {fmt(point['gap_p50_ms'])} p99 {fmt(point['gap_p99_ms'])} ms,"
                    f" {point['streams']} streams, errors {point['errors']}"
                )
    finally:
        ctx.stop_all()
    by = {(p["target"], p["connections"]): p for p in points}

    def get(target: str, connections: int, key: str) -> float | None:
        point = by.get((target, connections))
        return None if point is None else point[key]

    columns = [
        "connections",
        "target",
        "ttft p50 ms",
        "ttft p99 ms",
        "gap p50 ms",
        "gap p99 ms",
        "streams",
        "errors",
        "added ttft p50 / p99 ms",
        "added gap p50 ms",
    ]
    rows, added = [], []
    for connections in levels:
        level = {
            "connections": connections,
            "added_ttft_p50_ms": _diff(
                get("gateway", connections, "ttft_p50_ms"), get("mock", connections, "ttft_p50_ms")
            ),
            "added_ttft_p99_ms": _diff(
                get("gateway", connections, "ttft_p99_ms"), get("mock", connections, "ttft_p99_ms")
            ),
            "added_gap_p50_ms": _diff(
                get("gateway", connections, "gap_p50_ms"), get("mock", connections, "gap_p50_ms")
            ),
            "ttft_p99 gateway/mock": ratio(
                get("gateway", connections, "ttft_p99_ms"), get("mock", connections, "ttft_p99_ms")
            ),
        }
        added.append(level)
        for target in targets:
            point = by.get((target, connections))
            if point is None:
                continue
            extra = ["", ""]
            if target == "gateway":
                extra = [
                    f"{fmt(level['added_ttft_p50_ms'])} / {fmt(level['added_ttft_p99_ms'])}",
                    fmt(level["added_gap_p50_ms"]),
                ]
            rows.append(
                [
                    str(connections),
                    target,
                    *(fmt(point[k]) for k in ("ttft_p50_ms", "ttft_p99_ms")),
                    *(fmt(point[k]) for k in ("gap_p50_ms", "gap_p99_ms")),
                    fmt(point["streams"]),
                    fmt(point["errors"]),
                    *extra,
                ]
            )
    first = added[0]
    c = first["connections"]
    return {
        "targets": targets,
        "failed": failed,
        "same_bytes": same,
        "connections": levels,
        "settings": TTFT_SETTINGS,
        "points": points,
        "added": added,
        "headline": first,
        "checks": [
            check(
                f"added ttft p99 ms (c={c})",
                first["added_ttft_p99_ms"],
                "<",
                2,
                by_level={a["connections"]: a["added_ttft_p99_ms"] for a in added},
            ),
            check(
                f"added gap p50 ms, no buffering (c={c})",
                first["added_gap_p50_ms"],
                "<",
                2,
                by_level={a["connections"]: a["added_gap_p50_ms"] for a in added},
            ),
        ],
        "columns": columns,
        "rows": rows,
    }
