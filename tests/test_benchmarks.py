"""The benchmark harness runs end to end (``--quick``) and produces its results.

Never asserts speed: only that every scenario measured every target, that the targets
answered the same bytes, and that the JSON, markdown and plot were written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.client import percentile
from benchmarks.harness import SCENARIOS, normalise
from benchmarks.load import _lua_script

REPO = Path(__file__).resolve().parent.parent


def _run(out: Path, *args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--out", str(out), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(out.glob("*-quick.json"))
    assert len(files) == 1, list(out.iterdir())
    return json.loads(files[0].read_text()), proc.stdout


def _points(scenario: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["target"]: p for p in scenario["points"]}


def test_quick_run_measures_every_scenario(tmp_path: Path) -> None:
    results, stdout = _run(tmp_path)
    assert results["quick"] is True
    assert {"date", "command", "machine", "settings", "scenarios"} <= results.keys()
    assert results["machine"]["cpus"] >= 1
    scenarios = results["scenarios"]
    assert list(scenarios) == list(SCENARIOS)
    for name, scenario in scenarios.items():
        assert "error" not in scenario, (name, scenario)
        assert scenario["failed"] == {}, (name, scenario["failed"])
        assert scenario["checks"], name
        for item in scenario["checks"]:
            assert item["value"] is not None, (name, item)
            assert isinstance(item["ok"], bool)
        assert scenario["rows"] and scenario["columns"]

    for name in ("chat", "chat-sync", "stream"):
        scenario = scenarios[name]
        points = _points(scenario)
        assert set(points) == {"gateway", "baseline", "raw"}
        for point in points.values():
            assert point["requests"] > 0 and point["errors"] == 0, (name, point)
            assert point["p50_ms"] <= point["p99_ms"]
        # The comparison is fair only if every target answers the gateway's bytes.
        assert scenario["same_bytes"] == {"baseline": True, "raw": True}, name
        assert {"gateway/baseline", "gateway/raw"} <= scenario["headline"].keys()
    assert _points(scenarios["stream"])["gateway"]["chunks_per_s"] > 0

    ttft = scenarios["ttft"]
    assert ttft["same_bytes"] == {"mock": True}
    for point in ttft["points"]:
        assert point["streams"] > 0 and point["errors"] == 0
        assert point["ttft_p50_ms"] >= 190  # mock_ttft_ms=200: the first token waits
        assert point["gap_p50_ms"] >= 5  # 100 tokens/s: chunks arrive spaced, not at once
    proxy = scenarios["proxy"]
    assert proxy["same_bytes"] == {"upstream": True}
    assert set(_points(proxy)) == {"gateway", "upstream"}
    assert all(p["errors"] == 0 for p in proxy["points"])
    assert set(scenarios["startup"]["summary"]) == {"gateway", "baseline", "raw"}
    memory = scenarios["memory"]["summary"]
    assert set(memory) == {"gateway", "baseline", "raw"}
    for figures in memory.values():
        assert figures["requests"] >= 2000 and figures["errors"] == 0 and figures["idle_mb"] > 0
    soak = scenarios["soak"]
    assert soak["point"]["requests"] > 0 and soak["point"]["errors"] == 0
    assert len(soak["rss_samples_mb"]) >= 2

    markdown = next(tmp_path.glob("*-quick.md")).read_text()
    assert "## Targets met" in markdown
    for name in SCENARIOS:
        assert f"| {name} |" in markdown
    assert "| connections | gateway req/s | baseline req/s | raw req/s |" in markdown
    assert "## Targets met" in stdout  # the table is printed too
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install" in stdout
    else:
        png = next(tmp_path.glob("*-quick.png"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_wrk_the_asyncio_client_measures(tmp_path: Path) -> None:
    # A PATH without wrk (the servers and the client run on sys.executable).
    results, stdout = _run(tmp_path, "chat", "memory", env={"PATH": str(tmp_path)})
    assert "apt-get install -y wrk" in stdout
    assert "asyncio client" in results["settings"]["load_generator"]
    points = _points(results["scenarios"]["chat"])
    assert set(points) == {"gateway", "baseline", "raw"}
    assert all(p["tool"] == "asyncio-client" and p["requests"] > 0 for p in points.values())
    memory = results["scenarios"]["memory"]["summary"]
    assert all(m["requests"] == 2000 for m in memory.values())


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
    assert "BENCH_JSON" in script
    single = _lua_script([b"{}"], 0, "/tmp/flag")
    assert "function request()" not in single  # one body: wrk's static request


def test_wrk_script_sends_headers() -> None:
    # Parsed by wrk's LuaJIT in the quick run's keys scenario: "[[" then "[=[" would not parse.
    script = _lua_script([b"{}"], 0, "/tmp/flag", {"Authorization": "Bearer sk-x"})
    assert "wrk.headers[ [=[Authorization]=] ] = [=[Bearer sk-x]=]" in script
