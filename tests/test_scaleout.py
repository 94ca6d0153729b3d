"""Two gateway processes sharing one real redis-server: limits, cooldowns and the
response cache hold across instances, and an outage of Redis fails no request."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.redis_server import RedisServer

START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Instance:
    """``python -m gateway`` on a free loopback port."""

    def __init__(self, config: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config.parent / f"gateway-{self.port}.log"
        self._out = open(self.log, "wb")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gateway", "--config", str(config)),
                *("--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"),
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"{self.url} never became live: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._out.close()


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Any]:
    instances: list[Instance] = []

    def start(config: dict[str, Any], n: int = 2) -> list[Instance]:
        path = write_config(tmp_path, config)
        for _ in range(n):
            instances.append(Instance(path))
        return instances[-n:]

    yield start
    for instance in instances:
        instance.stop()


def chat(base: str, model: str = "m", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30)


def shared(redis_server: RedisServer, **settings: Any) -> dict[str, Any]:
    return {"redis_url": redis_server.url, "redis_timeout": 0.5, **settings}


def test_rpm_holds_across_two_instances(redis_server: RedisServer, pair: Any) -> None:
    a, b = pair(
        {
            "model_list": [
                {
                    "model_name": "m",
                    "litellm_params": {"model": "mock/m", "mock_response": "ok", "rpm": 60},
                }
            ],
            "router_settings": shared(redis_server, queue_timeout=0),
        }
    )
    statuses: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        status = chat((a, b)[i % 2].url).status_code
        with lock:
            statuses.append(status)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(120)))
    assert set(statuses) <= {200, 429}, statuses
    assert 55 <= statuses.count(200) <= 65, statuses.count(200)


def test_cooldown_on_one_is_honoured_by_the_other(redis_server: RedisServer, pair: Any) -> None:
    a, b = pair(
        {
            "model_list": [
                {
                    "model_name": "m",
                    "litellm_params": {"model": "mock/good", "mock_response": "ok"},
                    "model_info": {"id": "good"},
                },
                {
                    "model_name": "m",
                    "litellm_params": {"model": "mock/bad", "mock_failure_rate": 1},
                    "model_info": {"id": "bad"},
                },
            ],
            "router_settings": shared(redis_server, allowed_fails=0, cooldown_time=60),
        }
    )
    for _ in range(50):  # until A picks the bad deployment once and cools it down
        if chat(a.url).status_code == 500:
            break
    else:
        pytest.fail("instance A never picked the failing deployment")
    time.sleep(0.2)
    answers = [chat(b.url) for _ in range(30)]
    assert [r.status_code for r in answers] == [200] * 30
    assert {r.headers["x-gateway-deployment"] for r in answers} == {"good"}
