"""startup: process start to the first 200 answer to a chat request (median of runs)."""

from __future__ import annotations

import statistics
from typing import Any

from ..harness import Context, ServerError
from ._common import check, fmt, ratio

NAME = "startup"
TITLE = "startup: process start to first 200 (seconds, median of runs)"


def run(ctx: Context) -> dict[str, Any]:
    targets = ctx.targets("gateway", "baseline", "raw", "litellm")
    runs = ctx.startup_runs
    times: dict[str, list[float]] = {t: [] for t in targets}
    failed: dict[str, str] = {}
    for _ in range(runs):
        for target in targets:  # interleaved: one start of each, then again
            if target in failed:
                continue
            server = ctx.server(target)
            try:
                server.start()
                times[target].append(round(server.wait_ready(120), 4))
            except ServerError as exc:
                failed[target] = str(exc)
                ctx.echo(f"  ! {target} did not start: {exc}")
            finally:
                server.stop()
    summary = {
        t: {
            "runs": v,
            "median_s": round(statistics.median(v), 4),
            "min_s": min(v),
            "max_s": max(v),
        }
        for t, v in times.items()
        if v
    }
    for target, figures in summary.items():
        ctx.echo(f"  {NAME:<9} {target:<9} median {figures['median_s']:.3f} s over {runs} runs")

    def median(target: str) -> float | None:
        return summary[target]["median_s"] if target in summary else None

    headline = {
        "gateway_median_s": median("gateway"),
        "gateway/baseline": ratio(median("gateway"), median("baseline")),
        "gateway/raw": ratio(median("gateway"), median("raw")),
    }
    if "litellm" in targets:
        headline["gateway/litellm"] = ratio(median("gateway"), median("litellm"))
    rows = [
        [t, fmt(s["median_s"], 3), fmt(s["min_s"], 3), fmt(s["max_s"], 3), str(len(s["runs"]))]
        for t, s in summary.items()
    ]
    return {
        "targets": targets,
        "failed": failed,
        "summary": summary,
        "headline": headline,
        "checks": [check("gateway median s", median("gateway"), "<", 0.5)],
        "columns": ["target", "median s", "min s", "max s", "runs"],
        "rows": rows,
    }
