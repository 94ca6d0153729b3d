"""proxy: the gateway in front of an OpenAI-compatible upstream, against a bare forwarder.

Targets: the upstream (``servers/raw.py``: a bare ASGI callable) called directly; the forwarder
(``servers/forwarder.py``: a bare Starlette endpoint relaying through one shared aiohttp
session, the limit of a Python proxy here); the gateway serving an ``openai/`` deployment
pointed at the upstream; LiteLLM's proxy the same way with ``--litellm``. The upstream runs
on the load generator's CPU, the proxies on the server CPU, so a proxy's figure is one
core's worth of proxying.

1. Every target at 1, 8, 32, 64 and 256 connections, JSON answers and 20-chunk streams
   (wrk), interleaved: req/s, p50 and p99, gateway/forwarder per level.
2. Streams at 32 connections through the asyncio client: time to first token, the
   gateway's against the forwarder's, twice. Saturated (closed loop: each connection
   asks again as soon as it is answered), where TTFT is mostly queueing and follows the
   streams/s ratio; and paced (``PACED_SHARE`` of the forwarder's saturated streams/s
   in all, below both proxies' capacity), where TTFT is each proxy's own latency, three
   runs each, alternating, the median p99 counting. The added-TTFT check uses the paced
   figure.
3. Gateway and forwarder: 1,000 clients that hang up after a few chunks of a paced stream
   (before the load), and open file descriptors back to their idle count; RSS after
   ``--memory-requests`` more JSON requests; file descriptors back to idle after the load.
   The upstream (uvicorn) closes idle keep-alive connections after 5 s, and the pools' own
   expiry is 30 s: a pool that closes what the upstream closed is back within seconds, the
   harness waits up to 45.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..harness import Context, Server
from ..payloads import PROXY_DROP_MODEL, PROXY_MODEL, PROXY_PIECES, chat_body
from ._common import check, fmt, paired, ratio, warm_up

NAME = "proxy"
TITLE = "proxy: gateway -> OpenAI-compatible upstream vs a bare aiohttp forwarder (wrk)"
LEVELS = (1, 8, 32, 64, 256)
QUICK_LEVELS = (8, 32, 256)
RATIO_LEVELS = (32, 64)  # where gateway/forwarder must hold
SCALE_LEVELS = (8, 256)  # throughput at the second must not fall below the first
# The checks count the median of paired runs (_common.paired): the gateway at
# SCALE_LEVELS, and gateway/forwarder at each of RATIO_LEVELS (the forwarder alone moved
# 2,884 -> 4,263 req/s within one sweep).
TTFT_LEVEL = 32
# The paced TTFT run's total arrival rate, as a share of the forwarder's saturated
# streams/s at TTFT_LEVEL: below what either proxy can serve, so nothing queues.
PACED_SHARE = 0.5
# The p99 of one 5-s run moves by tens of ms with the machine's other tenants (one stall
# of the shared CPU): the paced runs alternate between the proxies and the median counts.
PACED_RUNS = 3
MEMORY_CONNECTIONS = 32
DROP_CLIENTS, QUICK_DROP_CLIENTS = 1000, 50
DROP_CONNECTIONS = 50
DROP_AFTER = 5  # events of the 22 a paced stream has: the client leaves mid-way
SETTLE_AFTER_LOAD_S = 45.0  # the pools' keep-alive expiry (30 s), and some
SETTLE_AFTER_DROPS_S = 5.0  # an upstream stream a client left is closed at once
QUICK_SETTLE_S = 0.5
MB = 1024 * 1024
EVENTS = len(PROXY_PIECES) + 1  # content chunks and the finish chunk
KINDS = {
    "json": chat_body(PROXY_MODEL),
    "stream": chat_body(PROXY_MODEL, stream=True),
}
UNITS = {"json": "req/s", "stream": "streams/s"}
MEASURED = ("gateway", "forwarder")  # memory and file descriptors
FORWARDER_NEEDS = "the forwarder needs aiohttp: pip install -e '.[bench]' (or pip install aiohttp)"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _settle(
    ctx: Context, servers: dict[str, Server], idle: dict[str, int], limit: float
) -> dict[str, tuple[int, float]]:
    """Poll open fds until each server is back to its idle count or ``limit`` s pass:
    {target: (fds, seconds waited)}."""
    start = time.perf_counter()
    result: dict[str, tuple[int, float]] = {}
    pending = dict(servers)
    while pending:
        waited = time.perf_counter() - start
        for target, server in list(pending.items()):
            fds = server.fds()
            if fds <= idle[target] or waited >= limit:
                result[target] = (fds, round(waited, 1))
                del pending[target]
        if pending:
            time.sleep(0.2)
            if int(waited) // 10 != int(time.perf_counter() - start) // 10:
                print(f"  ... {NAME}: fds settling, {waited:.0f} s", file=sys.stderr, flush=True)
    return result


def _sweep(
    ctx: Context, servers: dict[str, Server], targets: list[str], levels: list[int]
) -> list[dict[str, Any]]:
    points = []
    for connections in levels:
        for kind, body in KINDS.items():
            for target in targets:  # round-robin: every target at this level, then the next
                if target not in servers:
                    continue
                point = ctx.throughput(servers[target], [body], connections)
                point.update(target=target, kind=kind)
                if kind == "stream":
                    point["chunks_per_s"] = round(point["rps"] * EVENTS, 1)
                points.append(point)
                ctx.echo(
                    f"  {NAME:<9} c={connections:<4} {kind:<6} {target:<9}"
                    f" {point['rps']:>9,.0f} {UNITS[kind]:<9} p50 {point['p50_ms']:.2f} ms"
                    f"  p99 {point['p99_ms']:.2f} ms  errors {point['errors']}"
                )
    return points


def _drops(ctx: Context, servers: dict[str, Server], idle: dict[str, int]) -> dict[str, Any]:
    clients = QUICK_DROP_CLIENTS if ctx.quick else DROP_CLIENTS
    body = chat_body(PROXY_DROP_MODEL, stream=True)
    # Both at once: nothing here is timed, and the fds of each are counted apart.
    with ThreadPoolExecutor(len(servers) or 1) as pool:
        futures = {
            target: pool.submit(
                ctx.streams,
                server,
                body,
                DROP_CONNECTIONS,
                600,
                requests=clients,
                drop_after=DROP_AFTER,
            )
            for target, server in servers.items()
        }
        runs = {target: future.result() for target, future in futures.items()}
    limit = QUICK_SETTLE_S if ctx.quick else SETTLE_AFTER_DROPS_S
    settled = _settle(ctx, servers, idle, limit)
    out = {}
    for target, run in runs.items():
        fds, waited = settled[target]
        out[target] = {
            "clients": clients,
            "dropped": run["dropped"],
            "errors": run["errors"],
            "fds": fds,
            "settle_s": waited,
        }
        ctx.echo(
            f"  {NAME:<9} {target:<9} {run['dropped']:,} of {clients:,} clients hung up mid-stream"
            f" (errors {run['errors']}); fds {fds} ({fds - idle[target]:+d} on idle {idle[target]}"
            f" after {waited:g} s)"
        )
    return out


def _memory(ctx: Context, servers: dict[str, Server]) -> dict[str, Any]:
    count = ctx.memory_requests
    out = {}
    for target, server in servers.items():
        progress = ctx.progress(f"{NAME} {target}", server, answers=count)
        point = ctx.throughput(
            server, [KINDS["json"]], MEMORY_CONNECTIONS, requests=count, on_tick=progress
        )
        time.sleep(0.1 if ctx.quick else 1.0)
        out[target] = {
            "requests": point["requests"],
            "errors": point["errors"],
            "rps": point["rps"],
            "after_mb": round(server.rss() / MB, 1),
        }
        ctx.echo(
            f"  {NAME:<9} {target:<9} RSS {out[target]['after_mb']:.1f} MB after"
            f" {point['requests']:,} more requests (errors {point['errors']})"
        )
    return out


def run(ctx: Context) -> dict[str, Any]:
    targets = ctx.targets("upstream", "forwarder", "gateway", "litellm")
    levels = ctx.levels(QUICK_LEVELS if ctx.quick else LEVELS)
    ttft_level = TTFT_LEVEL if TTFT_LEVEL in levels else min(levels, key=lambda c: abs(c - 32))
    failed: dict[str, str] = {}
    if importlib.util.find_spec("aiohttp") is None:
        ctx.echo(f"  ! {FORWARDER_NEEDS}")
        failed["forwarder"] = FORWARDER_NEEDS
    same: dict[str, bool] = {}
    points: list[dict[str, Any]] = []
    ttft: dict[str, dict[str, Any]] = {}
    paced: dict[str, dict[str, Any]] = {}
    life: dict[str, dict[str, Any]] = {}
    scaling: dict[str, dict[str, Any]] = {}
    versus: dict[str, Any] = {}
    try:
        # Started with the proxies (they wait for it); a scenario without its upstream
        # measures nothing, so its ServerError fails the scenario.
        upstream = ctx.server("upstream", cpus=ctx.load_cpus)
        ctx.servers.append(upstream)
        upstream.start()
        proxies, not_started = ctx.start_all(
            [t for t in targets if t not in ("upstream", *failed)], upstream_port=upstream.port
        )
        upstream.wait_ready()
        failed.update(not_started)
        servers = {"upstream": upstream, **proxies}
        for kind, body in KINDS.items():
            for target, ok in ctx.same_bytes(servers, body).items():
                same[target if kind == "json" else f"{target} ({kind})"] = ok
        measured = {t: servers[t] for t in MEASURED if t in servers}
        # Idle: one keep-alive connection to the upstream at most (the same-bytes check's).
        idle = {t: s.fds() for t, s in measured.items()}
        for server in servers.values():  # at the top level: pools grown before measuring
            warm_up(ctx, server, list(KINDS.values()), max(levels))
        life = {
            t: {"idle_fds": idle[t], "idle_mb": round(s.rss() / MB, 1)} for t, s in measured.items()
        }
        for target, figures in _drops(ctx, measured, idle).items():
            life[target]["drops"] = figures
        points = _sweep(ctx, servers, targets, levels)
        for target in targets:  # a quick run times only the two it compares
            if target in servers and (not ctx.quick or target in MEASURED):
                run = ttft[target] = ctx.streams(servers[target], KINDS["stream"], ttft_level)
                ctx.echo(
                    f"  {NAME:<9} c={ttft_level:<4} ttft   {target:<9} p50"
                    f" {fmt(run['ttft_p50_ms'])} p99 {fmt(run['ttft_p99_ms'])} ms,"
                    f" {run['streams']:,} streams, errors {run['errors']}"
                )
        paced = _paced(ctx, servers, ttft, ttft_level)
        versus = _versus(ctx, servers, levels)
        if "gateway" in servers and all(c in levels for c in SCALE_LEVELS):
            scaling = _scaling(ctx, servers["gateway"])
        for target, figures in _memory(ctx, measured).items():
            life[target]["memory"] = figures
        limit = QUICK_SETTLE_S if ctx.quick else SETTLE_AFTER_LOAD_S
        for target, (fds, waited) in _settle(ctx, measured, idle, limit).items():
            life[target]["after_load"] = {"fds": fds, "settle_s": waited}
            ctx.echo(
                f"  {NAME:<9} {target:<9} fds after the load {fds}"
                f" ({fds - idle[target]:+d} on idle {idle[target]} after {waited:g} s)"
            )
    finally:
        ctx.stop_all()
    result = _report(ctx, targets, levels, ttft_level, points, ttft, life, paced, scaling, versus)
    result.update(failed=failed, same_bytes=same)
    return result


def _report(
    ctx: Context,
    targets: list[str],
    levels: list[int],
    ttft_level: int,
    points: list[dict[str, Any]],
    ttft: dict[str, dict[str, Any]],
    life: dict[str, dict[str, Any]],
    paced: dict[str, dict[str, Any]] | None = None,
    scaling: dict[str, dict[str, Any]] | None = None,
    versus: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The scenario's results: figures, checks, tables and plot panels."""
    paced, scaling, versus = paced or {}, scaling or {}, versus or {}
    columns, rows, ratios, gateway_rps = _level_table(targets, levels, points)
    low, high = SCALE_LEVELS
    swept = {kind: ratio(gateway_rps[kind].get(high), gateway_rps[kind].get(low)) for kind in KINDS}
    scale = {kind: scaling.get(kind, {}).get("median") for kind in KINDS}
    added_saturated = _diff(
        ttft.get("gateway", {}).get("ttft_p99_ms"), ttft.get("forwarder", {}).get("ttft_p99_ms")
    )
    added_ttft = _diff(
        paced.get("gateway", {}).get("ttft_p99_ms"), paced.get("forwarder", {}).get("ttft_p99_ms")
    )
    rate = next((run["rate"] for run in paced.values()), None)
    gw = life.get("gateway", {})
    memory, drops = gw.get("memory", {}), gw.get("drops", {})

    def over_idle(figures: dict[str, Any] | None) -> int | None:
        return None if not figures else figures["fds"] - gw["idle_fds"]

    paired = {
        kind: {c: figures["median"] for c, figures in versus.get(kind, {}).items()}
        for kind in KINDS
    }

    def worst(kind: str) -> float | None:
        values = [paired[kind].get(c) for c in RATIO_LEVELS if c in levels]
        return min(values) if values and None not in values else None

    at = " and ".join(f"c={c}" for c in RATIO_LEVELS)
    count = ctx.memory_requests  # the goal; wrk may answer a few more
    checks = [
        check(
            f"req/s gateway/forwarder, JSON (worst of {at}, median of paired runs)",
            worst("json"),
            ">=",
            0.8,
            by_level=ratios["json"],
            paired=paired["json"],
        ),
        check(
            f"streams/s gateway/forwarder (worst of {at}, median of paired runs)",
            worst("stream"),
            ">=",
            0.8,
            by_level=ratios["stream"],
            paired=paired["stream"],
        ),
        check(
            f"gateway req/s c={high} / c={low}, JSON (median of paired runs)",
            scale["json"],
            ">=",
            1,
            runs=scaling.get("json", {}).get("ratios"),
        ),
        check(
            f"gateway streams/s c={high} / c={low} (median of paired runs)",
            scale["stream"],
            ">=",
            1,
            runs=scaling.get("stream", {}).get("ratios"),
        ),
        *(
            check(
                f"gateway {unit} per server CPU-second c={high} / c={low}, {kind}"
                " (median of the same pairs: CPU time stolen from the server is not counted)",
                scaling.get(kind, {}).get("cpu_median"),
                ">=",
                1,
                runs=scaling.get(kind, {}).get("cpu_ratios"),
            )
            for kind, unit in (("json", "requests"), ("stream", "streams"))
        ),
        check(
            f"added TTFT p99 ms over the forwarder (c={ttft_level}, paced)",
            added_ttft,
            "<",
            2,
        ),
        check(f"gateway RSS MB after {count:,} proxied requests", memory.get("after_mb"), "<", 80),
        check(
            "gateway open fds over idle after the load", over_idle(gw.get("after_load")), "<=", 0
        ),
        check(
            f"gateway open fds over idle after {drops.get('clients', 0):,} dropped streams",
            over_idle(drops),
            "<=",
            0,
        ),
    ]
    headline = {
        "gateway/forwarder json": paired["json"],  # paired runs, median
        "gateway/forwarder stream": paired["stream"],
        "gateway/forwarder json sweep": ratios["json"],
        "gateway/forwarder stream sweep": ratios["stream"],
        "gateway json rps": gateway_rps["json"],
        "gateway stream rps": gateway_rps["stream"],
        f"gateway c={high}/c={low}": scale,  # paired runs, median
        # the same pairs, requests per CPU-second of the gateway process
        f"gateway c={high}/c={low} per cpu": {
            kind: scaling.get(kind, {}).get("cpu_median") for kind in KINDS
        },
        f"gateway c={high}/c={low} sweep": swept,  # the sweep's two runs, minutes apart
        "ttft_connections": ttft_level,
        "added_ttft_p99_ms": added_ttft,  # paced
        "paced_streams_per_s": rate,
        "added_ttft_p99_ms_saturated": added_saturated,
        "gateway_rss_mb": memory.get("after_mb"),
        "gateway_fds_over_idle_after_load": over_idle(gw.get("after_load")),
        "gateway_fds_over_idle_after_drops": over_idle(drops),
    }
    panels = [
        {
            "name": f"proxy {kind}",
            "metric": "rps",
            "unit": UNITS[kind],
            "targets": targets,
            "connections": levels,
            "points": [p for p in points if p["kind"] == kind],
        }
        for kind in KINDS
    ]
    return {
        "targets": targets,
        "connections": levels,
        "points": points,
        "ttft": ttft,
        "ttft_paced": paced,
        "scaling": scaling,
        "versus": versus,
        "life": life,
        "headline": headline,
        "checks": checks,
        "columns": columns,
        "rows": rows,
        "tables": [
            _ttft_table(ttft, f"saturated (closed loop) at {ttft_level} connections"),
            _ttft_table(
                paced,
                f"paced at {fmt(rate)} streams/s in all over {ttft_level} connections"
                " (the run of median p99 of each target's runs; all p99s in the JSON)",
            ),
            _versus_table(versus),
            _scaling_table(scaling),
            _life_table(life),
        ],
        "panels": panels,
    }


Ratios = dict[str, dict[int, float | None]]


def _level_table(
    targets: list[str], levels: list[int], points: list[dict[str, Any]]
) -> tuple[list[str], list[list[str]], Ratios, Ratios]:
    """One row per kind and level: (columns, rows, gateway/forwarder and gateway req/s
    by kind and level)."""
    by = {(p["kind"], p["target"], p["connections"]): p for p in points}

    def get(kind: str, target: str, connections: int, key: str = "rps") -> float | None:
        point = by.get((kind, target, connections))
        return None if point is None else point[key]

    has_litellm = "litellm" in targets
    columns = ["kind", "connections", "upstream", "forwarder", "gateway"]
    columns += ["LiteLLM"] if has_litellm else []
    columns += ["gateway/forwarder"] + (["gateway/LiteLLM"] if has_litellm else [])
    columns += ["p50 ms up / fwd / gw", "p99 ms up / fwd / gw", "errors"]
    rows: list[list[str]] = []
    ratios: Ratios = {kind: {} for kind in KINDS}
    gateway_rps: Ratios = {kind: {} for kind in KINDS}
    for kind in KINDS:
        for c in levels:
            gw = gateway_rps[kind][c] = get(kind, "gateway", c)
            ratios[kind][c] = ratio(gw, get(kind, "forwarder", c))
            row: list[Any] = [f"{kind} ({UNITS[kind]})", c]
            row += [get(kind, t, c) for t in ("upstream", "forwarder", "gateway")]
            row += [get(kind, "litellm", c)] if has_litellm else []
            row.append(ratios[kind][c])
            row += [ratio(gw, get(kind, "litellm", c))] if has_litellm else []
            for key in ("p50_ms", "p99_ms"):
                cells = (fmt(get(kind, t, c, key)) for t in ("upstream", "forwarder", "gateway"))
                row.append(" / ".join(cells))
            level = [p for p in points if (p["kind"], p["connections"]) == (kind, c)]
            row.append(sum(p["errors"] for p in level))
            rows.append([fmt(cell) for cell in row])
    return columns, rows, ratios, gateway_rps


def _paced(
    ctx: Context, servers: dict[str, Server], saturated: dict[str, dict[str, Any]], level: int
) -> dict[str, dict[str, Any]]:
    """TTFT of gateway and forwarder at ``level`` connections sending ``PACED_SHARE`` of
    the forwarder's saturated streams/s in all (the gateway's, without a forwarder)."""
    base = saturated.get("forwarder") or saturated.get("gateway")
    if not base or not base.get("rps"):
        return {}
    rate = round(base["rps"] * PACED_SHARE, 1)
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(1 if ctx.quick else PACED_RUNS):
        for target in ("forwarder", "gateway"):
            if target in servers:
                run = ctx.streams(servers[target], KINDS["stream"], level, rate=rate)
                runs.setdefault(target, []).append(run)
                ctx.echo(
                    f"  {NAME:<9} c={level:<4} ttft   {target:<9} paced {rate:g}/s: p50"
                    f" {fmt(run['ttft_p50_ms'])} p99 {fmt(run['ttft_p99_ms'])} ms,"
                    f" {run['streams']:,} streams ({run['rps']:g}/s), late {run['late']},"
                    f" errors {run['errors']}"
                )
    out: dict[str, dict[str, Any]] = {}
    for target, done in runs.items():
        # The run of median p99 stands for the target; every run's p99 is kept beside it.
        ordered = sorted(done, key=lambda r: r["ttft_p99_ms"])
        out[target] = {
            **ordered[len(ordered) // 2],
            "ttft_p99_ms_runs": [r["ttft_p99_ms"] for r in done],
        }
    return out


def _paired(
    ctx: Context, kind: str, a: tuple[Server, int], b: tuple[Server, int], label: str
) -> dict[str, Any]:
    """``b``'s throughput over ``a``'s for ``kind``, in pairs (``_common.paired``)."""
    return paired(ctx, a, b, [KINDS[kind]], f"{NAME:<9} {kind:<6} {label}", UNITS[kind])


def _scaling(ctx: Context, gateway: Server) -> dict[str, dict[str, Any]]:
    """The gateway's throughput at both ``SCALE_LEVELS``, in pairs, per kind."""
    low, high = SCALE_LEVELS
    label = f"gateway c={low} / c={high}"
    return {kind: _paired(ctx, kind, (gateway, low), (gateway, high), label) for kind in KINDS}


def _versus(ctx: Context, servers: dict[str, Server], levels: list[int]) -> dict[str, Any]:
    """Gateway over forwarder at each of ``RATIO_LEVELS``, in pairs: {kind: {level:
    pairs}}."""
    if "gateway" not in servers or "forwarder" not in servers:
        return {}
    forwarder, gateway = servers["forwarder"], servers["gateway"]
    return {
        kind: {
            c: _paired(ctx, kind, (forwarder, c), (gateway, c), f"c={c} forwarder / gateway")
            for c in RATIO_LEVELS
            if c in levels
        }
        for kind in KINDS
    }


def _scaling_table(scaling: dict[str, dict[str, Any]]) -> dict[str, Any]:
    low, high = SCALE_LEVELS
    rows = []
    for kind, figures in scaling.items():
        count = len(figures["runs"])
        stolen = figures.get("stolen_pct") or [[None, None]] * count
        per_cpu = figures.get("cpu_ratios") or [None] * count
        pairs = zip(figures["runs"], figures["ratios"], per_cpu, stolen, strict=True)
        for i, ((at_low, at_high), r, cpu, took) in enumerate(pairs):
            rows.append(
                [
                    f"{kind} ({UNITS[kind]})",
                    i + 1,
                    fmt(at_low),
                    fmt(at_high),
                    fmt(r),
                    fmt(cpu),
                    _took(took),
                ]
            )
        median_cpu = fmt(figures.get("cpu_median"))
        rows.append(
            [f"{kind} ({UNITS[kind]})", "median", "", "", fmt(figures["median"]), median_cpu, ""]
        )
    return {
        "title": f"Gateway at {low} and {high} connections, run back to back in pairs",
        "columns": [
            "kind",
            "pair",
            f"c={low}",
            f"c={high}",
            f"c={high}/c={low}",
            f"c={high}/c={low} per server CPU-second",
            "CPU stolen % (steal)",
        ],
        "rows": rows,
    }


def _took(took: list[float | None]) -> str:
    return " / ".join("" if t is None else f"{t:g}" for t in took)


def _versus_table(versus: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for kind, by_level in versus.items():
        for c, figures in by_level.items():
            stolen = figures.get("stolen_pct") or [[None, None]] * len(figures["runs"])
            pairs = zip(figures["runs"], figures["ratios"], stolen, strict=True)
            for i, ((forwarder, gateway), r, took) in enumerate(pairs):
                rows.append(
                    [
                        f"{kind} ({UNITS[kind]})",
                        c,
                        i + 1,
                        fmt(forwarder),
                        fmt(gateway),
                        fmt(r),
                        _took(took),
                    ]
                )
            rows.append(
                [f"{kind} ({UNITS[kind]})", c, "median", "", "", fmt(figures["median"]), ""]
            )
    return {
        "title": "Gateway and forwarder at the same connections, run back to back in pairs",
        "columns": [
            "kind",
            "connections",
            "pair",
            "forwarder",
            "gateway",
            "gateway/forwarder",
            "CPU stolen % (steal)",
        ],
        "rows": rows,
    }


def _ttft_table(ttft: dict[str, dict[str, Any]], how: str) -> dict[str, Any]:
    forwarder = ttft.get("forwarder", {}).get("ttft_p99_ms")
    return {
        "title": f"Time to first token, streams {how}",
        "columns": [
            "target",
            "ttft p50 ms",
            "ttft p99 ms",
            "p99 over forwarder ms",
            "streams",
            "errors",
        ],
        "rows": [
            [
                target,
                fmt(run["ttft_p50_ms"]),
                fmt(run["ttft_p99_ms"]),
                fmt(_diff(run["ttft_p99_ms"], forwarder)),
                fmt(run["streams"]),
                fmt(run["errors"]),
            ]
            for target, run in ttft.items()
        ],
    }


def _life_table(life: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for target, figures in life.items():
        mem = figures.get("memory", {})
        drop = figures.get("drops", {})
        after = figures.get("after_load", {})
        rows.append(
            [
                target,
                fmt(figures["idle_mb"], 1),
                fmt(mem.get("after_mb"), 1),
                fmt(mem.get("requests")),
                fmt(figures["idle_fds"]),
                f"{fmt(drop.get('fds'))} ({fmt(drop.get('settle_s'), 1)} s)",
                f"{fmt(drop.get('dropped'))} / {fmt(drop.get('clients'))}",
                f"{fmt(after.get('fds'))} ({fmt(after.get('settle_s'), 1)} s)",
            ]
        )
    return {
        "title": "Memory and open file descriptors",
        "columns": [
            "target",
            "idle MB",
            "RSS MB after",
            "more requests",
            "idle fds",
            "fds after dropped streams (waited)",
            "clients dropped / sent",
            "fds after the load (waited)",
        ],
        "rows": rows,
    }
