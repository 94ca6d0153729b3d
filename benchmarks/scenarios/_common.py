"""Pieces the scenarios share: number formatting, ratios, checks, the throughput run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..harness import Context, http_request

__all__ = [
    "PAIRED_RUNS",
    "check",
    "fmt",
    "headline_level",
    "paired",
    "ratio",
    "run_throughput",
    "warm_up",
]

# One 5-s point a target and level moves by tens of percent on this shared host (the same
# point minutes apart: 1,300 -> 4,300 req/s). A ratio a target counts is taken from
# figures measured back to back, in pairs (alternating which goes first, so a steady
# drift favours neither), and is the median pair's; the sweep's are reported beside it.
PAIRED_RUNS = 3


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: thousands separators for big numbers, a dash for missing ones."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def check(
    figure: str,
    value: float | None,
    op: str,
    bound: float,
    *,
    by_level: dict[int, float | None] | None = None,
    runs: list[float | None] | None = None,
    paired: dict[int, float | None] | None = None,
) -> dict[str, Any]:
    """A target from the issue: ``value op bound`` (ok is None when not measured);
    ``by_level`` is the same figure at every concurrency level measured, ``runs`` each
    repeated run's when ``value`` is their median, ``paired`` the median of paired runs
    at the levels the check counts (``by_level`` then the single figures beside them),
    for the table."""
    ok = None
    if value is not None:
        ok = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
    result = {"figure": figure, "value": value, "target": f"{op} {bound:g}", "ok": ok}
    if by_level:
        result["by_level"] = {str(c): v for c, v in sorted(by_level.items())}
    if runs:
        result["runs"] = runs
    if paired:
        result["paired"] = {str(c): v for c, v in sorted(paired.items())}
    return result


def paired(
    ctx: Context,
    a: tuple[Any, int],
    b: tuple[Any, int],
    bodies: list[bytes],
    label: str,
    unit: str = "req/s",
) -> dict[str, Any]:
    """``b``'s throughput over ``a``'s ((server, connections) each), measured back to
    back ``PAIRED_RUNS`` times (once in a quick run): {"runs": [[a, b] figures],
    "ratios", "median"}."""
    pairs, ratios, stolen, cpu_ratios = [], [], [], []
    for i in range(1 if ctx.quick else PAIRED_RUNS):
        figures, took, cpu = {}, {}, {}
        for side, (server, connections) in (("a", a), ("b", b))[:: 1 if i % 2 == 0 else -1]:
            run = ctx.throughput(server, bodies, connections)
            figures[side], took[side], cpu[side] = run["rps"], run.get("stolen"), run.get("cpu_us")
        pairs.append([figures["a"], figures["b"]])
        stolen.append([took["a"], took["b"]])
        ratios.append(ratio(figures["b"], figures["a"]))
        # Requests per CPU-second of the servers, b over a: less CPU a request is more.
        cpu_ratios.append(ratio(cpu["a"], cpu["b"]))
        ctx.echo(
            f"  {label} pair {i + 1}: {figures['a']:,.0f} and {figures['b']:,.0f} {unit},"
            f" ratio {fmt(ratios[-1])}" + _stolen_note(took["a"], took["b"])
        )
    known = sorted(r for r in ratios if r is not None)
    median = known[len(known) // 2] if len(known) == len(ratios) else None
    known_cpu = sorted(r for r in cpu_ratios if r is not None)
    cpu_median = known_cpu[len(known_cpu) // 2] if len(known_cpu) == len(cpu_ratios) else None
    return {
        "runs": pairs,
        "ratios": ratios,
        "median": median,
        "stolen_pct": stolen,
        "cpu_ratios": cpu_ratios,  # b's requests per server CPU-second over a's
        "cpu_median": cpu_median,
    }


def _stolen_note(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return ""
    return f" (CPU time stolen by the hypervisor: {a:g}% and {b:g}%)"


def headline_level(levels: list[int]) -> int:
    """The concurrency the headline ratios are read at: 32 when measured, else the top."""
    return 32 if 32 in levels else max(levels)


def warm_up(ctx: Context, server: Any, bodies: list[bytes], connections: int) -> None:
    """Let each target import and allocate what it needs before it is measured."""
    if ctx.quick:
        for body in bodies * 3:
            http_request(server.port, "POST", "/v1/chat/completions", body)
        return
    ctx.throughput(server, bodies, connections, duration=1)


def run_throughput(
    ctx: Context,
    *,
    name: str,
    model: str,
    stream: bool = False,
    events_per_response: int = 0,
    checks: list[tuple[str, str, str, float]],
    pairs: Sequence[tuple[str, str, str]] = (),
) -> dict[str, Any]:
    """Throughput and latency of each target at each concurrency level, interleaved.

    ``checks`` are (figure, ratio key, op, bound) read at the headline level; ``pairs``
    are more ratios, (key, target, target), their targets measured with the others. A
    ratio a check reads is the median of paired runs (``paired``) at the headline level.
    """
    from ..payloads import chat_body

    metric = "chunks_per_s" if events_per_response else "rps"
    unit = "chunks/s" if events_per_response else "req/s"
    targets = ctx.targets("gateway", "baseline", "raw", "litellm")
    if ctx.before:
        # The same scenario before a change, in the same run: is a ratio unchanged?
        pairs = [
            *pairs,
            ("before/baseline", "before", "baseline"),
            ("gateway/before", "gateway", "before"),
        ]
        checks = [*checks, (f"{unit} gateway/before", "gateway/before", ">=", 0.9)]
    targets += dict.fromkeys(t for _, *pair in pairs for t in pair if t not in targets)
    checked = {key for _, key, _, _ in checks}
    body = chat_body(model, stream=stream)
    levels = ctx.connections
    servers, failed = ctx.start_all(targets)
    points: list[dict[str, Any]] = []
    try:
        same = ctx.same_bytes(servers, body)
        for server in servers.values():
            warm_up(ctx, server, [body], levels[0])
        for connections in levels:
            for target in targets:  # round-robin: every target at this level, then the next
                if target not in servers:
                    continue
                point = ctx.throughput(servers[target], [body], connections)
                point["target"] = target
                if events_per_response:
                    point["chunks_per_s"] = round(point["rps"] * events_per_response, 1)
                points.append(point)
                ctx.echo(
                    f"  {name:<9} c={connections:<4} {target:<9}"
                    f" {point['rps']:>10,.0f} req/s  p50 {point['p50_ms']:.2f} ms"
                    f"  p99 {point['p99_ms']:.2f} ms  errors {point['errors']}"
                )
        top = headline_level(levels)
        # Every ratio a check reads is also measured in back-to-back pairs at the
        # headline level: one 5-s point of each side moved a ratio by 0.2 with the
        # machine's noise (CPU stolen from one side and not the other).
        measured: dict[str, dict[str, Any]] = {}
        for key, a, b in [("gateway/baseline", "gateway", "baseline"), *pairs]:
            if a in servers and b in servers and key in checked:
                measured[key] = paired(
                    ctx,
                    (servers[b], top),
                    (servers[a], top),
                    [body],
                    f"{name:<9} c={top} {b} / {a}",
                )
    finally:
        ctx.stop_all()
    by = {(p["target"], p["connections"]): p for p in points}

    def get(target: str, connections: int, key: str) -> float | None:
        point = by.get((target, connections))
        return None if point is None else point[key]

    has_litellm = "litellm" in targets
    columns = ["connections", f"gateway {unit}", f"baseline {unit}", f"raw {unit}"]
    if has_litellm:
        columns.append(f"LiteLLM {unit}")
    columns += ["gateway/baseline", "gateway/raw"]
    if has_litellm:
        columns.append("gateway/LiteLLM")
    columns += [key for key, _, _ in pairs]
    columns += ["p50 ms gw / base / raw", "p99 ms gw / base / raw", "errors"]
    rows, ratios = [], []
    for connections in levels:
        gw = get("gateway", connections, metric)
        level = {
            "connections": connections,
            "gateway/baseline": ratio(gw, get("baseline", connections, metric)),
            "gateway/raw": ratio(gw, get("raw", connections, metric)),
            "p99 gateway/baseline": ratio(
                get("gateway", connections, "p99_ms"), get("baseline", connections, "p99_ms")
            ),
        }
        if has_litellm:
            level["gateway/litellm"] = ratio(gw, get("litellm", connections, metric))
        for key, a, b in pairs:
            level[key] = ratio(get(a, connections, metric), get(b, connections, metric))
        ratios.append(level)
        row = [connections, gw]
        row += [get("baseline", connections, metric), get("raw", connections, metric)]
        if has_litellm:
            row.append(get("litellm", connections, metric))
        row += [level["gateway/baseline"], level["gateway/raw"]]
        if has_litellm:
            row.append(level["gateway/litellm"])
        row += [level[key] for key, _, _ in pairs]
        for key in ("p50_ms", "p99_ms"):
            cells = (fmt(get(t, connections, key)) for t in ("gateway", "baseline", "raw"))
            row.append(" / ".join(cells))
        row.append(sum(p["errors"] for p in points if p["connections"] == connections))
        rows.append([fmt(cell) for cell in row])
    headline = dict(next(r for r in ratios if r["connections"] == top))
    for key, pairs_of_key in measured.items():
        # The checks and the headline read the paired median; the sweep's stays beside it.
        headline[f"{key} sweep"] = headline.get(key)
        headline[key] = pairs_of_key["median"]
    return {
        "unit": unit,
        "metric": metric,
        "targets": targets,
        "failed": failed,
        "same_bytes": same,
        "connections": levels,
        "points": points,
        "ratios": ratios,
        "headline": headline,
        "paired": measured,  # every checked ratio's pairs, by its key
        "checks": [
            check(
                f"{figure} (c={top}{', median of paired runs' if paired_key else ''})",
                headline.get(key),
                op,
                bound,
                by_level={r["connections"]: r.get(key) for r in ratios},
                paired={top: headline.get(key)} if paired_key else None,
            )
            for figure, key, op, bound in checks
            for paired_key in [key in measured]
        ],
        "columns": columns,
        "rows": rows,
        "plot": True,
    }
