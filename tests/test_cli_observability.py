"""The ``gateway`` command's logs and metrics: real subprocesses, two workers."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.test_cli import run_cli, start, start_workers  # noqa: F401 (fixture)

HANDLER = """
from gateway import CustomLLM


class Boom(CustomLLM):
    async def acompletion(self, *args, **kwargs):
        raise RuntimeError("handler bug with internals")


boom = Boom()
"""

CONFIG = """
model_list:
  - model_name: m
    litellm_params: {model: mock/m, mock_response: "the secret answer"}
  - model_name: boom
    litellm_params: {model: boom/x}
litellm_settings:
  custom_provider_map:
    - {provider: boom, custom_handler: boom_handler.boom}
general_settings:
  master_key: sk-cli
"""

AUTH = {"Authorization": "Bearer sk-cli"}
PROMPT = "the secret prompt"


def _write(folder: Path) -> Path:
    (folder / "boom_handler.py").write_text(textwrap.dedent(HANDLER))
    path = folder / "config.yaml"
    path.write_text(CONFIG)
    return path


def _worker(response: httpx.Response) -> str:
    """Which worker answered: a made-up request id starts with its process's prefix."""
    return response.headers["x-request-id"][:20]


def _chat_series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("route") == "chat_completions" or s.name.startswith("gateway_tokens"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_two_workers_metrics_are_whole_from_either_and_logs_are_json(start, tmp_path: Path) -> None:  # noqa: F811
    config = _write(tmp_path)
    server, url = start_workers(
        start,
        "--config",
        str(config),
        "--workers",
        "2",
        "--access-log",
        "--log-format",
        "json",
    )
    body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}]}
    workers: dict[str, int] = {}
    deadline = time.monotonic() + 30
    n = 0
    # New connections until both workers answered some.
    while len(workers) < 2 or n < 6:
        assert time.monotonic() < deadline, workers
        with httpx.Client(base_url=url, timeout=10) as client:
            r = client.post("/v1/chat/completions", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        workers[_worker(r)] = workers.get(_worker(r), 0) + 1
        n += 1

    failed = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "boom", "messages": [{"role": "user", "content": PROMPT}]},
        headers={**AUTH, "x-request-id": "boom-cli-1"},
        timeout=10,
    )
    assert failed.status_code == 500
    assert failed.headers["x-request-id"] == "boom-cli-1"
    assert "handler bug" not in failed.text and "Traceback" not in failed.text
    assert failed.json()["error"]["request_id"] == "boom-cli-1"

    # Every worker's scrape, once the snapshots caught up, counts all n requests.
    try:
        _check_scrapes(url, n)
    finally:
        assert server.stop() == 0
    _check_logs(server, n)


def _check_scrapes(url: str, n: int) -> None:
    key = (
        "gateway_requests_total",
        (
            ("deployment", "m/0"),
            ("model_group", "m"),
            ("route", "chat_completions"),
            ("status", "200"),
        ),
    )
    scraped: dict[str, dict[Any, float]] = {}
    deadline = time.monotonic() + 30
    while len(scraped) < 2 or any(s.get(key) != n for s in scraped.values()):
        assert time.monotonic() < deadline, (n, {w: s.get(key) for w, s in scraped.items()})
        with httpx.Client(base_url=url, timeout=10) as client:
            r = client.get("/metrics")
        assert r.status_code == 200
        scraped[_worker(r)] = _chat_series(r.text)
        time.sleep(0.1)
    first, second = scraped.values()
    assert first == second
    tokens = (
        "gateway_tokens_total",
        (("deployment", "m/0"), ("direction", "output"), ("model_group", "m")),
    )
    assert first[tokens] == 20 * n  # mock_response reports 20 completion tokens


def _check_logs(server: Any, n: int) -> None:
    stdout = "".join(server.stdout)
    stderr = "".join(server.stderr)
    access = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    chats = [a for a in access if a.get("route") == "chat_completions"]
    assert len(chats) == n + 1
    boom = [a for a in chats if a["request_id"] == "boom-cli-1"]
    assert len(boom) == 1
    assert boom[0]["status"] == 500 and boom[0]["model_group"] == "boom"
    ok = next(a for a in chats if a["status"] == 200)
    assert ok["model_group"] == "m" and ok["deployment"] == "m/0" and ok["attempts"] == 1
    assert ok["tokens_in"] == 10 and ok["tokens_out"] == 20
    assert ok["client"] == "127.0.0.1" and ok["duration_ms"] > 0
    assert {"time", "level", "logger"} <= set(ok)
    assert PROMPT not in stdout + stderr and "the secret answer" not in stdout + stderr
    assert "sk-cli" not in stdout + stderr
    # The handler's failure: one JSON line on stderr with its traceback and request id.
    errors = [json.loads(line) for line in stderr.splitlines() if "boom-cli-1" in line]
    assert len(errors) == 1, stderr
    assert errors[0]["level"] == "ERROR"
    assert "RuntimeError: handler bug with internals" in errors[0]["exception"]


LOG_CONFIG = """
version: 1
disable_existing_loggers: false
formatters:
  mine: {format: "MINE %(name)s %(message)s"}
handlers:
  out: {class: logging.StreamHandler, formatter: mine, stream: ext://sys.stdout}
loggers:
  gateway.access: {handlers: [out], level: INFO, propagate: false}
"""


def test_log_config_file_and_text_lines_name_the_request(start, tmp_path: Path) -> None:  # noqa: F811
    config = _write(tmp_path)
    (tmp_path / "logging.yaml").write_text(LOG_CONFIG)
    server = start(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0",
        "--log-config", str(tmp_path / "logging.yaml"),
    )  # fmt: skip
    url = server.wait_for_line(r"listening on (http://127\.0\.0\.1:\d+)")[1]
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": PROMPT}]},
        headers={**AUTH, "x-request-id": "from-file-1"},
        timeout=10,
    )
    assert r.status_code == 200
    deadline = time.monotonic() + 10
    while "from-file-1" not in "".join(server.stdout):
        assert time.monotonic() < deadline, server.stdout
        time.sleep(0.05)
    assert server.stop() == 0
    (line,) = [x for x in server.stdout if "from-file-1" in x]
    assert line.startswith('MINE gateway.access 127.0.0.1 "POST /v1/chat/completions" 200')
    assert "model_group=m" in line and "deployment=m/0" in line and PROMPT not in line


def test_text_logs_end_with_the_request_id(start, tmp_path: Path) -> None:  # noqa: F811
    config = _write(tmp_path)
    server = start("--config", str(config), "--host", "127.0.0.1", "--port", "0")
    url = server.wait_for_line(r"listening on (http://127\.0\.0\.1:\d+)")[1]
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "boom", "messages": [{"role": "user", "content": PROMPT}]},
        headers={**AUTH, "x-request-id": "text-boom-1"},
        timeout=10,
    )
    assert r.status_code == 500
    assert server.stop() == 0
    stderr = "".join(server.stderr)
    assert "failed unexpectedly: handler bug with internals [request_id=text-boom-1]" in stderr
    assert "RuntimeError: handler bug with internals" in stderr  # the traceback follows
    # No access log unless asked for.
    assert "text-boom-1" not in "".join(server.stdout)


def test_a_broken_log_config_exits_2(tmp_path: Path) -> None:
    config = _write(tmp_path)
    (tmp_path / "logging.yaml").write_text("version: [unclosed")
    result = run_cli("--config", str(config), "--log-config", str(tmp_path / "logging.yaml"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"gateway: error: {tmp_path / 'logging.yaml'}: ")
    (tmp_path / "logging.ini").write_text("[loggers]\n")
    result = run_cli("--config", str(config), "--log-config", str(tmp_path / "logging.ini"))
    assert result.returncode == 2 and "must be a .json, .yaml or .yml file" in result.stderr
