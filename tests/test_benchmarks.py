"""The benchmark harness runs end to end (``--quick``, tiny durations) and reports.

Never asserts speed: only that every scenario kind measured every target with real
servers and load generators, that the targets answered the same bytes, and that the JSON,
markdown and plot were written. One run of each scenario kind (chat, chat-sync and stream
share chat-seed's code; proxy measures streams too), in two runs that overlap: one with
wrk, pinned, and one with the asyncio client standing in for a missing wrk.

The tests of those runs are marked ``benchmark_smoke``: the README's test command leaves
them out, and ``.ci/run`` runs them after it (``python -m pytest -q -m benchmark_smoke``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report
from benchmarks.client import percentile
from benchmarks.harness import Context, normalise
from benchmarks.load import _lua_script, have_wrk
from benchmarks.scenarios import proxy

REPO = Path(__file__).resolve().parent.parent
# Tiny points: 0.2 s each, one concurrency level, 100 requests for the memory runs.
QUICK = [
    "--quick",
    "--duration",
    "0.2",
    "--connections",
    "8",
    "--memory-requests",
    "100",
    "--soak-duration",
    "0.5",
]
WITH_WRK = ("chat-seed", "proxy")
WITHOUT_WRK = ("ttft", "startup", "memory", "soak")

Run = tuple[dict[str, Any], str, Path]
# The tests that read the smoke runs: deselected by the README's test command (pyproject's
# addopts), run by .ci/run beside it (``python -m pytest -q -m benchmark_smoke``). The two
# runs load both CPUs for ~20 s: inside the suite they doubled the wall time of whatever
# ran beside them.
SMOKE = pytest.mark.benchmark_smoke


def _start(out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "run", *QUICK, "--out", str(out), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], out: Path, read: str = "") -> Run:
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    stdout = read + stdout
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    files = sorted(out.glob("*-quick.json"))
    assert len(files) == 1, list(out.iterdir())
    return json.loads(files[0].read_text()), stdout, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    # Without wrk the first run falls back to the asyncio client too (and says so).
    wrk_out, client_out = tmp_path_factory.mktemp("wrk"), tmp_path_factory.mktemp("client")
    # A PATH without wrk (the servers and the client run on sys.executable); unpinned, so
    # its servers do not queue for the CPU the other run pins its servers to.
    without = _start(
        client_out,
        "--no-plot",
        "--no-pin",
        *WITHOUT_WRK,
        env={"PATH": str(client_out), "PYTHONUNBUFFERED": "1"},
    )
    # Its first scenario, ttft, times chunks 10 ms apart; the wrk run's load, pinned to
    # both CPUs, delayed them into bursts on a loaded machine (gap p50 0.005 ms). The wrk
    # run starts once the next scenario's header is out.
    read = _read_until(without, f"[{WITHOUT_WRK[1]}]")
    with_wrk = _start(wrk_out, *WITH_WRK)
    return {"wrk": _finish(with_wrk, wrk_out), "client": _finish(without, client_out, read)}


def _read_until(proc: subprocess.Popen[str], line: str, timeout: float = 60) -> str:
    """What ``proc`` printed up to a line that starts with ``line`` (or until it exits or
    ``timeout`` passes). Read from the pipe itself, as communicate() reads the rest."""
    assert proc.stdout is not None
    fd, data, marker = proc.stdout.fileno(), b"", f"\n{line}".encode()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while marker not in data and selector.select(max(0.0, deadline - time.monotonic())):
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    return data.decode()


def _points(scenario: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["target"]: p for p in scenario["points"]}


@SMOKE
def test_every_scenario_ran_and_checked_its_targets(runs: dict[str, Run]) -> None:
    for key, names in (("wrk", WITH_WRK), ("client", WITHOUT_WRK)):
        results = runs[key][0]
        assert results["quick"] is True
        assert {"date", "command", "machine", "settings", "scenarios"} <= results.keys()
        assert list(results["scenarios"]) == list(names)
        for name, scenario in results["scenarios"].items():
            assert "error" not in scenario, (name, scenario)
            assert "log_errors" not in scenario, (name, scenario["log_errors"])
            failed = {}
            if name == "proxy" and importlib.util.find_spec("aiohttp") is None:
                failed = {"forwarder": proxy.FORWARDER_NEEDS}  # said, and the rest measured
            assert scenario["failed"] == failed, (name, scenario["failed"])
            assert scenario["checks"] and scenario["rows"] and scenario["columns"], name
            for item in scenario["checks"]:
                assert item["ok"] is None if item["value"] is None else isinstance(item["ok"], bool)


@SMOKE
def test_chat_seed_measures_every_target(runs: dict[str, Run]) -> None:
    scenario = runs["wrk"][0]["scenarios"]["chat-seed"]
    points = _points(scenario)
    assert set(points) == {"gateway", "baseline", "raw"}
    for point in points.values():
        assert point["requests"] > 0 and point["errors"] == 0, point
        assert point["p50_ms"] <= point["p99_ms"]
        assert point["tool"] == ("wrk" if have_wrk() else "asyncio-client")
    # The comparison is fair only if every target answers the gateway's bytes.
    assert scenario["same_bytes"] == {"baseline": True, "raw": True}
    # The check counts gateway and baseline measured back to back (one pair in a quick
    # run, three in a full one); the sweep's single ratio is shown beside it.
    (check,) = scenario["checks"]
    assert check["figure"] == "req/s gateway/baseline (c=8, median of paired runs)"
    versus = scenario["paired"]["gateway/baseline"]
    ((baseline, gateway),) = versus["runs"]
    assert versus["ratios"] == [round(gateway / baseline, 3)] == [versus["median"]]
    assert check["value"] == scenario["headline"]["gateway/baseline"] == versus["median"]
    assert check["paired"] == {"8": check["value"]}
    sweep = scenario["headline"]["gateway/baseline sweep"]
    assert sweep is not None and check["by_level"] == {"8": sweep}


@SMOKE
def test_servers_and_load_are_pinned_to_their_cpus_unless_told(runs: dict[str, Run]) -> None:
    pinned = runs["wrk"][0]["settings"]["pinning"]
    if (os.cpu_count() or 1) >= 2:
        assert pinned == "servers pinned to CPUs [0], load to [1]"
    assert runs["client"][0]["settings"]["pinning"] == "no CPU pinning"  # --no-pin


@SMOKE
def test_without_wrk_the_harness_says_how_to_install_it(runs: dict[str, Run]) -> None:
    results, stdout, out = runs["client"]
    assert "apt-get install -y wrk" in stdout
    assert "asyncio client" in results["settings"]["load_generator"]
    memory = results["scenarios"]["memory"]["summary"]
    assert all(m["requests"] == 100 for m in memory.values())  # the client's exact count
    assert results["scenarios"]["soak"]["point"]["tool"] == "asyncio-client"
    assert not list(out.glob("*.png"))  # --no-plot


@SMOKE
def test_ttft_sees_the_mock_timing(runs: dict[str, Run]) -> None:
    ttft = runs["client"][0]["scenarios"]["ttft"]
    assert ttft["same_bytes"] == {"mock": True}
    assert {p["target"] for p in ttft["points"]} == {"gateway", "mock"}
    for point in ttft["points"]:
        assert point["streams"] > 0 and point["errors"] == 0
        assert point["ttft_p50_ms"] >= 190  # mock_ttft_ms=200: the first token waits
        assert point["gap_p50_ms"] >= 5  # 100 tokens/s: chunks arrive spaced, not at once


@SMOKE
def test_proxy_measures_upstream_forwarder_and_gateway(runs: dict[str, Run]) -> None:
    if importlib.util.find_spec("aiohttp") is None:
        pytest.skip(proxy.FORWARDER_NEEDS)
    scenario = runs["wrk"][0]["scenarios"]["proxy"]
    assert scenario["connections"] == [8]
    measured = {(p["kind"], p["target"]) for p in scenario["points"]}
    assert measured == {
        (k, t) for k in ("json", "stream") for t in ("upstream", "forwarder", "gateway")
    }
    for point in scenario["points"]:
        assert point["requests"] > 0 and point["errors"] == 0, point
        assert ("chunks_per_s" in point) == (point["kind"] == "stream")
    # JSON and streams: the gateway relays the upstream's bytes, as the forwarder does.
    assert scenario["same_bytes"] == {
        "upstream": True,
        "forwarder": True,
        "upstream (stream)": True,
        "forwarder (stream)": True,
    }
    assert set(scenario["ttft"]) == {"forwarder", "gateway"}
    for run in scenario["ttft"].values():
        assert run["streams"] > 0 and run["errors"] == 0 and run["ttft_p50_ms"] > 0
    assert set(scenario["ttft_paced"]) == {"forwarder", "gateway"}
    rate = scenario["headline"]["paced_streams_per_s"]
    for run in scenario["ttft_paced"].values():  # paced: about the rate, not as fast as answered
        assert run["rate"] == rate > 0 and run["streams"] > 0 and run["errors"] == 0
        assert run["rps"] <= rate * 1.1
    assert set(scenario["life"]) == {"gateway", "forwarder"}
    for figures in scenario["life"].values():
        assert figures["idle_fds"] > 0 and figures["idle_mb"] > 0
        drops = figures["drops"]
        assert drops["clients"] == drops["dropped"] == proxy.QUICK_DROP_CLIENTS
        assert drops["errors"] == 0 and drops["fds"] > 0
        assert figures["memory"]["requests"] >= 100 and figures["memory"]["errors"] == 0
        assert figures["memory"]["after_mb"] > 0 and figures["after_load"]["fds"] > 0
    checks = {c["figure"]: c for c in scenario["checks"]}
    assert checks["added TTFT p99 ms over the forwarder (c=8, paced)"]["value"] is not None
    assert checks["gateway RSS MB after 100 proxied requests"]["value"] > 0
    # One level measured: the figures read at 32, 64 and 256 connections are not.
    worst = checks["req/s gateway/forwarder, JSON (worst of c=32 and c=64, median of paired runs)"]
    assert worst["value"] is None and worst["ok"] is None
    assert worst["by_level"] == {"8": scenario["headline"]["gateway/forwarder json sweep"]["8"]}
    assert "paired" not in worst and scenario["versus"] == {"json": {}, "stream": {}}


@SMOKE
def test_startup_memory_and_soak(runs: dict[str, Run]) -> None:
    scenarios = {**runs["wrk"][0]["scenarios"], **runs["client"][0]["scenarios"]}
    assert set(scenarios["startup"]["summary"]) == {"gateway", "baseline", "raw"}
    memory = scenarios["memory"]["summary"]
    assert set(memory) == {"gateway", "baseline", "raw"}
    for figures in memory.values():
        assert figures["requests"] >= 100 and figures["errors"] == 0 and figures["idle_mb"] > 0
    soak = scenarios["soak"]
    assert soak["point"]["requests"] > 0 and soak["point"]["errors"] == 0
    assert len(soak["rss_samples_mb"]) >= 2


@SMOKE
def test_markdown_json_and_plot_are_written(runs: dict[str, Run]) -> None:
    results, stdout, out = runs["wrk"]
    assert results["command"].startswith("python -m benchmarks run --quick")
    assert results["machine"]["cpus"] >= 1
    markdown = next(out.glob("*-quick.md")).read_text()
    assert "## Targets met" in markdown and "## Targets met" in stdout  # printed too
    assert "| scenario | figure | measured | target | met | at each level |" in markdown
    for name in WITH_WRK:
        assert f"| {name} |" in markdown
    assert "| connections | gateway req/s | baseline req/s | raw req/s |" in markdown
    assert "| kind | connections | upstream | forwarder | gateway |" in markdown
    assert "Memory and open file descriptors:" in markdown
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install" in stdout
    else:
        png = next(out.glob("*-quick.png"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _point(kind: str, target: str, connections: int, rps: float) -> dict[str, Any]:
    return {
        "kind": kind,
        "target": target,
        "connections": connections,
        "rps": rps,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "errors": 0,
    }


def test_proxy_report_reads_every_level() -> None:
    levels = [8, 32, 64, 256]
    forwarder = {8: 1000.0, 32: 2000.0, 64: 2000.0, 256: 1900.0}
    gateway = {8: 900.0, 32: 1700.0, 64: 1500.0, 256: 950.0}
    points = [
        _point(kind, target, c, figures[c] / (10 if kind == "stream" else 1))
        for kind in ("json", "stream")
        for target, figures in (("forwarder", forwarder), ("gateway", gateway))
        for c in levels
    ]
    # Saturated, the gateway adds 3.5 ms (queueing); paced, 1.5 ms: the check reads the paced.
    ttft = {"forwarder": {"ttft_p99_ms": 10.0}, "gateway": {"ttft_p99_ms": 13.5}}
    paced = {"forwarder": {"ttft_p99_ms": 3.0}, "gateway": {"ttft_p99_ms": 4.5}}
    for run in [*ttft.values(), *paced.values()]:
        run.update(ttft_p50_ms=2.0, streams=10, errors=0)
    for run in paced.values():
        run.update(rate=500.0)
    life = {
        "gateway": {
            "idle_fds": 20,
            "idle_mb": 40.0,
            "drops": {"clients": 1000, "dropped": 1000, "errors": 0, "fds": 20, "settle_s": 0.4},
            "memory": {"requests": 100_000, "errors": 0, "rps": 1.0, "after_mb": 81.0},
            "after_load": {"fds": 23, "settle_s": 45.0},
        }
    }
    # The scale checks read the paired runs' median, not the sweep's two points.
    scaling = {
        "json": {"runs": [[1000, 990], [1000, 1020], [900, 945]], "ratios": [0.99, 1.02, 1.05]},
        "stream": {"runs": [[100, 95], [100, 97], [100, 99]], "ratios": [0.95, 0.97, 0.99]},
    }
    scaling["json"]["median"], scaling["stream"]["median"] = 1.02, 0.97
    # Requests per server CPU-second, the same pairs: steal-proof, judged on their own.
    scaling["json"].update(cpu_ratios=[1.1, 1.2, 0.9], cpu_median=1.1)
    # So do gateway/forwarder's: the sweep's single points (0.85 and 0.75) are shown beside.
    versus = {
        kind: {
            c: {"runs": [[100, 80], [100, 82], [100, 70]], "ratios": [0.8, 0.82, 0.7]}
            for c in (32, 64)
        }
        for kind in ("json", "stream")
    }
    for kind, median in (("json", 0.82), ("stream", 0.8)):
        versus[kind][32]["median"] = 0.9
        versus[kind][64]["median"] = median
    ctx = type("Ctx", (), {"memory_requests": 100_000, "quick": False})()
    result = proxy._report(
        ctx,  # type: ignore[arg-type]
        ["forwarder", "gateway"],
        levels,
        32,
        points,
        ttft,
        life,
        paced,
        scaling,
        versus,
    )
    checks = {c["figure"]: (c["value"], c["ok"]) for c in result["checks"]}
    assert checks == {
        "req/s gateway/forwarder, JSON (worst of c=32 and c=64, median of paired runs)": (
            0.82,
            True,
        ),
        "streams/s gateway/forwarder (worst of c=32 and c=64, median of paired runs)": (
            0.8,
            True,
        ),
        "gateway req/s c=256 / c=8, JSON (median of paired runs)": (1.02, True),
        "gateway streams/s c=256 / c=8 (median of paired runs)": (0.97, False),
        "gateway requests per server CPU-second c=256 / c=8, json (median of the same pairs:"
        " CPU time stolen from the server is not counted)": (1.1, True),
        "gateway streams per server CPU-second c=256 / c=8, stream (median of the same pairs:"
        " CPU time stolen from the server is not counted)": (None, None),
        "added TTFT p99 ms over the forwarder (c=32, paced)": (1.5, True),
        "gateway RSS MB after 100,000 proxied requests": (81.0, False),
        "gateway open fds over idle after the load": (3, False),
        "gateway open fds over idle after 1,000 dropped streams": (0, True),
    }
    assert result["headline"]["added_ttft_p99_ms_saturated"] == 3.5
    assert result["headline"]["gateway c=256/c=8"] == {"json": 1.02, "stream": 0.97}
    assert result["headline"]["gateway c=256/c=8 sweep"] == {"json": 1.056, "stream": 1.056}
    assert result["headline"]["gateway c=256/c=8 per cpu"] == {"json": 1.1, "stream": None}
    assert result["headline"]["gateway/forwarder json"] == {32: 0.9, 64: 0.82}
    assert result["headline"]["gateway/forwarder json sweep"][64] == 0.75
    assert [t["title"] for t in result["tables"][:3]] == [
        "Time to first token, streams saturated (closed loop) at 32 connections",
        "Time to first token, streams paced at 500 streams/s in all over 32 connections"
        " (the run of median p99 of each target's runs; all p99s in the JSON)",
        "Gateway and forwarder at the same connections, run back to back in pairs",
    ]
    assert ["json (req/s)", 64, "median", "", "", "0.82", ""] in result["tables"][2]["rows"]
    first = result["checks"][0]
    assert first["by_level"] == {"8": 0.9, "32": 0.85, "64": 0.75, "256": 0.5}
    table = "\n".join(report.headline_table({"scenarios": {"proxy": {**result, "failed": {}}}}))
    assert (
        "| 0.820 | >= 0.8 | yes | paired c=32 0.900 · c=64 0.820; single runs"
        " c=8 0.900 · c=32 0.850 · c=64 0.750 · c=256 0.500 |" in table
    )
    assert "| 0.970 | >= 1 | **no** | runs 0.950 · 0.970 · 0.990 |" in table


def test_unknown_scenario_is_rejected(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "chatt", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "unknown scenario(s) chatt" in proc.stdout
    assert not list(tmp_path.iterdir())


def test_a_target_that_logged_a_traceback_is_reported(tmp_path: Path) -> None:
    from benchmarks.harness import Server

    echoed: list[str] = []
    ctx = Context(duration=1, connections=[1], quick=True, out_dir=tmp_path, echo=echoed.append)
    for name, text in (
        ("gateway", "INFO: ok\nException in callback Pool._trim()\nIndexError: list index\n"),
        ("baseline", "WARNING: a warning is not an error\n"),
        ("forwarder", "Traceback (most recent call last):\n"),  # a reference: not judged
        ("gw-off", "Task exception was never retrieved\n"),
    ):
        log = tmp_path / f"{name}.log"
        log.write_text(text)
        ctx.servers.append(Server(name, [], 0, log))
    ctx.stop_all()
    assert ctx.log_errors == {
        "gateway": ["Exception in callback Pool._trim()"],
        "gw-off": ["Task exception was never retrieved"],
    }
    assert echoed[0] == "  ! gateway logged 1 error(s): Exception in callback Pool._trim()"
    assert report.scenario_notes({"log_errors": ctx.log_errors}) == [
        "**gateway logged 1 error(s)**: Exception in callback Pool._trim()",
        "**gw-off logged 1 error(s)**: Task exception was never retrieved",
    ]


def test_normalise_masks_ids_and_timestamps_only() -> None:
    a = b'{"id":"chatcmpl-6e680c8c-db0d-420c-87b3-9beb43f49537","created":1795626002,"x":1}'
    b = b'{"id":"chatcmpl-00000000-1111-2222-3333-444444444444","created":1700000000,"x":1}'
    assert normalise(a) == normalise(b)
    assert len(normalise(a)) == len(a)
    assert normalise(a) != normalise(a.replace(b'"x":1', b'"x":2'))


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


@pytest.mark.parametrize("limit", [0, 500])
def test_wrk_script_posts_the_bodies(limit: int) -> None:
    script = _lua_script([b'{"a":"]]"}', b'{"b":2}'], limit, "/tmp/flag")
    assert '[=[{"a":"]]"}]=]' in script  # long brackets that the body cannot close
    assert "function request()" in script  # two bodies: cycled
    assert ("wrk.thread:stop()" in script) == (limit > 0)
    assert ("/tmp/flag.count" in script) == (limit > 0)  # progress of counted runs
    assert "BENCH_JSON" in script
    single = _lua_script([b"{}"], 0, "/tmp/flag")
    assert "function request()" not in single  # one body: wrk's static request


def test_long_runs_print_progress_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = Context(duration=1, connections=[8], quick=True, out_dir=tmp_path, work_dir=tmp_path)
    tick = ctx.progress("memory gateway", answers=100_000, every=0)
    tick(4000)
    tick(None)  # a load generator that does not count
    ctx.progress("soak gateway", seconds=180, every=3600)(5)  # not yet due: silent
    out, err = capsys.readouterr()
    assert not out
    assert err.splitlines() == [
        "  ... memory gateway: 0 s, 4,000 of 100,000 answers",
        "  ... memory gateway: 0 s",
    ]


def test_wrk_script_sends_headers() -> None:
    # Parsed by wrk's LuaJIT in the quick run's keys scenario: "[[" then "[=[" would not parse.
    script = _lua_script([b"{}"], 0, "/tmp/flag", {"Authorization": "Bearer sk-x"})
    assert "wrk.headers[ [=[Authorization]=] ] = [=[Bearer sk-x]=]" in script


async def test_paced_client_sends_at_the_rate_not_as_fast_as_answered() -> None:
    from benchmarks.client import run as client_run

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        common: dict[str, Any] = {"connections": 8, "duration": 1.0}
        free = await client_run("127.0.0.1", port, "/", [b"{}"], **common)
        paced = await client_run("127.0.0.1", port, "/", [b"{}"], rate=40, **common)
    assert free["requests"] > 400  # closed loop: as fast as the answers come
    assert 35 <= paced["requests"] <= 41 and paced["errors"] == 0
    assert paced["rate"] == 40 and paced["late"] == 0


@pytest.mark.parametrize("variant", ["baseline", "gw-off", "gw-observed"])
def test_the_instruction_counters_driver_answers_every_request(variant: str) -> None:
    # What callgrind counts (python -m benchmarks.instructions_chat): protocol and app
    # in-process; it asserts each answer is a 200, so a broken variant fails here, not in
    # a long run.
    argv = [sys.executable, "-m", "benchmarks.instructions_chat", "--drive", variant, "5"]
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_paced_ttft_alternates_the_proxies_and_keeps_the_median_run() -> None:
    p99s = iter([3.0, 9.0, 8.0, 1.0, 5.0, 6.0])  # forwarder, gateway, forwarder, ...
    order: list[str] = []

    class Ctx:
        quick = False

        def streams(self, server: Any, body: bytes, level: int, *, rate: float) -> dict:
            order.append(server)
            return {
                "ttft_p50_ms": 1.0,
                "ttft_p99_ms": next(p99s),
                "streams": 10,
                "rps": rate,
                "late": 0,
                "errors": 0,
            }

        def echo(self, line: str) -> None:
            pass

    servers = {"forwarder": "forwarder", "gateway": "gateway"}
    out = proxy._paced(Ctx(), servers, {"forwarder": {"rps": 100.0}}, 32)  # type: ignore[arg-type]
    assert order == ["forwarder", "gateway"] * proxy.PACED_RUNS
    assert out["forwarder"]["ttft_p99_ms"] == 5.0
    assert out["gateway"]["ttft_p99_ms"] == 6.0
    assert out["gateway"]["ttft_p99_ms_runs"] == [9.0, 1.0, 6.0]


def test_scaling_pairs_the_levels_back_to_back_and_keeps_the_median() -> None:
    order: list[tuple[str, int]] = []
    rps = {"json": iter([100.0, 90.0, 99.0, 110.0, 100.0, 101.0]), "stream": iter([10.0] * 6)}

    class Ctx:
        quick = False

        def throughput(self, server: Any, bodies: list[bytes], connections: int) -> dict:
            kind = "stream" if bodies == [proxy.KINDS["stream"]] else "json"
            order.append((kind, connections))
            return {"rps": next(rps[kind])}

        def echo(self, line: str) -> None:
            pass

    out = proxy._scaling(Ctx(), "gateway")  # type: ignore[arg-type]
    # Each pair alternates which level goes first: a drift favours neither.
    assert order == [(kind, c) for kind in ("json", "stream") for c in (8, 256, 256, 8, 8, 256)]
    assert out["json"]["runs"] == [[100.0, 90.0], [110.0, 99.0], [100.0, 101.0]]
    assert out["json"]["ratios"] == [0.9, 0.9, 1.01]
    assert out["json"]["median"] == 0.9
    assert out["stream"]["median"] == 1.0


def test_versus_pairs_gateway_and_forwarder_at_each_ratio_level() -> None:
    order: list[tuple[str, str, int]] = []
    rps = iter([100.0, 80.0, 90.0, 100.0, 100.0, 70.0] * 4)

    class Ctx:
        quick = False

        def throughput(self, server: str, bodies: list[bytes], connections: int) -> dict:
            kind = "stream" if bodies == [proxy.KINDS["stream"]] else "json"
            order.append((kind, server, connections))
            return {"rps": next(rps)}

        def echo(self, line: str) -> None:
            pass

    servers = {"forwarder": "forwarder", "gateway": "gateway", "upstream": "upstream"}
    out = proxy._versus(Ctx(), servers, [1, 8, 32, 64, 256])  # type: ignore[arg-type]
    # Back to back at one level, alternating which goes first; the upstream is not run.
    assert order == [
        (kind, server, c)
        for kind in ("json", "stream")
        for c in (32, 64)
        for server in ("forwarder", "gateway", "gateway", "forwarder", "forwarder", "gateway")
    ]
    assert out["json"][32]["runs"] == [[100.0, 80.0], [100.0, 90.0], [100.0, 70.0]]
    assert out["json"][32]["ratios"] == [0.8, 0.9, 0.7]
    assert out["json"][32]["median"] == 0.8
    assert set(out["stream"]) == {32, 64}
    assert proxy._versus(Ctx(), {"gateway": "gateway"}, [32, 64]) == {}  # type: ignore[arg-type]


def test_scaling_rounds_interleave_the_targets_and_keep_each_ratio() -> None:
    from benchmarks.scaling import rounds

    order: list[tuple[str, int]] = []
    # (req/s, req per CPU-second) by target and level: the gateway scales, raw does not.
    figures = {("gateway", 8): (100.0, 200.0), ("gateway", 256): (110.0, 210.0)}
    figures |= {("raw", 8): (400.0, 500.0), ("raw", 256): (300.0, 450.0)}

    def run(target: str, connections: int) -> tuple[float, float]:
        order.append((target, connections))
        return figures[target, connections]

    rows = rounds(run, ["gateway", "raw"], 2, 8, 256)
    # Low, high, high, low; at each level every target once, their order turned each round.
    first = [(t, c) for c in (8, 256, 256, 8) for t in ("gateway", "raw")]
    second = [(t, c) for c in (8, 256, 256, 8) for t in ("raw", "gateway")]
    assert order == first + second
    assert [r["ratio"] for r in rows["gateway"]] == [1.1, 1.1]
    assert rows["gateway"][0]["cpu_ratio"] == 1.05
    assert rows["raw"][1] == {"low": 400.0, "high": 300.0, "ratio": 0.75, "cpu_ratio": 0.9}


def test_concurrency_reads_callgrind_totals(tmp_path: Path) -> None:
    from benchmarks.concurrency import _totals

    dump = tmp_path / "callgrind.gateway.1.1"
    dump.write_text(
        "version: 1\ncreator: callgrind-3.19.0\npid: 1\npart: 1\n\n"
        "events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n\n"
        "fl=(1) a.c\nfn=(1) f\n0 10 2 1 0 0 0 0 0 0\n\n"
        "summary: 737023 217909 126587 21785 13802 4271 6 21 11\n\n\ntotals: 737023 217909"
        " 126587 21785 13802 4271 6 21 11\n"
    )
    assert _totals(dump) == {
        "Ir": 737023,
        "Dr": 217909,
        "Dw": 126587,
        "I1mr": 21785,
        "D1mr": 13802,
        "D1mw": 4271,
        "ILmr": 6,
        "DLmr": 21,
        "DLmw": 11,
    }


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads Linux's /proc/stat")
def test_cpu_ticks_count_stolen_time_of_the_cpus_asked() -> None:
    from benchmarks.harness import cpu_ticks

    stolen, every = cpu_ticks({0})
    assert every > 0 and 0 <= stolen <= every
    all_stolen, all_every = cpu_ticks(None)
    assert all_every >= every and all_stolen >= stolen
    assert cpu_ticks({10_000}) == (0, 0)  # no such CPU


def test_every_checked_ratio_is_the_median_of_pairs_at_the_headline_level() -> None:
    from benchmarks.scenarios import chat

    # gw-off answers 100 req/s; gw-observed 90 in its sweep point, then 95, 70 and 99
    # in its pairs: a single point would say 0.9, the pairs' median says 0.95.
    observed = iter([90.0, 95.0, 70.0, 99.0])
    order: list[tuple[str, int]] = []

    class Ctx:
        quick = False
        before = None
        connections = [8, 32]

        def targets(self, *names: str) -> list[str]:
            return list(names[:3])

        def start_all(self, targets: list[str]) -> tuple[dict[str, str], dict]:
            return {t: t for t in targets}, {}

        def same_bytes(self, servers: dict[str, str], body: bytes) -> dict[str, bool]:
            return {t: True for t in servers if t != "gateway"}

        def throughput(
            self, server: str, bodies: list[bytes], connections: int, duration: float = 5
        ) -> dict:
            if duration == 1:  # the warm-up
                return {"rps": 1.0}
            order.append((server, connections))
            rps = next(observed) if server == "gw-observed" and connections == 32 else 100.0
            return {
                "rps": rps,
                "p50_ms": 1.0,
                "p99_ms": 2.0,
                "errors": 0,
                "connections": connections,
            }

        def stop_all(self) -> None:
            pass

        def echo(self, line: str) -> None:
            pass

    scenario = chat.run(Ctx())  # type: ignore[arg-type]
    checks = {item["figure"]: item for item in scenario["checks"]}
    item = checks["req/s observability on/off (c=32, median of paired runs)"]
    assert item["value"] == 0.95 and item["ok"] is True
    assert item["by_level"] == {"8": 1.0, "32": 0.9}  # the sweep's points, shown beside
    assert scenario["paired"]["observed/off"]["ratios"] == [0.95, 0.7, 0.99]
    assert scenario["headline"]["observed/off sweep"] == 0.9
    # Unchecked ratios (gateway/raw) are not paired; the pairs alternate who goes first.
    assert set(scenario["paired"]) == {"gateway/baseline", "observed/off"}
    tail = order[-6:]
    assert tail == [
        ("gw-off", 32),
        ("gw-observed", 32),
        ("gw-observed", 32),
        ("gw-off", 32),
        ("gw-off", 32),
        ("gw-observed", 32),
    ]


def test_inflight_counts_what_requests_in_flight_hold(tmp_path: Path) -> None:
    import asyncio

    from benchmarks.inflight import measure

    held, stats = asyncio.run(measure(16, tmp_path))
    # Every request holds its scope, cycle, task and coroutines while the upstream waits:
    # kilobytes each, made by the gateway's own lines.
    assert held / 16 > 2000
    lines = {Path(s.traceback[0].filename).name for s in stats if s.size_diff > 0}
    assert {"_server_httptools.py", "edge.py"} <= lines, lines
