"""proxy: the gateway in front of an OpenAI-compatible upstream vs the upstream directly.

The upstream is the bare Starlette app (it answers OpenAI JSON); the gateway serves
``bench-proxy`` with ``providers/openai`` pointed at it. One connection, so the
difference in latency is what the hop through the gateway adds.
"""

from __future__ import annotations

from typing import Any

from ..harness import Context, ServerError
from ..payloads import chat_body
from ._common import check, fmt, ratio

NAME = "proxy"
TITLE = "proxy: gateway -> OpenAI-compatible upstream vs the upstream directly (wrk, 1 connection)"
LEVELS = (1,)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def run(ctx: Context) -> dict[str, Any]:
    body = chat_body("bench-proxy")
    targets = ctx.targets("gateway", "upstream", "litellm")
    points: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    same: dict[str, bool] = {}
    try:
        try:
            upstream = ctx.start("upstream")
        except ServerError as exc:
            upstream, failed["upstream"] = None, str(exc)
        servers = {"upstream": upstream} if upstream else {}
        if upstream is not None:
            others, failed = ctx.start_all(
                [t for t in targets if t != "upstream"], upstream_port=upstream.port
            )
            servers.update(others)
        same = ctx.same_bytes(servers, body)
        if not ctx.quick:
            for server in servers.values():
                ctx.throughput(server, [body], 1, duration=1)  # warm-up
        for connections in LEVELS:
            for target in targets:
                if target not in servers:
                    continue
                point = ctx.throughput(servers[target], [body], connections)
                point["target"] = target
                points.append(point)
                ctx.echo(
                    f"  {NAME:<9} c={connections:<4} {target:<9} p50 {point['p50_ms']:.3f} ms"
                    f"  p99 {point['p99_ms']:.3f} ms  {point['rps']:,.0f} req/s"
                    f"  errors {point['errors']}"
                )
    finally:
        ctx.stop_all()
    by = {p["target"]: p for p in points}

    def get(target: str, key: str) -> float | None:
        point = by.get(target)
        return None if point is None else point[key]

    headline = {
        "connections": 1,
        "added_p50_ms": _diff(get("gateway", "p50_ms"), get("upstream", "p50_ms")),
        "added_p99_ms": _diff(get("gateway", "p99_ms"), get("upstream", "p99_ms")),
        "p50 gateway/upstream": ratio(get("gateway", "p50_ms"), get("upstream", "p50_ms")),
    }
    if "litellm" in targets:
        litellm_p50 = get("litellm", "p50_ms")
        headline["litellm_added_p50_ms"] = _diff(litellm_p50, get("upstream", "p50_ms"))
    columns = ["target", "p50 ms", "p90 ms", "p99 ms", "req/s", "errors", "added p50 / p99 ms"]
    rows = []
    for target in targets:
        if target not in by:
            continue
        point = by[target]
        added = ""
        if target != "upstream":
            added = (
                f"{fmt(_diff(point['p50_ms'], get('upstream', 'p50_ms')), 3)} / "
                f"{fmt(_diff(point['p99_ms'], get('upstream', 'p99_ms')), 3)}"
            )
        rows.append(
            [
                target,
                *(fmt(point[k], 3) for k in ("p50_ms", "p90_ms", "p99_ms")),
                fmt(point["rps"]),
                fmt(point["errors"]),
                added,
            ]
        )
    return {
        "targets": targets,
        "failed": failed,
        "same_bytes": same,
        "connections": list(LEVELS),
        "points": points,
        "headline": headline,
        "checks": [check("added p50 ms (c=1)", headline["added_p50_ms"], "<", 1)],
        "columns": columns,
        "rows": rows,
    }
