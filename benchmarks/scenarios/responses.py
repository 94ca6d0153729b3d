"""responses: 50-chunk streams on /v1/responses vs the same streams on /v1/chat/completions.

One gateway, one handler (``bench-stream``): what the Responses translation costs per
stream. A Responses stream sends more events (created, in_progress, item and part
added/done, completed) around the same 50 text deltas. Besides throughput, the server's
CPU time per stream (Linux: /proc) is reported: on a machine shared with other work it
is the steadier figure, and the check reads it when measured.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import load
from ..harness import Context, Server
from ..payloads import PROMPT, chat_body
from ._common import check, fmt, headline_level, ratio

NAME = "responses"
TITLE = "responses: 50-chunk /v1/responses streams vs /v1/chat/completions streams (gateway)"
DOORS = {
    "chat": ("/v1/chat/completions", chat_body("bench-stream", stream=True)),
    "responses": (
        "/v1/responses",
        msgspec.json.encode({"model": "bench-stream", "input": PROMPT, "stream": True}),
    ),
}


def _measure(ctx: Context, server: Server, door: str, connections: int, **kw: Any) -> Any:
    before = server.cpu_seconds()
    point = _load(ctx, server, door, connections, **kw)
    after = server.cpu_seconds()
    point["cpu_us_per_stream"] = (
        round((after - before) / point["requests"] * 1e6, 1)
        if before is not None and after is not None and point.get("requests")
        else None
    )
    return point


def _load(ctx: Context, server: Server, door: str, connections: int, **kw: Any) -> Any:
    path, body = DOORS[door]
    seconds = kw.get("duration", ctx.duration)
    if ctx.tool == "wrk":
        return load.wrk_run(
            server.url + path,
            [body],
            connections=connections,
            duration=seconds,
            threads=ctx.wrk_threads,
            cpus=ctx.load_cpus,
        )
    return load.client_run(
        server.port, path, [body], connections=connections, duration=seconds, cpus=ctx.load_cpus
    )


def run(ctx: Context) -> dict[str, Any]:
    servers, failed = ctx.start_all(["gateway"])
    points: list[dict[str, Any]] = []
    try:
        if "gateway" in servers:
            server = servers["gateway"]
            for door in DOORS:
                _measure(ctx, server, door, ctx.connections[0], duration=1)  # warm-up
            for connections in ctx.connections:
                for door in DOORS:
                    point = _measure(ctx, server, door, connections)
                    point["target"] = "gateway"
                    point["door"] = door
                    points.append(point)
                    ctx.echo(
                        f"  {NAME:<9} c={connections:<4} {door:<9} {point['rps']:>10,.0f} req/s"
                        f"  p50 {point['p50_ms']:.2f} ms  p99 {point['p99_ms']:.2f} ms"
                        f"  cpu {fmt(point['cpu_us_per_stream'])} us/stream"
                        f"  errors {point['errors']}"
                    )
    finally:
        ctx.stop_all()
    by = {(p["door"], p["connections"]): p for p in points}
    rows, ratios = [], []
    for connections in ctx.connections:
        chat, resp = by.get(("chat", connections)), by.get(("responses", connections))
        chat_cpu = chat and chat["cpu_us_per_stream"]
        resp_cpu = resp and resp["cpu_us_per_stream"]
        level = {
            "connections": connections,
            "responses/chat": ratio(resp and resp["rps"], chat and chat["rps"]),
            # Streams a CPU-second serves, responses over chat: chat CPU / responses CPU.
            "cpu responses/chat": ratio(chat_cpu, resp_cpu),
        }
        ratios.append(level)
        rows.append(
            [
                fmt(connections),
                fmt(chat and chat["rps"]),
                fmt(resp and resp["rps"]),
                fmt(level["responses/chat"]),
                f"{fmt(chat_cpu)} / {fmt(resp_cpu)}",
                fmt(level["cpu responses/chat"]),
                f"{fmt(chat and chat['p99_ms'])} / {fmt(resp and resp['p99_ms'])}",
                fmt(sum(p["errors"] for p in points if p["connections"] == connections)),
            ]
        )
    top = headline_level(ctx.connections)
    headline = next(r for r in ratios if r["connections"] == top)
    return {
        "unit": "streams/s",
        "targets": ["gateway"],
        "failed": failed,
        "connections": ctx.connections,
        "points": points,
        "ratios": ratios,
        "headline": headline,
        "checks": [
            check(f"streams/s responses/chat (c={top})", headline["responses/chat"], ">=", 0.8)
        ],
        "columns": [
            "connections",
            "chat streams/s",
            "responses streams/s",
            "responses/chat",
            "server CPU us/stream chat / responses",
            "per CPU-second responses/chat",
            "p99 ms chat / responses",
            "errors",
        ],
        "rows": rows,
        "plot": False,
    }
