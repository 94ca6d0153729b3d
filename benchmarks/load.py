"""Load generators, each run as its own process: ``wrk`` and ``benchmarks.client``.

``wrk`` (a C load generator; Debian/Ubuntu package ``wrk``) measures throughput and
latency percentiles. It runs with one thread (``-t1``) on the load CPU: on a 2-core
machine the server gets one core and the load generator the other. POST bodies and the
JSON summary come from a Lua script written for each run. The asyncio client measures
per-chunk timing and stands in for ``wrk`` when it is missing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["WRK_INSTALL", "LoadError", "client_run", "have_wrk", "wrk_run", "wrk_version"]

WRK_INSTALL = (
    "wrk is not installed: `sudo apt-get install -y wrk` (Debian/Ubuntu), "
    "`brew install wrk` (macOS), or build https://github.com/wg/wrk"
)
REPO = Path(__file__).resolve().parent.parent


class LoadError(RuntimeError):
    """A load generator failed to run or to report."""


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk_version() -> str | None:
    if not have_wrk():
        return None
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].split("[")[0].strip() if text else "wrk"


def _lua_string(data: bytes) -> str:
    text = data.decode()
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def _lua_script(
    bodies: Sequence[bytes], limit: int, flag: str, headers: Mapping[str, str] | None = None
) -> str:
    """wrk script: POST ``bodies`` (cycled), print a JSON summary.

    With ``limit``, the thread stops after that many answers and creates the file
    ``flag``; wrk itself only ends at its duration or on SIGINT, which the caller sends
    when it sees the file (wrk still prints its summary then). Meanwhile it writes the
    count of answers to ``flag + ".count"`` every 1,000 answers, for progress lines.
    """
    lines = [
        "-- written by benchmarks/load.py for one run",
        "local bodies = {" + ", ".join(_lua_string(b) for b in bodies) + "}",
        'wrk.method = "POST"',
        "wrk.body = bodies[1]",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    for name, value in (headers or {}).items():
        # "[ [=[...]=] ]": a long string as a table index needs the spaces.
        lines.append(f"wrk.headers[ {_lua_string(name.encode())} ] = {_lua_string(value.encode())}")
    if len(bodies) > 1:
        # A request() function makes wrk build each request in Lua: only for mixes.
        lines += [
            "local reqs, i = {}, 0",
            "function init(args)",
            "  for k, body in ipairs(bodies) do",
            '    reqs[k] = wrk.format("POST", nil, nil, body)',
            "  end",
            "end",
            "function request()",
            "  i = i % #reqs + 1",
            "  return reqs[i]",
            "end",
        ]
    if limit > 0:
        lines += [
            "local count = 0",
            "function response(status, headers, body)",
            "  count = count + 1",
            "  if count % 1000 == 0 then",
            f"    local p = io.open({_lua_string((flag + '.count').encode())}, 'w')",
            "    p:write(count)",
            "    p:close()",
            "  end",
            f"  if count == {limit} then",
            f"    local f = io.open({_lua_string(flag.encode())}, 'w')",
            "    f:write('done')",
            "    f:close()",
            "    wrk.thread:stop()",
            "  end",
            "end",
        ]
    lines += [
        "function done(summary, latency, requests)",
        "  local e = summary.errors",
        "  io.write(string.format(",
        '    \'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,\'',
        '    .. \'"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%.1f,\'',
        '    .. \'"p90_us":%.1f,"p99_us":%.1f,"max_us":%.1f,"mean_us":%.1f}\\n\',',
        "    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,",
        "    e.status, e.timeout, latency:percentile(50), latency:percentile(90),",
        "    latency:percentile(99), latency.max, latency.mean))",
        "end",
    ]
    return "\n".join(lines) + "\n"


def _affinity(cpus: set[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


def _count(path: Path | None) -> int | None:
    try:
        return int(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return 0


def _tick_wait(
    proc: subprocess.Popen[str],
    on_tick: Callable[[int | None], None] | None,
    flag: Path | None = None,
    stop_at: float | None = None,
) -> None:
    """Wait for ``proc``, calling ``on_tick`` about once a second meanwhile (with the
    answers so far when wrk counts them); once the file ``flag`` exists or ``stop_at``
    (a ``perf_counter`` time) has passed, interrupt it (SIGINT: wrk stops and reports)."""
    last = time.perf_counter()
    interrupted = False
    poll = 0.02 if flag is not None or stop_at is not None else 1.0
    counter = flag.with_name(flag.name + ".count") if flag is not None else None
    while True:
        try:
            proc.wait(timeout=poll)
            return
        except subprocess.TimeoutExpired:
            pass
        now = time.perf_counter()
        done = (flag is not None and flag.exists()) or (stop_at is not None and now >= stop_at)
        if done and not interrupted:
            proc.send_signal(signal.SIGINT)
            interrupted = True
        if on_tick is not None and now - last >= 1.0:
            last = now
            on_tick(_count(counter))


def wrk_run(
    url: str,
    bodies: Sequence[bytes],
    *,
    connections: int,
    duration: float,
    requests: int = 0,
    threads: int = 1,
    cpus: set[int] | None = None,
    on_tick: Callable[[int | None], None] | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One wrk run; ``requests`` > 0 stops after that many answers (per thread).

    wrk counts its duration in whole seconds: a fractional one is ended by SIGINT."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        flag = Path(script.name + ".done")
        script.write(_lua_script(bodies, requests, str(flag), headers))
    seconds = max(1, math.ceil(duration))
    stop_at = None if seconds == duration else time.perf_counter() + duration
    argv = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "-s",
        script.name,
        url,
    ]
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_affinity(cpus),
        )
        _tick_wait(proc, on_tick, flag if requests > 0 else None, stop_at)
        out, err = proc.communicate()
    finally:
        os.unlink(script.name)
        flag.unlink(missing_ok=True)
        flag.with_name(flag.name + ".count").unlink(missing_ok=True)
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise LoadError(f"wrk failed ({' '.join(argv)}): {(err or out).strip()[-500:]}")
    raw = json.loads(line[len("BENCH_JSON ") :])
    elapsed = raw["duration_us"] / 1e6
    kinds = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
    return {
        "tool": "wrk",
        "connections": connections,
        "duration_s": round(elapsed, 3),
        "requests": raw["requests"],
        "errors": sum(kinds.values()),
        "error_kinds": kinds,
        "rps": round(raw["requests"] / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(raw["p50_us"] / 1000, 3),
        "p90_ms": round(raw["p90_us"] / 1000, 3),
        "p99_ms": round(raw["p99_us"] / 1000, 3),
        "max_ms": round(raw["max_us"] / 1000, 3),
    }


def client_run(
    port: int,
    path: str,
    bodies: Sequence[bytes],
    *,
    connections: int,
    duration: float,
    requests: int = -1,
    stream: bool = False,
    drop_after: int = 0,
    cpus: set[int] | None = None,
    on_tick: Callable[[int | None], None] | None = None,
    headers: Mapping[str, str] | None = None,
    rate: float = 0.0,
) -> dict[str, Any]:
    """One run of the asyncio client in its own process (``rate`` > 0: paced, that many
    requests a second in all)."""
    files = []
    for body in bodies:
        with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as file:
            file.write(body)
        files.append(file.name)
    argv = [
        sys.executable,
        "-m",
        "benchmarks.client",
        "--port",
        str(port),
        "--path",
        path,
        "--connections",
        str(connections),
        "--duration",
        str(duration),
        "--requests",
        str(requests),
    ]
    for name in files:
        argv += ["--body-file", name]
    if stream:
        argv.append("--stream")
    if drop_after:
        argv += ["--drop-after", str(drop_after)]
    if rate > 0:
        argv += ["--rate", str(rate)]
    for name, value in (headers or {}).items():
        argv += ["--header", f"{name}: {value}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_affinity(cpus),
        )
        _tick_wait(proc, on_tick)
        out, err = proc.communicate()
    finally:
        for name in files:
            os.unlink(name)
    if proc.returncode != 0 or not out.strip():
        raise LoadError(f"client failed after {time.perf_counter() - started:.1f} s: {err[-500:]}")
    return json.loads(out.strip().splitlines()[-1])
