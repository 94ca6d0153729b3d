"""memory: resident memory idle (after the first answer) and after many requests.

RSS counts the server process and its children. 100,000 chat requests by default
(``--memory-requests``), 32 connections.
"""

from __future__ import annotations

import time
from typing import Any

from ..harness import Context, ServerError
from ..payloads import chat_body
from ._common import check, fmt, ratio

NAME = "memory"
TITLE = "memory: RSS idle and after N chat requests (MB)"
MB = 1024 * 1024


def run(ctx: Context) -> dict[str, Any]:
    targets = ctx.targets("gateway", "baseline", "raw", "litellm")
    count = ctx.memory_requests
    connections = 8 if ctx.quick else 32
    body = chat_body("bench-chat")
    summary: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for target in targets:
        try:
            server = ctx.start(target)
            time.sleep(0.1 if ctx.quick else 1.0)
            idle = server.rss()
            progress = ctx.progress(f"{NAME} {target}", server, answers=count)
            point = ctx.throughput(server, [body], connections, requests=count, on_tick=progress)
            time.sleep(0.1 if ctx.quick else 1.0)
            after = server.rss()
        except ServerError as exc:
            failed[target] = str(exc)
            ctx.echo(f"  ! {target}: {exc}")
            continue
        finally:
            ctx.stop_all()
        summary[target] = {
            "idle_mb": round(idle / MB, 1),
            "after_mb": round(after / MB, 1),
            "requests": point["requests"],
            "errors": point["errors"],
            "rps": point["rps"],
        }
        ctx.echo(
            f"  {NAME:<9} {target:<9} idle {idle / MB:.1f} MB, after {point['requests']:,}"
            f" requests {after / MB:.1f} MB, errors {point['errors']}"
        )

    def after(target: str) -> float | None:
        return summary[target]["after_mb"] if target in summary else None

    headline = {
        "gateway_after_mb": after("gateway"),
        "gateway/baseline": ratio(after("gateway"), after("baseline")),
        "gateway/raw": ratio(after("gateway"), after("raw")),
    }
    if "litellm" in targets:
        headline["gateway/litellm"] = ratio(after("gateway"), after("litellm"))
    rows = [
        [t, fmt(s["idle_mb"], 1), fmt(s["after_mb"], 1), fmt(s["requests"]), fmt(s["errors"])]
        for t, s in summary.items()
    ]
    return {
        "targets": targets,
        "failed": failed,
        "requests": count,
        "connections": connections,
        "summary": summary,
        "headline": headline,
        "checks": [check(f"gateway RSS MB after {count:,} requests", after("gateway"), "<", 60)],
        "columns": ["target", "idle MB", "after MB", "requests", "errors"],
        "rows": rows,
    }
