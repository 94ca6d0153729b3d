"""Results as JSON, a markdown table and a PNG plot, all made from the JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .scenarios._common import fmt

__all__ = ["markdown", "plot", "scenario_notes", "update_readme", "write_json"]

_MATPLOTLIB_MISSING = (
    "matplotlib is not installed, so no plot was drawn: "
    "`pip install -e '.[bench]'` (or `pip install matplotlib`), then run again"
)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _met(ok: bool | None) -> str:
    return "not measured" if ok is None else "yes" if ok else "**no**"


def _number(value: Any) -> str:
    digits = 3 if isinstance(value, float) and abs(value) < 10 else 1
    return fmt(value, digits)


def headline_table(results: dict[str, Any]) -> list[str]:
    """Every target of every scenario; figures measured at several concurrency levels
    are listed at each one ("c=8 0.91 · c=32 0.93"), a median's runs as "runs 0.98 · 1.02",
    medians of paired runs first ("paired c=32 0.91; single runs c=1 ...")."""
    rows = []
    for name, scenario in results["scenarios"].items():
        if "error" in scenario:
            rows.append([name, "scenario failed", scenario["error"][:80], "", "", ""])
            continue
        for item in scenario.get("checks", []):
            levels = " · ".join(f"c={c} {_number(v)}" for c, v in item.get("by_level", {}).items())
            if item.get("runs"):
                levels = "runs " + " · ".join(_number(v) for v in item["runs"])
            if item.get("paired"):
                medians = " · ".join(f"c={c} {_number(v)}" for c, v in item["paired"].items())
                levels = f"paired {medians}; single runs {levels}"
            rows.append(
                [
                    name,
                    item["figure"],
                    _number(item["value"]),
                    item["target"],
                    _met(item["ok"]),
                    levels,
                ]
            )
    return _table(["scenario", "figure", "measured", "target", "met", "at each level"], rows)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    s = results["settings"]
    lines = [
        f"# Benchmark results, {results['date']}",
        "",
        f"- Command: `{results['command']}`",
        f"- Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gb']} GB RAM, {m['os']},"
        f" Python {m['python']}; {versions}; {m['wrk'] or 'wrk not installed'};"
        + (f" LiteLLM {m['litellm']};" if m.get("litellm") else "")
        + f" commit {m['commit']}",
        f"- Load: {s['load_generator']}; {s['pinning']}; {s['duration_s']:g} s per point;"
        f" one uvicorn worker per server (uvloop, httptools, no access log).",
        *(
            f"- CPU time the hypervisor took from the server CPUs during the throughput runs"
            f" (steal): median {st['median']:g}%, worst {st['max']:g}% ({st['runs']} runs);"
            f" a figure measured under much of it is the machine's, not the server's."
            for st in [s.get("stolen_pct")]
            if st
        ),
        *(
            f"- Target {'before' if which == 'before' else 'gateway'}: the gateway of"
            f" commit {commit}"
            for which, commit in s.get("commits", {}).items()
        ),
        "",
        "## Targets met",
        "",
        *headline_table(results),
    ]
    for name, scenario in results["scenarios"].items():
        lines += ["", f"## {scenario.get('title', name)}", ""]
        if "error" in scenario:
            lines.append(f"Failed: {scenario['error']}")
            continue
        lines += _table(scenario["columns"], scenario["rows"])
        for table in scenario.get("tables", []):
            lines += ["", f"{table['title']}:", "", *_table(table["columns"], table["rows"])]
        notes = scenario_notes(scenario)
        if notes:
            lines += ["", *notes]
    return "\n".join(lines) + "\n"


def scenario_notes(scenario: dict[str, Any]) -> list[str]:
    """The lines under a scenario's table: same bytes, targets that did not run or that
    logged errors."""
    notes = []
    same = scenario.get("same_bytes")
    if same:
        listed = ", ".join(f"{t} {'yes' if ok else '**no**'}" for t, ok in same.items())
        notes.append(f"Same bytes as the gateway (ids masked): {listed}.")
    for target, message in scenario.get("failed", {}).items():
        notes.append(f"{target} did not run: {message[:200]}")
    for target, found in scenario.get("log_errors", {}).items():
        notes.append(f"**{target} logged {len(found)} error(s)**: {found[0][:200]}")
    return notes


def plot(results: dict[str, Any], path: Path) -> tuple[bool, str | None]:
    """Throughput and p50/p99 latency against concurrency: (drawn, note for the user)."""
    scenarios = []
    for name, scenario in results["scenarios"].items():
        if scenario.get("plot"):
            scenarios.append((name, scenario))
        scenarios += [(panel["name"], panel) for panel in scenario.get("panels", [])]
    scenarios = [(name, panel) for name, panel in scenarios if panel.get("points")]
    if not scenarios:
        return False, None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False, _MATPLOTLIB_MISSING
    fig, axes = plt.subplots(
        2, len(scenarios), figsize=(5.2 * len(scenarios), 8), squeeze=False, constrained_layout=True
    )
    colors = {
        "gateway": "C0",
        "baseline": "C1",
        "raw": "C2",
        "litellm": "C3",
        "forwarder": "C4",
        "upstream": "C5",
    }
    for col, (name, scenario) in enumerate(scenarios):
        top, bottom = axes[0][col], axes[1][col]
        metric = scenario["metric"]
        for target in scenario["targets"]:
            points = sorted(
                (p for p in scenario["points"] if p["target"] == target),
                key=lambda p: p["connections"],
            )
            if not points:
                continue
            x = [p["connections"] for p in points]
            color = colors.get(target)
            top.plot(x, [p[metric] for p in points], "o-", color=color, label=target)
            bottom.plot(x, [p["p50_ms"] for p in points], "o-", color=color, label=f"{target} p50")
            bottom.plot(x, [p["p99_ms"] for p in points], "s--", color=color, label=f"{target} p99")
        top.set_title(name)
        top.set_ylabel(scenario["unit"])
        top.set_ylim(bottom=0)
        bottom.set_ylabel("latency ms (log)")
        bottom.set_yscale("log")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(scenario["connections"], [str(c) for c in scenario["connections"]])
            ax.minorticks_off() if ax is top else None
            ax.set_xlabel("connections")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"throughput and latency against concurrency, {results['date']}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True, None


_MARKERS = ("<!-- results:begin -->", "<!-- results:end -->")


def update_readme(readme: Path, results: dict[str, Any], md_name: str, png: str | None) -> None:
    """Put the latest headline table (and plot) between the README's result markers."""
    text = readme.read_text()
    begin, end = _MARKERS
    if begin not in text or end not in text:
        return
    block = [
        begin,
        f"Latest run: {results['date']}, `{results['command']}` "
        f"(full tables: [results/{md_name}](results/{md_name})).",
        "",
        *headline_table(results),
    ]
    if png:
        block += ["", f"![throughput and latency](results/{png})"]
    block.append(end)
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    readme.write_text(pattern.sub(lambda _: "\n".join(block), text, count=1))
