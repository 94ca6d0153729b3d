"""The gateway's proxied throughput at two concurrency levels, in ABBA rounds.

The proxy scenario's "throughput at 256 connections >= at 8" is three pairs inside a long
run; on a shared VM one level alone moves by half from minute to minute. This measures
only that figure, for a change to the request path: one gateway (the proxy scenario's
configuration) in front of the scenario's upstream, and rounds of four short wrk runs at
the low, high, high and low level (drift within a round cancels), each round's ratio of
the two means, by wall clock and per second of the server's own CPU time (what the
hypervisor steals is not counted).

``--targets`` adds servers measured in the same rounds (each level's runs back to back,
the targets' order alternating by round), to tell the gateway's own scaling from what a
server on this machine pays for more connections: ``gateway-chat`` (the gateway answering
from the chat scenario's in-process handler, no upstream), ``baseline`` (the chat
scenario's bare Starlette app on uvicorn) and ``raw`` (a bare ASGI callable on uvicorn,
also the proxy's upstream), each alone on the server CPU.

Run: ``python -m benchmarks.scaling [--rounds 6] [--levels 8 256] [--duration 3] [--stream]
[--targets gateway baseline ...]`` (needs wrk; about targets x rounds x 4 x duration seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import Context, Server, ServerError
from benchmarks.load import have_wrk, wrk_run
from benchmarks.payloads import PROXY_MODEL, chat_body

__all__ = ["TARGETS", "measure", "rounds"]

# target: (server, model of its JSON answer, model of its stream)
TARGETS = {
    "gateway": ("gateway", PROXY_MODEL, PROXY_MODEL),
    "gateway-chat": ("gateway", "bench-chat", "bench-stream"),
    "baseline": ("baseline", "bench-chat", "bench-stream"),
    "raw": ("raw", PROXY_MODEL, PROXY_MODEL),
}

# One run: (target, connections) -> (requests a second, requests a server CPU-second).
Run = Callable[[str, int], tuple[float, float]]


def _cpu_seconds(server: Server) -> float:
    assert server.proc is not None
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rounds(
    run: Run, targets: list[str], count: int, low: int, high: int
) -> dict[str, list[dict[str, float]]]:
    """``count`` rounds of low, high, high, low; at each, every target once (their order
    reversed every other round). Per target, each round's means and ratios."""
    rows: dict[str, list[dict[str, float]]] = {target: [] for target in targets}
    for n in range(count):
        order = targets if n % 2 == 0 else targets[::-1]
        got: dict[str, dict[int, list[tuple[float, float]]]] = {
            target: {low: [], high: []} for target in targets
        }
        for level in (low, high, high, low):
            for target in order:
                got[target][level].append(run(target, level))
        for target in targets:
            lo, hi = (statistics.fmean(r for r, _ in got[target][c]) for c in (low, high))
            lo_cpu, hi_cpu = (statistics.fmean(p for _, p in got[target][c]) for c in (low, high))
            rows[target].append(
                {"low": lo, "high": hi, "ratio": hi / lo, "cpu_ratio": hi_cpu / lo_cpu}
            )
    return rows


def measure(
    count: int, low: int, high: int, duration: float, stream: bool, out: Path, targets: list[str]
) -> dict[str, list[dict[str, float]]]:
    ctx = Context(
        duration=duration, connections=[low, high], quick=False, out_dir=out, work_dir=out
    )
    upstream = ctx.server("upstream", cpus=ctx.load_cpus)
    servers: dict[str, Server] = {}
    urls: dict[str, tuple[str, bytes]] = {}
    try:
        upstream.start()
        upstream.wait_ready()
        for target in targets:
            kind, json_model, stream_model = TARGETS[target]
            server = servers[target] = ctx.server(kind, upstream_port=upstream.port)
            server.start()
            server.wait_ready()
            body = chat_body(stream_model if stream else json_model, stream=stream)
            urls[target] = (server.url + "/v1/chat/completions", body)
            # The pools grown, the first requests' imports and allocations done.
            wrk_run(urls[target][0], [body], connections=high, duration=2, cpus=ctx.load_cpus)

        def run(target: str, connections: int) -> tuple[float, float]:
            url, body = urls[target]
            before = _cpu_seconds(servers[target])
            got = wrk_run(
                url, [body], connections=connections, duration=duration, cpus=ctx.load_cpus
            )
            used = _cpu_seconds(servers[target]) - before
            print(f"  {target} c={connections}: {got['rps']:,.0f} req/s", flush=True)
            return got["rps"], got["requests"] / max(used, 1e-9)

        return rounds(run, targets, count, low, high)
    finally:
        for server in servers.values():
            server.stop()
        upstream.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--levels", type=int, nargs=2, default=[8, 256], metavar=("LOW", "HIGH"))
    parser.add_argument("--duration", type=float, default=3.0, help="seconds a run")
    parser.add_argument("--stream", action="store_true", help="streams, not JSON")
    parser.add_argument(
        "--targets", nargs="+", choices=list(TARGETS), default=["gateway"], metavar="TARGET"
    )
    args = parser.parse_args(argv)
    if not have_wrk():
        print("needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    low, high = args.levels
    targets = list(dict.fromkeys(args.targets))
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        try:
            rows = measure(args.rounds, low, high, args.duration, args.stream, Path(tmp), targets)
        except ServerError as exc:
            print(exc, file=sys.stderr)
            return 1
    for target, found in rows.items():
        for n, row in enumerate(found, 1):
            print(
                f"{target} round {n}: c={low} {row['low']:,.0f} req/s, c={high}"
                f" {row['high']:,.0f} req/s, ratio {row['ratio']:.3f},"
                f" per CPU-second {row['cpu_ratio']:.3f}"
            )
    for target, found in rows.items():
        ratio = statistics.median(r["ratio"] for r in found)
        cpu = statistics.median(r["cpu_ratio"] for r in found)
        print(f"{target}: c={high}/c={low} median {ratio:.3f}, per server CPU-second {cpu:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
