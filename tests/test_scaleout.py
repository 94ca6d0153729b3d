"""Two gateway processes sharing one real redis-server: limits, cooldowns and the
response cache hold across instances, and an outage of Redis fails no request."""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.redis_server import RedisServer

START_TIMEOUT = 30.0
_LISTENING = re.compile(r"^gateway: listening on http://127\.0\.0\.1:(\d+) ", re.M)


class Instance:
    """``python -m gateway`` on a free loopback port: started by the constructor, ready
    once ``wait_listening()`` returns."""

    def __init__(self, config: Path) -> None:
        # --port 0: the server binds a free port itself and says which (no pick-then-bind
        # race with the other workers' servers).
        self.log = Path(tempfile.mkstemp(".log", "gateway-", dir=config.parent)[1])
        self._out = open(self.log, "wb")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gateway", "--config", str(config)),
                *("--host", "127.0.0.1", "--port", "0", "--log-level", "warning"),
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            found = _LISTENING.search(self.output())
            if found:
                self.port = int(found[1])
                self.url = f"http://127.0.0.1:{self.port}"
                return
            time.sleep(0.05)
        raise AssertionError(f"the gateway never said where it listens: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL and reap. No test here looks at how an instance stops, and a graceful
        stop (uvicorn's 0.1 s tick and pause, the lifespan) took 0.2-0.3 s a test."""
        if self.process.returncode is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._out.close()


def test_a_test_redis_never_takes_a_neighbours_port_for_its_own(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker's server on the port picked: the new one must notice that the
    answer is not its own and move, not share the neighbour (whose flushes and stops
    would cross into its tests)."""
    import tests.redis_server

    ports = iter([redis_server.port])
    real = tests.redis_server.free_port
    monkeypatch.setattr(tests.redis_server, "free_port", lambda: next(ports, None) or real())
    second = RedisServer(redis_server.binary)
    try:
        assert second.port != redis_server.port
        assert second.process is not None
        assert second._answering_pid() == second.process.pid
    finally:
        second.close()


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
        # Started together, waited for in turn: the startups overlap.
        for instance in instances[-n:]:
            instance.wait_listening()
        return instances[-n:]

    yield start
    for instance in instances:
        instance.kill()


def chat(base: str, model: str = "m", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30)


def alternating(
    instances: tuple[Instance, ...], n: int, call: Any, landed: Callable[[], object]
) -> list[int]:
    """``call(url)`` n times, round robin over the instances, one after the other. An
    instance's counts reach Redis with its next read or within 2 ms (the documented lag),
    and a loaded machine fires that timer late: after an answer, ``landed()`` (what the
    answer adds to Redis) is awaited. A pause older than ``FRESH`` makes each instance
    read Redis again rather than trust its view."""
    from gateway.router.redis_state import FRESH  # imports redis-py: not at collection

    codes = []
    for i in range(n):
        before = landed()
        codes.append(call(instances[i % len(instances)].url))
        deadline = time.monotonic() + 10
        while codes[-1] == 200 and landed() == before:
            assert time.monotonic() < deadline, f"request {i} never reached Redis"
            time.sleep(0.005)
        time.sleep(FRESH + 0.01)
    return codes


def counted(port: int, match: str, keys: bool = False) -> float:
    """What Redis holds under the keys that ``match``, summed: the requests counted in
    usage hashes (their ``r:<second>`` fields) and the spend recorded (strings); with
    ``keys``, how many keys there are."""
    import redis

    client = redis.Redis(port=port)
    try:
        if keys:
            return sum(1 for _ in client.scan_iter(match))
        total = 0.0
        for key in client.scan_iter(match):
            if client.type(key) == b"hash":
                fields = client.hgetall(key).items()
                total += sum(int(value) for field, value in fields if field.startswith(b"r:"))
            else:
                total += float(client.get(key) or 0)
        return total
    finally:
        client.close()


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


def test_redis_killed_mid_load_fails_nothing_and_sharing_resumes(
    redis_server: RedisServer, pair: Any
) -> None:
    a, b = pair(
        {
            "model_list": [
                {
                    "model_name": "m",
                    "litellm_params": {"model": "mock/m", "mock_response": "ok", "rpm": 100000},
                },
                {
                    "model_name": "limited",
                    "litellm_params": {"model": "mock/l", "mock_response": "ok", "rpm": 10},
                },
            ],
            "router_settings": shared(redis_server, queue_timeout=0, redis_timeout=0.2),
        }
    )
    statuses: list[int] = []
    stop = threading.Event()

    def load(base: str) -> None:
        with httpx.Client(timeout=30) as client:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            while not stop.is_set():
                statuses.append(client.post(f"{base}/v1/chat/completions", json=body).status_code)

    threads = [threading.Thread(target=load, args=(x.url,)) for x in (a, b, a, b)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        redis_server.kill()
        deadline = time.monotonic() + 10
        while (degraded := httpx.get(f"{a.url}/health/readiness").json())["redis"] != (
            "unreachable"
        ):
            assert time.monotonic() < deadline, degraded
            time.sleep(0.02)
        assert degraded["status"] == "degraded"
        time.sleep(0.3)  # a while of load on local counters
        # Back soon after its first ping within the backoff (from 50 ms, doubling).
        redis_server.start()
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert len(statuses) > 20 and set(statuses) == {200}, set(statuses)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # back within the reconnect backoff
        ready = [httpx.get(f"{x.url}/health/readiness").json() for x in (a, b)]
        if all(r["status"] == "healthy" for r in ready):
            break
        time.sleep(0.1)
    assert [r["redis"] for r in ready] == ["connected", "connected"]
    metrics = httpx.get(f"{a.url}/metrics").text
    # At least the kill; a loaded machine may also have timed out a call (a fallback too).
    outages = re.search(r"^gateway_redis_outages_total (\S+)$", metrics, re.M)
    assert outages is not None and float(outages[1]) >= 1
    assert "Redis at redis://127.0.0.1" in a.output() and "is back" in a.output()
    # Sharing resumed: rpm 10 holds across both again.
    codes = alternating(
        (a, b),
        20,
        lambda url: chat(url, model="limited").status_code,
        lambda: counted(redis_server.port, "{gw}:use:limited/*"),
    )
    assert codes.count(200) == 10 and codes.count(429) == 10, codes


MASTER = "sk-master-scaleout"
PRICED = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}


def keys_config(redis_server: RedisServer, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {"model": "mock/m", "mock_response": "hello there"},
                "model_info": PRICED,
            },
            {"model_name": "other", "litellm_params": {"model": "mock/o"}},
        ],
        "general_settings": {
            "master_key": MASTER,
            "database_url": f"sqlite:///{tmp_path}/keys.db",
        },
        "router_settings": shared(redis_server),
        **extra,
    }


def new_key(base: str, **fields: Any) -> str:
    answer = httpx.post(
        f"{base}/key/generate", json=fields, headers={"Authorization": f"Bearer {MASTER}"}
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["key"])


def keyed_chat(base: str, key: str, model: str = "m", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(
        f"{base}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_key_limits_hold_across_two_instances(
    redis_server: RedisServer, pair: Any, tmp_path: Path
) -> None:
    a, b = pair(keys_config(redis_server, tmp_path))

    limited = new_key(a.url, rpm_limit=5)
    codes = alternating(
        (a, b),
        10,
        lambda url: keyed_chat(url, limited).status_code,
        lambda: counted(redis_server.port, "{gw}:k:*:use"),
    )
    assert codes == [200] * 5 + [429] * 5, codes

    # Spend against a budget: each answer costs 0.05 (10 prompt + 20 completion tokens);
    # the database hears of it only later, Redis within the lag above.
    budget = new_key(a.url, max_budget=0.12)
    codes = alternating(
        (a, b),
        4,
        lambda url: keyed_chat(url, budget).status_code,
        lambda: counted(redis_server.port, "{gw}:k:*:spend:*"),
    )
    assert codes == [200, 200, 200, 429], codes
    refused = keyed_chat(b.url, budget)
    assert refused.json()["error"]["code"] == "budget_exceeded"


def test_an_answer_cached_through_one_is_a_hit_on_the_other(
    redis_server: RedisServer, pair: Any
) -> None:
    a, b = pair(
        {
            "model_list": [
                {"model_name": "m", "litellm_params": {"model": "mock/m", "mock_delay": 0.01}}
            ],
            "router_settings": shared(redis_server),
            "litellm_settings": {
                "cache": True,
                "cache_params": {"type": "redis", "ttl": 60, "namespace": "t"},
            },
        }
    )
    for stored, stream in enumerate((False, True), 1):
        first = chat(a.url, stream=stream, messages=[{"role": "user", "content": f"{stream}"}])
        assert first.status_code == 200 and first.headers["x-gateway-cache-hit"] == "false"
        # The store is written after the answer: until it is in Redis.
        deadline = time.monotonic() + 10
        while counted(redis_server.port, "t:*", keys=True) < stored:
            assert time.monotonic() < deadline, "the answer was never stored"
            time.sleep(0.01)
        hit = chat(b.url, stream=stream, messages=[{"role": "user", "content": f"{stream}"}])
        assert hit.headers["x-gateway-cache-hit"] == "true"
        assert hit.content == first.content
        if stream:
            assert hit.headers["content-type"].startswith("text/event-stream")
            assert hit.text.endswith("data: [DONE]\n\n") and hit.text.count("data: ") > 2


def test_a_hung_redis_is_a_fallback_not_a_stall(redis_server: RedisServer, pair: Any) -> None:
    """Redis stopped (SIGSTOP: it accepts nothing, answers nothing): requests do not wait
    on it beyond redis_timeout, none fails, and sharing resumes once it runs again."""
    (a,) = pair(
        {
            "model_list": [
                {
                    "model_name": "m",
                    "litellm_params": {"model": "mock/m", "mock_response": "ok", "rpm": 5},
                }
            ],
            "router_settings": shared(redis_server, queue_timeout=0, redis_timeout=0.05),
        },
        n=1,
    )
    assert chat(a.url).status_code == 200
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        # Local counters now: the one request counted above plus four more fill rpm 5.
        codes = [chat(a.url).status_code for _ in range(6)]
        elapsed = time.monotonic() - started
        ready = httpx.get(f"{a.url}/health/readiness")
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert codes == [200] * 4 + [429] * 2, codes
    # Generous: six requests that each waited out a 50 ms timeout would take 0.3 s;
    # only the first one does.
    assert elapsed < 5, elapsed
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    deadline = time.monotonic() + 10
    while httpx.get(f"{a.url}/health/readiness").json()["status"] != "healthy":
        assert time.monotonic() < deadline, a.output()
        time.sleep(0.1)


HOLD = 1.0  # seconds the in-flight tests' held requests take: the checks run meanwhile


def test_in_flight_is_shared_and_a_crashed_instance_leaks_nothing(
    redis_server: RedisServer, pair: Any
) -> None:
    a, b = pair(
        {
            "model_list": [
                {
                    "model_name": "m",
                    "litellm_params": {
                        "model": "mock/m",
                        "mock_response": "ok",
                        "max_parallel_requests": 2,
                    },
                }
            ],
            "router_settings": shared(redis_server, queue_timeout=0),
        }
    )
    import redis

    client = redis.Redis(port=redis_server.port)
    key = "{gw}:if:m/0"

    def in_flight() -> int:
        return sum(int(v.split(b":")[0]) for v in client.hvals(key))

    def ours() -> int:  # the instances' own entries, not the ones planted below
        entries = client.hgetall(key).items()
        return sum(int(v.split(b":")[0]) for k, v in entries if k not in (b"dead", b"alive"))

    def held(base: str) -> httpx.Response:
        return chat(base, mock_delay=HOLD)  # the others answer at once

    def until(condition: Any) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, client.hgetall(key)
            time.sleep(0.01)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        holding = [pool.submit(held, a.url) for _ in range(2)]
        until(lambda: in_flight() == 2)  # both of a's counted in Redis
        busy = chat(b.url)
        assert busy.status_code == 429, busy.text
        assert not any(f.done() for f in holding)  # still held: the 429 was theirs
        assert [f.result().status_code for f in holding] == [200, 200]
    until(lambda: in_flight() == 0)
    assert chat(b.url).status_code == 200

    # An instance that died with requests in flight: its entry (count 2, expired) is
    # ignored and removed by the next read; a live one (count 1) still counts.
    now_ms = int(client.time()[0]) * 1000
    client.hset(key, mapping={"dead": f"2:{now_ms - 1}", "alive": f"1:{now_ms + 60_000}"})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        one = pool.submit(held, b.url)  # one of ours + alive's one = the limit of 2
        until(lambda: ours() == 1)  # b's one counted in Redis
        assert chat(a.url).status_code == 429
        assert not one.done()
        assert one.result().status_code == 200
    # b's freed slot reaches Redis within 2 ms of its answer, not at once (it failed so in
    # a full run under load): wait until only the planted entries are left.
    deadline = time.monotonic() + 5
    while not set(client.hkeys(key)) <= {b"dead", b"alive"}:
        assert time.monotonic() < deadline, client.hkeys(key)
        time.sleep(0.01)
    assert chat(a.url).status_code == 200  # alive's 1 + this 1: the dead 2 are not counted
    deadline = time.monotonic() + 5  # the freed slot is written within 2 ms, not at once
    while client.hkeys(key) != [b"alive"]:
        assert time.monotonic() < deadline, client.hkeys(key)
        time.sleep(0.01)
    client.close()


class Monitor:
    """Redis' MONITOR on a raw socket: every command clients send, as argument lists."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"MONITOR\r\n")
        assert self.sock.recv(5) == b"+OK\r\n"
        self.buffer = b""
        self.marks = itertools.count()

    def commands(self) -> list[list[str]]:
        """The commands Redis ran since the last call. Read up to a marker this sends on a
        connection of its own: Redis runs commands one at a time, so whatever a client
        had awaited before this call is ahead of it, and nothing rides on a quiet spell
        (a later command is in the next call's list)."""
        mark = f"gateway-test-mark-{next(self.marks)}"
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(f"ECHO {mark}\r\n".encode())
            assert sock.recv(64).startswith(b"$")
        quoted = f'"ECHO" "{mark}"\r\n'.encode()
        while quoted not in self.buffer:
            data = self.sock.recv(65536)
            assert data, "Redis closed the MONITOR connection"
            self.buffer += data
        before, _, self.buffer = self.buffer.partition(quoted)
        lines = before.rpartition(b"\r\n")[0]  # the marker's line start left out
        return [
            [
                arg.encode().decode("unicode_escape")
                for arg in re.findall(r'"((?:[^"\\]|\\.)*)"', line)
            ]
            for line in lines.decode(errors="replace").split("\r\n")
            if line.startswith("+") and " lua] " not in line  # not the script's own
        ]

    def close(self) -> None:
        self.sock.close()


# What redis-py sends on a new connection of its pool: not a request's round trip.
HANDSHAKE = frozenset({"HELLO", "CLIENT"})


def reads(commands: list[list[str]]) -> list[list[str]]:
    """The round trips a request awaited: every command but a script call that only
    writes (queued counters sent on their own, after the answer or meanwhile) and a
    new connection's handshake."""
    out = []
    for cmd in commands:
        if cmd[0].upper() in HANDSHAKE:
            continue
        if cmd[0].upper() == "EVALSHA":
            args = cmd[3 + int(cmd[2]) :]  # instance, triples, spend keys, writes
            if args[1] == "0" and args[2] == "0":
                continue
        out.append(cmd)
    return out


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_limited_per_key_and_per_deployment_makes_one_round_trip(
    redis_server: RedisServer, pair: Any, tmp_path: Path, stream: bool
) -> None:
    config = keys_config(redis_server, tmp_path)
    config["model_list"][0]["litellm_params"]["rpm"] = 1000
    config["model_list"][0]["litellm_params"]["max_parallel_requests"] = 50
    (a,) = pair(config, n=1)
    key = new_key(a.url, rpm_limit=1000, tpm_limit=100_000, max_parallel_requests=50)
    assert keyed_chat(a.url, key, stream=stream).status_code == 200  # loads key and script
    monitor = Monitor(redis_server.port)
    try:
        for _ in range(5):
            time.sleep(0.05)  # both views stale (> 20 ms): each request must read both
            monitor.commands()
            answer = keyed_chat(a.url, key, stream=stream)
            assert answer.status_code == 200, answer.text
            seen = reads(monitor.commands())
            assert len(seen) == 1, seen
            keys = seen[0][3 : 3 + int(seen[0][2])]
            # The deployment's three keys and the key's three, plus its spend.
            assert {k.split(":")[1] for k in keys} == {"cd", "use", "if", "k"}, keys
            assert sum(k.startswith("{gw}:k:") for k in keys) == 4, keys
    finally:
        monitor.close()


@pytest.mark.parametrize("keyed", [True, False])
@pytest.mark.parametrize("stream", [False, True])
def test_with_a_redis_cache_a_request_still_makes_one_round_trip(
    redis_server: RedisServer, pair: Any, tmp_path: Path, stream: bool, keyed: bool
) -> None:
    """Limits per key and per deployment and a response cache on the same Redis: the
    cache entry is read in the counters' script call, miss or hit."""
    config = keys_config(redis_server, tmp_path)
    config["model_list"][0]["litellm_params"]["rpm"] = 1000
    config["litellm_settings"] = {"cache": True, "cache_params": {"type": "redis", "ttl": 60}}
    (a,) = pair(config, n=1)
    key = new_key(a.url, rpm_limit=1000) if keyed else MASTER
    assert keyed_chat(a.url, key, stream=stream).status_code == 200  # loads key and script
    monitor = Monitor(redis_server.port)
    try:
        for i in range(6):
            time.sleep(0.05)  # the views stale (> 20 ms): each request must read them
            monitor.commands()
            content = f"{stream} {keyed} {i // 2}"  # each question twice: a miss, a hit
            answer = keyed_chat(
                a.url, key, stream=stream, messages=[{"role": "user", "content": content}]
            )
            assert answer.status_code == 200, answer.text
            hit = answer.headers["x-gateway-cache-hit"]
            assert hit == ("true" if i % 2 else "false"), (i, hit)
            sent = monitor.commands()
            deadline = time.monotonic() + 10
            while hit != "true" and not any(c[0].upper() == "SET" for c in sent):
                # A miss's answer is stored (SET) after it went out: the next request
                # (the same question) must find it.
                assert time.monotonic() < deadline, sent
                time.sleep(0.01)
                sent += monitor.commands()
            # SET: a miss's answer stored after it went out, not awaited by the request.
            seen = [c for c in reads(sent) if c[0].upper() != "SET"]
            assert len(seen) == 1 and seen[0][0].upper() == "EVALSHA", seen
            keys = seen[0][3 : 3 + int(seen[0][2])]
            assert any(":cd:" in k or k.endswith(":cd") for k in keys), keys  # the group's
            # The group's three keys, the key's four when it has limits, the cache entry.
            assert keys[:3] == ["{gw}:cd:m/0", "{gw}:use:m/0", "{gw}:if:m/0"], keys
            assert len(keys) == (8 if keyed else 4), keys
            assert keys[-1].startswith("gateway:") and len(keys[-1]) == len("gateway:") + 64
    finally:
        monitor.close()


async def test_reads_of_one_loop_turn_share_one_script_call(redis_server: RedisServer) -> None:
    import asyncio

    from gateway.shared import SharedRedis

    shared = SharedRedis(redis_server.url, timeout=1.0)
    a = [shared.key(part, "a") for part in ("cd", "use", "if")]
    b = [shared.key(part, "b") for part in ("cd", "use", "if")]
    spend = shared.key("spend", "k")
    assert await shared.sync(a, ()) is not None  # connected, script loaded
    shared.queue("r", a[1], 3)
    shared.queue("r", b[1], 5)
    shared.queue("s", spend, 1.5, 60)
    monitor = Monitor(redis_server.port)
    try:
        monitor.commands()
        only_a, b_and_spend, both = await asyncio.gather(
            shared.sync(a, ()), shared.sync(b, [spend]), shared.sync([*a, *b], ())
        )
        sent = monitor.commands()
    finally:
        monitor.close()
    sent = [cmd for cmd in sent if cmd[0].upper() not in HANDSHAKE]
    assert [cmd[0].upper() for cmd in sent] == ["EVALSHA"], sent
    assert sent[0][2] == "10"  # two triples (a once, though asked twice), a spend, 3 writes
    assert only_a is not None and b_and_spend is not None and both is not None
    assert [row[1] for row in only_a] == [3]  # requests in the last minute
    assert b_and_spend[0][1] == 5 and float(b_and_spend[1]) == 1.5
    assert [row[1] for row in both] == [3, 5]

    redis_server.kill()  # every waiting read is answered None (local counters), at once
    import anyio

    with anyio.fail_after(5):
        assert await asyncio.gather(shared.sync(a, ()), shared.sync(b, ())) == [None, None]
    await shared.aclose()


async def test_a_timeout_a_busy_event_loop_caused_does_not_mark_redis_down(
    redis_server: RedisServer,
) -> None:
    import asyncio

    from gateway.shared import SharedRedis

    shared = SharedRedis(redis_server.url, timeout=0.05)
    keys = [shared.key(part, "x") for part in ("cd", "use", "if")]
    for _ in range(50):  # connected and the script loaded (a loaded machine may be slow)
        shared.up = True
        if await shared.sync(keys, ()) is not None:
            break
        await asyncio.sleep(0.1)
    assert shared.up
    # What the warm-up counted (a slow connect on a loaded machine is an outage too).
    late, outages = shared.late, shared.outages
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)  # Redis answers nothing now
    try:
        read = asyncio.ensure_future(shared.sync(keys, ()))
        await asyncio.sleep(0.01)  # the call is sent and waiting
        time.sleep(0.3)  # then the loop is busy far past the 50 ms timeout
        assert await read is None  # answered locally...
        assert shared.up and shared.late == late + 1  # ...Redis not down
        assert shared.outages == outages
        # On an idle loop the same timeout is Redis' fault: down, local counters.
        assert await shared.sync(keys, ()) is None
        assert not shared.up and shared.outages == outages + 1
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
        await shared.aclose()


async def test_a_loop_that_stays_busy_still_finds_out_that_redis_hung(
    redis_server: RedisServer,
) -> None:
    """Every timeout late (a saturated loop) and none answered between: after
    LATE_LIMIT of them Redis counts as down, not a wait a call for as long as it lasts."""
    import asyncio

    from gateway.shared import LATE_LIMIT, SharedRedis

    shared = SharedRedis(redis_server.url, timeout=0.05)
    keys = [shared.key(part, "x") for part in ("cd", "use", "if")]
    for _ in range(50):
        shared.up = True
        if await shared.sync(keys, ()) is not None:
            break
        await asyncio.sleep(0.1)
    assert redis_server.process is not None
    # What the warm-up counted (a slow connect on a loaded machine is an outage too).
    late, outages = shared.late, shared.outages

    async def late_timeout() -> None:
        read = asyncio.ensure_future(shared.sync(keys, ()))
        await asyncio.sleep(0.01)
        time.sleep(0.12)  # the timeout fires over twice late: 0.12 > 2 * 0.05 + 0.005
        assert await read is None

    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        for n in range(1, LATE_LIMIT):
            await late_timeout()
            assert shared.up and shared.late == late + n
        redis_server.process.send_signal(signal.SIGCONT)
        # An answer between late timeouts starts the count again.
        assert await shared.sync(keys, ()) is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        for _ in range(LATE_LIMIT):
            assert shared.up
            await late_timeout()
        assert not shared.up and shared.outages == outages + 1
        assert shared.late == late + 2 * LATE_LIMIT - 1
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
        await shared.aclose()
