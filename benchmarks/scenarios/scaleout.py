"""scaleout: chat with router state in Redis vs in memory, and a response-cache hit vs
the bare Starlette baseline's answer.

Both gateway runs give ``bench-chat`` an rpm limit far above the load, so the router
checks it on every request (in memory, or through Redis: one round trip); without a
limit the router never consults its state and Redis would cost nothing. The cache run
answers every request after the first from its local LRU; ``cache-redis`` (no target)
from a Redis cache, to show what the ``GET`` adds.

Targets are read as the median over rounds of each round's ratio (the two runs of a
ratio measured back to back), so one noisy moment on a shared machine moves one round,
not the figure. A redis run whose gateway fell back to local counters (a Redis call
slower than ``redis_timeout``) did not measure Redis: ``gateway_redis_outages_total``
after the run must be 0.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

import yaml

from ..harness import REPO, Context, Server, ServerError, free_port, gateway_config, http_request
from ._common import check, fmt, headline_level, ratio

NAME = "scaleout"
TITLE = "scaleout: chat with redis_url vs in memory; a cache hit vs the baseline (wrk)"


def _redis(ctx: Context) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerError("redis-server not found: apt-get install -y redis-server")
    port = free_port()
    cpus = ctx.load_cpus
    proc = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(ctx.work_dir)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # On the load generator's CPU, as Redis would be on a machine of its own: the
        # gateway's CPU is then measured alone, as with the in-memory run.
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise ServerError("redis-server did not start")


def _gateway(ctx: Context, name: str, extra: dict[str, Any]) -> Server:
    port = free_port()
    config = gateway_config()
    for entry in config["model_list"]:
        if entry["model_name"] == "bench-chat":
            entry["litellm_params"]["rpm"] = 10**9
    for section, values in extra.items():
        config.setdefault(section, {}).update(values)
    path = ctx.work_dir / f"gateway-{name}-{port}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "gateway", "--config", str(path), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning"]
    server = Server(
        name,
        argv,
        port,
        ctx.work_dir / f"gateway-{name}-{port}.log",
        env={"PYTHONPATH": str(REPO)},
        cpus=ctx.server_cpus,
    )
    ctx.servers.append(server)
    server.start()
    server.wait_ready(30)
    return server


def run(ctx: Context) -> dict[str, Any]:
    from ..payloads import chat_body

    redis, redis_port = _redis(ctx)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    try:
        servers = {
            "memory": _gateway(ctx, "memory", {}),
            "redis": _gateway(ctx, "redis", {"router_settings": {"redis_url": redis_url}}),
            "cache-hit": _gateway(ctx, "cache-hit", {"litellm_settings": {"cache": True}}),
            "baseline": ctx.start("baseline"),
            "cache-redis": _gateway(
                ctx,
                "cache-redis",
                {
                    "router_settings": {"redis_url": redis_url},
                    "litellm_settings": {"cache": True, "cache_params": {"type": "redis"}},
                },
            ),
        }
        body = chat_body("bench-chat")
        level = headline_level(ctx.connections)
        for server in servers.values():
            ctx.throughput(server, [body], level, duration=1 if not ctx.quick else 0.2)
        points: list[dict[str, Any]] = []
        for round_ in range(1 if ctx.quick else 3):  # interleaved
            for name, server in servers.items():
                point = ctx.throughput(server, [body], level)
                point["target"] = name
                point["round"] = round_
                points.append(point)
                ctx.echo(
                    f"  {NAME:<9} c={level:<4} {name:<11} {point['rps']:>10,.0f} req/s"
                    f"  p50 {point['p50_ms']:.2f} ms  p99 {point['p99_ms']:.2f} ms"
                    f"  errors {point['errors']}"
                )
        outages = _outages(servers["redis"].port)
    finally:
        ctx.stop_all()
        redis.kill()
        redis.wait(timeout=10)

    def median_ratio(a: str, b: str) -> float | None:
        rps = {(p["target"], p["round"]): p["rps"] for p in points}
        ratios = [ratio(rps[a, r], rps[b, r]) for r in sorted({p["round"] for p in points})]
        known = sorted(x for x in ratios if x is not None)
        return known[len(known) // 2] if known else None

    redis_vs_memory = median_ratio("redis", "memory")
    hit_vs_baseline = median_ratio("cache-hit", "baseline")
    redis_hit_vs_baseline = median_ratio("cache-redis", "baseline")
    return {
        "targets": list(servers),
        "failed": {},
        "connections": [level],
        "points": points,
        "headline": {
            "redis/memory": redis_vs_memory,
            "cache-hit/baseline": hit_vs_baseline,
            "cache-redis/baseline": redis_hit_vs_baseline,
            "redis outages": outages,
        },
        "checks": [
            check(f"req/s redis_url / in memory (c={level})", redis_vs_memory, ">=", 0.7),
            check(f"req/s cache hit / baseline (c={level})", hit_vs_baseline, ">=", 0.9),
            check(
                "Redis fallbacks in the redis run (gateway_redis_outages_total)", outages, "<=", 0
            ),
        ],
        "columns": ["target", "round", "req/s", "p50 ms", "p99 ms", "errors"],
        "rows": [
            [
                p["target"],
                fmt(p["round"]),
                fmt(p["rps"]),
                fmt(p["p50_ms"]),
                fmt(p["p99_ms"]),
                fmt(p["errors"]),
            ]
            for p in points
        ],
    }


def _outages(port: int) -> float | None:
    """``gateway_redis_outages_total`` of the gateway on ``port`` (None: not on /metrics)."""
    status, text = http_request(port, "GET", "/metrics")
    match = re.search(rb"^gateway_redis_outages_total (\S+)$", text, re.M)
    return float(match[1]) if status == 200 and match else None
