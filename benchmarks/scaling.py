"""The gateway's proxied throughput at two concurrency levels, in ABBA rounds.

The proxy scenario's "throughput at 256 connections >= at 8" is three pairs inside a long
run; on a shared VM one level alone moves by half from minute to minute. This measures
only that figure, for a change to the request path: one gateway (the proxy scenario's
configuration) in front of the scenario's upstream, and rounds of four short wrk runs at
the low, high, high and low level (drift within a round cancels), each round's ratio of
the two means, by wall clock and per second of the gateway's own CPU time (what the
hypervisor steals is not counted).

Run: ``python -m benchmarks.scaling [--rounds 6] [--levels 8 256] [--duration 3] [--stream]``
(needs wrk; about rounds x 4 x duration seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import Context, Server, ServerError
from benchmarks.load import have_wrk, wrk_run
from benchmarks.payloads import PROXY_MODEL, chat_body


def _cpu_seconds(server: Server) -> float:
    assert server.proc is not None
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    rounds: int, low: int, high: int, duration: float, stream: bool, out: Path
) -> list[dict[str, float]]:
    levels = [low, high]
    ctx = Context(duration=duration, connections=levels, quick=False, out_dir=out, work_dir=out)
    upstream = ctx.server("upstream", cpus=ctx.load_cpus)
    gateway = ctx.server("gateway", upstream_port=upstream.port)
    body = chat_body(PROXY_MODEL, stream=stream)
    url = gateway.url + "/v1/chat/completions"
    rows = []
    try:
        upstream.start()
        upstream.wait_ready()
        gateway.start()
        gateway.wait_ready()
        wrk_run(url, [body], connections=high, duration=2, cpus=ctx.load_cpus)  # pools grown
        for n in range(rounds):
            got: dict[int, list[tuple[float, float]]] = {low: [], high: []}
            for level in (low, high, high, low):
                before = _cpu_seconds(gateway)
                run = wrk_run(url, [body], connections=level, duration=duration, cpus=ctx.load_cpus)
                used = _cpu_seconds(gateway) - before
                got[level].append((run["rps"], run["requests"] / max(used, 1e-9)))
            lo, hi = (statistics.fmean(r for r, _ in got[c]) for c in (low, high))
            lo_cpu, hi_cpu = (statistics.fmean(p for _, p in got[c]) for c in (low, high))
            rows.append({"low": lo, "high": hi, "ratio": hi / lo, "cpu_ratio": hi_cpu / lo_cpu})
            print(
                f"round {n + 1}: c={low} {lo:,.0f} req/s, c={high} {hi:,.0f} req/s,"
                f" ratio {hi / lo:.3f}, per CPU-second {hi_cpu / lo_cpu:.3f}",
                flush=True,
            )
    finally:
        gateway.stop()
        upstream.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--levels", type=int, nargs=2, default=[8, 256], metavar=("LOW", "HIGH"))
    parser.add_argument("--duration", type=float, default=3.0, help="seconds a run")
    parser.add_argument("--stream", action="store_true", help="20-chunk streams, not JSON")
    args = parser.parse_args(argv)
    if not have_wrk():
        print("needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    low, high = args.levels
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        try:
            rows = measure(args.rounds, low, high, args.duration, args.stream, Path(tmp))
        except ServerError as exc:
            print(exc, file=sys.stderr)
            return 1
    ratio = statistics.median(r["ratio"] for r in rows)
    cpu = statistics.median(r["cpu_ratio"] for r in rows)
    print(f"c={high}/c={low}: median {ratio:.3f}, per server CPU-second {cpu:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
