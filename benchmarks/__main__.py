"""``python -m benchmarks run [scenario ...]``: see benchmarks/README.md."""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import load, report
from .harness import SCENARIOS, Context, litellm_version, machine, now_stamp
from .scenarios import load as load_scenario

RESULTS = Path(__file__).resolve().parent / "results"


def _levels(values: list[str]) -> list[int]:
    levels = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                number = int(part)
                if number < 1:
                    raise argparse.ArgumentTypeError("connections must be >= 1")
                levels.append(number)
    return sorted(set(levels))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the scenarios")
    run = sub.add_parser("run", help="run scenarios (all by default)")
    run.add_argument("scenarios", nargs="*", metavar="scenario", help=", ".join(SCENARIOS))
    run.add_argument("--quick", action="store_true", help="smoke run: a few seconds per scenario")
    run.add_argument("--litellm", metavar="PATH", help="a LiteLLM proxy executable to compare")
    run.add_argument("--duration", type=float, help="seconds per measured point (default 5)")
    run.add_argument(
        "--connections",
        nargs="+",
        metavar="N",
        help="concurrency levels (default 1,8,32,64; proxy 1,8,32,64,256)",
    )
    run.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    run.add_argument("--soak-duration", type=float, help="seconds (default 180; --quick: 1)")
    run.add_argument(
        "--memory-requests",
        type=int,
        help="requests of the memory runs (default 100,000; --quick: 2,000)",
    )
    run.add_argument("--startup-runs", type=int, help="default 5 (--quick: 1)")
    run.add_argument(
        "--load",
        choices=("auto", "wrk", "client"),
        default="auto",
        help="throughput load generator (auto: wrk when installed)",
    )
    run.add_argument(
        "--before",
        metavar="REF",
        help="chat and stream also measure the gateway of this git commit (target before)",
    )
    run.add_argument(
        "--after",
        metavar="REF",
        help="the gateway target is this git commit's gateway, not the checkout's",
    )
    run.add_argument("--wrk-threads", type=int, default=1)
    run.add_argument(
        "--no-pin", action="store_true", help="do not pin servers to CPU 0 and load to CPU 1"
    )
    run.add_argument("--no-plot", action="store_true", help="JSON and markdown only")
    run.add_argument(
        "--update-readme", action="store_true", help="put the headline table in the README"
    )
    return parser


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds, so every started server is stopped


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if args.command == "list":
        for name in SCENARIOS:
            print(f"{name:<10} {load_scenario(name).TITLE}")
        return 0
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
        return 2
    if args.litellm and not Path(args.litellm).exists():
        print(f"--litellm {args.litellm}: no such file")
        return 2
    tool = args.load
    if tool in ("auto", "wrk") and not load.have_wrk():
        print(load.WRK_INSTALL)
        if tool == "wrk":
            return 2
        print("Falling back to the asyncio client: its throughput figures are not wrk's.")
        tool = "client"
    elif tool == "auto":
        tool = "wrk"
    quick = args.quick
    default_levels = [8] if quick else [1, 8, 32, 64]
    connections = _levels(args.connections) if args.connections else default_levels
    soak_duration = args.soak_duration or (1.0 if quick else 180.0)
    memory_requests = args.memory_requests or (2_000 if quick else 100_000)
    startup_runs = args.startup_runs or (1 if quick else 5)
    ctx = Context(
        duration=args.duration or (1.0 if quick else 5.0),
        connections=connections,
        quick=quick,
        out_dir=args.out,
        connections_given=bool(args.connections),
        litellm=str(Path(args.litellm).resolve()) if args.litellm else None,
        tool=tool,
        pin=not args.no_pin,
        wrk_threads=args.wrk_threads,
        soak_duration=soak_duration,
        memory_requests=memory_requests,
        startup_runs=startup_runs,
    )
    commits: dict[str, str] = {}
    for option, target in (("before", "before"), ("after", "gateway")):
        ref = getattr(args, option)
        if ref:
            try:
                commits[option] = ctx.use_commit(target, ref)
            except (OSError, subprocess.CalledProcessError):
                print(f"--{option} {ref}: not a commit of this repository")
                return 2
    pinning = (
        f"servers pinned to CPUs {sorted(ctx.server_cpus)}, load to {sorted(ctx.load_cpus)}"
        if ctx.server_cpus and ctx.load_cpus
        else "no CPU pinning"
    )
    load_name = f"wrk -t{args.wrk_threads}" if tool == "wrk" else "asyncio client"
    results: dict[str, Any] = {
        "schema": 1,
        "date": now_stamp(),
        "command": "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv),
        "quick": quick,
        "machine": machine(),
        "settings": {
            "duration_s": ctx.duration,
            "connections": connections,
            "load_generator": load_name + " (per-chunk timing: asyncio client)",
            "pinning": pinning,
            "commits": commits,
            "soak_duration_s": soak_duration,
            "memory_requests": memory_requests,
        },
        "scenarios": {},
    }
    if ctx.litellm:
        results["machine"]["litellm"] = litellm_version(ctx.litellm)
    print(f"benchmarks: {', '.join(names)}; {load_name}; {pinning}; work files in {ctx.work_dir}")
    failed = False
    for name in names:
        module = load_scenario(name)
        print(f"[{name}] {module.TITLE}")
        started = time.perf_counter()
        try:
            outcome = module.run(ctx)
        except Exception as exc:
            traceback.print_exc()
            outcome = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
        finally:
            ctx.stop_all()
        if ctx.log_errors:
            outcome["log_errors"] = dict(ctx.log_errors)
            ctx.log_errors.clear()
            failed = True
        outcome["title"] = module.TITLE
        outcome["elapsed_s"] = round(time.perf_counter() - started, 1)
        if "gateway" in outcome.get("failed", {}):
            failed = True
        results["scenarios"][name] = outcome
    if ctx.stolen:
        ordered = sorted(ctx.stolen)
        results["settings"]["stolen_pct"] = {
            "median": ordered[len(ordered) // 2],
            "max": ordered[-1],
            "runs": len(ordered),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d") + ("-quick" if quick else "")
    json_path, md_path, png_path = (args.out / f"{stem}{ext}" for ext in (".json", ".md", ".png"))
    report.write_json(results, json_path)
    text = report.markdown(results)
    drawn, note = (False, None) if args.no_plot else report.plot(results, png_path)
    if not drawn:
        png_path.unlink(missing_ok=True)  # never leave an older run's plot beside these
    png = png_path.name if drawn else None
    if png:
        text += f"\n![throughput and latency]({png})\n"
    md_path.write_text(text)
    print()
    print(text)
    if note:
        print(note)
    print(f"wrote {json_path}, {md_path}" + (f", {png_path}" if png else ""))
    if any(
        s.get("failed") or "error" in s or "log_errors" in s for s in results["scenarios"].values()
    ):
        print(f"server logs and generated configs kept in {ctx.work_dir}")
    else:
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
    if args.update_readme:
        report.update_readme(Path(__file__).with_name("README.md"), results, md_path.name, png)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
