"""keys: chat with a generated virtual key (cached) against the master key, and the spend
rows of every answered request written (SQLite, the embedded default)."""

from __future__ import annotations

import http.client
import json
import re
import sys
import time
from typing import Any

import yaml

from ..harness import REPO, Context, Server, ServerError, free_port, gateway_config
from ..payloads import chat_body
from ._common import check, fmt, headline_level, ratio

NAME = "keys"
TITLE = "keys: chat with a generated key vs the master key; spend rows written (wrk)"
MASTER = "sk-bench-master"


def _request(
    port: int, method: str, path: str, body: bytes = b"", key: str = MASTER
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class _KeyedServer(Server):
    """The gateway with keys on: it answers a chat only with a key."""

    def wait_ready(self, timeout: float = 60.0) -> float:
        assert self.proc is not None
        deadline = self.started_at + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"gateway exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                if _request(self.port, "POST", self.ready_path, self.ready_body)[0] == 200:
                    return time.perf_counter() - self.started_at
            except OSError:
                pass
            if time.perf_counter() > deadline:
                raise ServerError(f"gateway did not answer within {timeout:g} s")
            time.sleep(0.01)


def _start(ctx: Context) -> Server:
    port = free_port()
    config = gateway_config()
    for entry in config["model_list"]:
        if entry["model_name"] == "bench-chat":
            entry["model_info"] = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
    config["general_settings"] = {
        "master_key": MASTER,
        "database_url": f"sqlite:///{ctx.work_dir}/keys-{port}.db",
    }
    path = ctx.work_dir / f"gateway-keys-{port}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "gateway", "--config", str(path), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning"]
    server = _KeyedServer(
        "gateway",
        argv,
        port,
        ctx.work_dir / f"gateway-keys-{port}.log",
        env={"PYTHONPATH": str(REPO)},
        cpus=ctx.server_cpus,
    )
    ctx.servers.append(server)
    server.start()
    server.wait_ready(30)
    return server


def _metric(text: str, name: str, labels: str = "") -> float:
    # Label order is the renderer's (prometheus-client sorts them): match ours anywhere.
    where = r"\{[^}]*" + re.escape(labels) + r"[^}]*\}" if labels else r"(?:\{[^}]*\})?"
    pattern = re.escape(name) + where + r" ([0-9.e+]+)"
    return sum(float(v) for v in re.findall(pattern, text))


def _counts(port: int) -> dict[str, float]:
    text = _request(port, "GET", "/metrics")[1].decode()
    return {
        "answered": _metric(text, "gateway_requests_total", 'route="chat_completions"'),
        "written": _metric(text, "gateway_spend_logs_written_total"),
        "dropped": _metric(text, "gateway_spend_logs_dropped_total"),
        "buffered": _metric(text, "gateway_spend_logs_buffered"),
    }


def run(ctx: Context) -> dict[str, Any]:
    server = _start(ctx)
    status, made = _request(
        server.port,
        "POST",
        "/key/generate",
        json.dumps({"models": ["bench-chat"], "max_budget": 1e9, "rpm_limit": 10**7}).encode(),
    )
    if status != 200:
        raise ServerError(f"/key/generate answered {status}: {made[:200]!r}")
    key = json.loads(made)["key"]
    body = chat_body("bench-chat")
    level = headline_level(ctx.connections)
    auth = {
        "master": {"Authorization": f"Bearer {MASTER}"},
        "key": {"Authorization": f"Bearer {key}"},
    }
    ctx.throughput(server, [body], level, duration=1, headers=auth["key"])  # warm-up
    points: list[dict[str, Any]] = []
    measured_s = 0.0
    for _ in range(1 if ctx.quick else 2):  # interleaved: master, key, master, key
        for name, headers in auth.items():
            point = ctx.throughput(server, [body], level, headers=headers)
            point["target"] = name
            points.append(point)
            measured_s += point["duration_s"]
            ctx.echo(
                f"  {NAME:<9} c={level:<4} {name:<9} {point['rps']:>10,.0f} req/s"
                f"  p50 {point['p50_ms']:.2f} ms  p99 {point['p99_ms']:.2f} ms"
                f"  errors {point['errors']}"
            )
    deadline = time.monotonic() + 60
    counts = _counts(server.port)
    while counts["buffered"] and time.monotonic() < deadline:
        time.sleep(0.2)
        counts = _counts(server.port)
    rows = json.loads(_request(server.port, "GET", "/spend/logs?page_size=1")[1])["total"]

    def rps(name: str) -> float:
        values = [p["rps"] for p in points if p["target"] == name]
        return sum(values) / len(values)

    key_vs_master = ratio(rps("key"), rps("master"))
    lost = int(counts["answered"]) - rows
    # The rate spend rows were made at while measured (each answer is one; lost says
    # whether all of them reached the database).
    served = sum(p["requests"] for p in points)
    logged_per_s = round(served / measured_s, 1) if measured_s else None
    headline = {
        "key/master": key_vs_master,
        "answered": int(counts["answered"]),
        "rows": rows,
        "lost": lost,
        "dropped": int(counts["dropped"]),
        "rows_per_s": logged_per_s,
    }
    ctx.echo(
        f"  {NAME:<9} answered {int(counts['answered']):,}, spend rows {rows:,}, lost {lost}, "
        f"dropped {int(counts['dropped'])}"
    )
    table = [
        [
            p["target"],
            fmt(p["rps"]),
            fmt(p["p50_ms"]),
            fmt(p["p99_ms"]),
            fmt(p["errors"]),
        ]
        for p in points
    ]
    return {
        "targets": ["gateway"],
        "failed": {},
        "connections": [level],
        "points": points,
        "headline": headline,
        "checks": [
            check(f"req/s generated key / master key (c={level})", key_vs_master, ">=", 0.85),
            check("spend rows lost (answered - rows)", lost, "<=", 0),
            check("spend rows per second while measured", logged_per_s, ">=", 5000),
        ],
        "columns": ["key", "req/s", "p50 ms", "p99 ms", "errors"],
        "rows": table,
    }
