"""Work per proxied request by concurrency: the real server under callgrind, wrk in front.

The proxy scenario's "throughput at 256 connections >= at 8" compares two wall-clock
figures taken seconds apart on a shared machine; this says whether the proxy *does more
per request* as connections rise. The target (gateway or forwarder, the proxy scenario's
configuration) runs as its own server under valgrind's callgrind with a cache simulation
(first level 32 KiB, last level ``--l2`` bytes: this machine's per-core L2 by default), in
front of the proxy scenario's upstream; wrk sends a fixed number of JSON requests at each
level. Printed per level: instructions a request, and simulated misses of the last level a
request (a miss goes to L3 or memory: the cost that instruction counts do not show).

Run: ``python -m benchmarks.concurrency [gateway|forwarder] [--levels 8 256]`` (needs
valgrind and wrk; a few minutes: callgrind runs the server ~50x slower). A level's first
requests after a larger one find the pools grown: every level is measured after a warm-up
at the largest. At 256 connections wrk reports a few dozen errors: its 30-s timeout, under
callgrind's slowdown; only answered requests are counted.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Context, Server, ServerError
from benchmarks.load import have_wrk, wrk_run
from benchmarks.payloads import PROXY_MODEL, chat_body

L2_BYTES = 2 * 1024 * 1024
# callgrind runs the server ~50x slower: the first answer, and 256 answers in flight.
READY_TIMEOUT_S = 300.0


def _totals(dump: Path) -> dict[str, int]:
    text = dump.read_text()
    events = re.search(r"^events: (.*)$", text, re.M)
    totals = re.search(r"^(?:summary|totals): (.*)$", text, re.M)
    if events is None or totals is None:
        raise SystemExit(f"{dump}: no totals in the callgrind dump")
    return dict(zip(events.group(1).split(), map(int, totals.group(1).split()), strict=False))


def _control(server: Server, *args: str) -> None:
    assert server.proc is not None
    subprocess.run(
        ["callgrind_control", *args, str(server.proc.pid)], check=True, capture_output=True
    )


def measure(
    target: str, levels: list[int], requests: int, l2: int, out: Path
) -> list[dict[str, float]]:
    ctx = Context(duration=1, connections=levels, quick=False, out_dir=out, work_dir=out)
    upstream = ctx.server("upstream", cpus=ctx.load_cpus)
    server = ctx.server(target, upstream_port=upstream.port)
    server.argv = [
        "valgrind",
        "--tool=callgrind",
        "--cache-sim=yes",
        f"--LL={l2},16,64",
        f"--callgrind-out-file={out}/callgrind.{target}.%p",
        *server.argv,
    ]
    url = server.url + "/v1/chat/completions"
    body = chat_body(PROXY_MODEL)
    rows = []
    try:
        upstream.start()
        upstream.wait_ready()
        server.start()
        server.wait_ready(READY_TIMEOUT_S)
        load = ctx.load_cpus
        wrk_run(
            url, [body], connections=max(levels), duration=600, requests=requests // 2, cpus=load
        )
        for level in levels:
            _control(server, "--zero")
            run = wrk_run(
                url, [body], connections=level, duration=600, requests=requests, cpus=load
            )
            _control(server, "--dump")
            time.sleep(1.0)  # the dump is written by the server, after the call returns
            dump = max(out.glob(f"callgrind.{target}.*.*"), key=lambda p: p.stat().st_mtime)
            totals, answered = _totals(dump), run["requests"]
            misses = sum(totals.get(e, 0) for e in ("ILmr", "DLmr", "DLmw"))
            rows.append(
                {
                    "connections": level,
                    "requests": answered,
                    "errors": run["errors"],
                    "instructions": totals["Ir"] / answered,
                    "l2_misses": misses / answered,
                }
            )
            print(
                f"{target:<9} c={level:<4} {answered:>6,} answers (errors {run['errors']}):"
                f" {totals['Ir'] / answered:>9,.0f} instructions,"
                f" {misses / answered:>6,.0f} L2 misses a request",
                flush=True,
            )
    finally:
        server.stop()
        upstream.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.concurrency")
    parser.add_argument("target", nargs="?", default="gateway", choices=("gateway", "forwarder"))
    parser.add_argument("--levels", type=int, nargs="+", default=[8, 256])
    parser.add_argument("--requests", type=int, default=3000, help="measured, per level")
    parser.add_argument("--l2", type=int, default=L2_BYTES, help="simulated last level, bytes")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing or not have_wrk():
        print(
            f"needs {', '.join(missing) or 'wrk'}: apt-get install -y valgrind wrk", file=sys.stderr
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-cg-") as tmp:
        try:
            measure(args.target, args.levels, args.requests, args.l2, Path(tmp))
        except ServerError as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
