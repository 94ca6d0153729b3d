"""Servers as processes, the run context the scenarios share, and the run itself.

Every target runs in its own process (``start_new_session``, pinned to the server CPU),
the load generator in another (pinned to the load CPU), and this process only starts,
measures and stops them.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import load
from .payloads import PROXY_DROP_MODEL, PROXY_MODEL, SEED_MODEL, TTFT_SETTINGS, chat_body

__all__ = [
    "REPO",
    "SCENARIOS",
    "Context",
    "Server",
    "ServerError",
    "free_port",
    "http_request",
    "normalise",
]

REPO = Path(__file__).resolve().parent.parent
# In run order; each name is a module in benchmarks/scenarios/.
SCENARIOS = (
    "chat",
    "chat-seed",
    "chat-sync",
    "stream",
    "responses",
    "ttft",
    "proxy",
    "keys",
    "scaleout",
    "startup",
    "memory",
    "soak",
)
CHAT_PATH = "/v1/chat/completions"
READY_BODY = chat_body("bench-chat")


class ServerError(RuntimeError):
    """A target could not be started or stopped answering."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_request(
    port: int, method: str, path: str, body: bytes = b"", timeout: float = 30.0
) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body). Chunked bodies are decoded."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body else {}
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


_ID = re.compile(rb"chatcmpl-[0-9a-f-]{36}")
_CREATED = re.compile(rb'"created":\d+')


def normalise(body: bytes) -> bytes:
    """A response with its id and timestamp values masked (their length is kept)."""
    body = _ID.sub(lambda m: b"chatcmpl-" + b"x" * (len(m.group()) - 9), body)
    return _CREATED.sub(lambda m: b'"created":' + b"0" * (len(m.group()) - 10), body)


def cpu_ticks(cpus: set[int] | None) -> tuple[int, int]:
    """(stolen, all) clock ticks so far of ``cpus`` (None: every CPU), from /proc/stat;
    (0, 0) where there is none. Stolen: the time a virtual machine's CPU was ready to
    run but the hypervisor ran someone else."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return 0, 0
    stolen = every = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or (name == "cpu") != (cpus is None):
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        ticks = [int(x) for x in rest.split()]
        stolen += ticks[7] if len(ticks) > 7 else 0
        every += sum(ticks[:8])
    return stolen, every


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                pass
    return found


def _rss_tree(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, in bytes."""
    total = 0
    for current in _tree(pid):
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def _fds_tree(pid: int) -> int:
    """Open file descriptors of ``pid`` and all its descendants."""
    total = 0
    for current in _tree(pid):
        try:
            total += len(os.listdir(f"/proc/{current}/fd"))
        except OSError:
            pass
    return total


# Lines that start a traceback or an error the event loop caught in a callback.
_ERROR_LINES = ("Traceback (most recent call last)", "Exception in callback", "Task exception")
# The targets that are this gateway (of this checkout or of --before), whose logs count.
_OURS = ("gateway", "gw-", "before")


@dataclass
class Server:
    """One target process: started, polled until it answers, measured, stopped."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO
    cpus: set[int] | None = None
    ready_path: str = CHAT_PATH
    ready_body: bytes = READY_BODY
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cpus = self.cpus
        log = self.log_path.open("ab")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopping it stops its workers too
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        log.close()

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds from process start to the first 200 answer to a chat request."""
        assert self.proc is not None
        deadline = self.started_at + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with status {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                status, _ = http_request(self.port, "POST", self.ready_path, self.ready_body, 5)
                if status == 200:
                    return time.perf_counter() - self.started_at
            except OSError:
                pass
            if time.perf_counter() > deadline:
                raise ServerError(f"{self.name} did not answer within {timeout:g} s")
            time.sleep(0.005)

    def rss(self) -> int:
        assert self.proc is not None
        return _rss_tree(self.proc.pid)

    def fds(self) -> int:
        assert self.proc is not None
        return _fds_tree(self.proc.pid)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far (None off Linux)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as stat:  # type: ignore[union-attr]
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def errors(self) -> list[str]:
        """The log's tracebacks and loop callback errors (their first lines): a target
        that logged one served the run with a bug, whatever its figures say."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line for line in text if line.startswith(_ERROR_LINES)]

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass


# Targets.

TARGET_LABELS = {
    "gateway": "this gateway (python -m gateway)",
    "gw-observed": "this gateway with metrics, request ids and a no-op logging callback",
    "gw-off": "this gateway with metrics and request ids off, no callbacks",
    "baseline": "bare Starlette + uvicorn + msgspec",
    "raw": "bare ASGI callable on uvicorn",
    "litellm": "LiteLLM proxy",
    "mock": "the mock timing served by the bare Starlette app",
    "upstream": "the upstream (bare ASGI callable on uvicorn) called directly",
    "forwarder": "bare Starlette endpoint forwarding with one shared aiohttp session",
    "before": "this gateway as it was at the commit --before names (same config)",
    # (with --after, "gateway" is the gateway of that commit instead of this checkout)
}


# The gateway with its per-request observability on and off (the chat scenario's A/B):
# each a change to gateway_config().
GATEWAY_VARIANTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "gw-observed": lambda config: config["litellm_settings"].update(
        callbacks=["benchmarks.loggers.noop_logger"]
    ),
    "gw-off": lambda config: config.update(
        gateway_settings={"metrics": False, "request_ids": False}
    ),
}


def gateway_config(upstream_port: int | None = None) -> dict[str, Any]:
    """The config.yaml every gateway run serves."""
    models: list[dict[str, Any]] = [
        {"model_name": "bench-chat", "litellm_params": {"model": "bench-async/chat"}},
        {"model_name": SEED_MODEL, "litellm_params": {"model": "bench-seed/chat"}},
        {"model_name": "bench-chat-sync", "litellm_params": {"model": "bench-sync/chat"}},
        {"model_name": "bench-stream", "litellm_params": {"model": "bench-async/stream"}},
        {"model_name": "bench-stream-sync", "litellm_params": {"model": "bench-sync/stream"}},
        {"model_name": "bench-ttft", "litellm_params": {"model": "mock/ttft", **TTFT_SETTINGS}},
    ]
    if upstream_port is not None:
        # The upstream sees the model the client asked for, as with the forwarder.
        models += [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{name}",
                    "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                    "api_key": "bench-key",
                },
            }
            for name in (PROXY_MODEL, PROXY_DROP_MODEL)
        ]
    return {
        "model_list": models,
        "litellm_settings": {
            "custom_provider_map": [
                {"provider": "bench-async", "custom_handler": "benchmarks.handlers.async_handler"},
                {"provider": "bench-sync", "custom_handler": "benchmarks.handlers.sync_handler"},
                {"provider": "bench-seed", "custom_handler": "benchmarks.handlers.seed_handler"},
            ]
        },
    }


def litellm_config(upstream_port: int | None = None) -> dict[str, Any]:
    """The equivalent LiteLLM config (handlers in ``litellm_bench_handlers.py``)."""
    config = gateway_config(upstream_port)
    for entry in config["model_list"]:
        if entry["model_name"] == "bench-ttft":
            entry["litellm_params"] = {"model": "bench-ttft/ttft"}
    # No auth, as the gateway runs here; recent LiteLLM refuses to start keyless without it.
    config["general_settings"] = {"dangerously_permit_weak_or_unset_master_key": True}
    config["litellm_settings"] = {
        "custom_provider_map": [
            {"provider": name, "custom_handler": f"litellm_bench_handlers.{attr}"}
            for name, attr in (
                ("bench-async", "async_handler"),
                ("bench-sync", "sync_handler"),
                ("bench-ttft", "ttft_handler"),
                ("bench-seed", "seed_handler"),
            )
        ]
    }
    return config


@dataclass
class Context:
    """What a scenario needs: settings, the load generator, and targets to start."""

    duration: float
    connections: list[int]
    quick: bool
    out_dir: Path
    connections_given: bool = False
    litellm: str | None = None
    tool: str = "wrk"
    pin: bool = True
    wrk_threads: int = 1
    soak_duration: float = 180.0
    memory_requests: int = 100_000
    startup_runs: int = 5
    # --before/--after REF: a target ("before", "gateway") served from the gateway and
    # providers packages of a commit, extracted into a folder of work_dir.
    trees: dict[str, Path] = field(default_factory=dict)
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    servers: list[Server] = field(default_factory=list)
    # target -> the error lines its logs held when stopped (``Server.errors``).
    log_errors: dict[str, list[str]] = field(default_factory=dict)
    echo: Callable[[str], None] = print
    # The share (%) of the server CPUs' time the hypervisor took during each throughput
    # run: what makes two runs of one server minutes apart differ by half on a shared
    # machine, reported beside the figures.
    stolen: list[float] = field(default_factory=list)

    @property
    def server_cpus(self) -> set[int] | None:
        return {0} if self.pin and (os.cpu_count() or 1) >= 2 else None

    @property
    def load_cpus(self) -> set[int] | None:
        return {1} if self.pin and (os.cpu_count() or 1) >= 2 else None

    def levels(self, default: Sequence[int]) -> list[int]:
        """The concurrency levels of a scenario: ``--connections`` when given."""
        return list(self.connections) if self.connections_given else sorted(default)

    def targets(self, *names: str) -> list[str]:
        """``names`` with ``litellm`` only when ``--litellm`` was given."""
        return [n for n in names if n != "litellm" or self.litellm]

    @property
    def before(self) -> bool:
        return "before" in self.trees

    def use_commit(self, target: str, ref: str) -> str:
        """Serve ``target`` (``before``, ``gateway``) from the ``gateway`` and
        ``providers`` packages of commit ``ref``; the commit's full hash."""
        commit = subprocess.run(
            ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        folder = self.work_dir / f"{target}-{commit[:12]}"
        folder.mkdir()
        archive = subprocess.run(
            ["git", "archive", commit, "gateway", "providers"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
        self.trees[target] = folder
        return commit

    # servers

    def server(
        self, target: str, *, upstream_port: int | None = None, cpus: set[int] | None = None
    ) -> Server:
        """A target, not started yet (on the server CPUs unless ``cpus`` says otherwise)."""
        port = free_port()
        log_path = self.work_dir / f"{target}-{port}.log"
        py = sys.executable
        env = {"PYTHONPATH": str(REPO)}
        if target == "gateway" or target in GATEWAY_VARIANTS or target == "before":
            settings = gateway_config(upstream_port)
            if target in GATEWAY_VARIANTS:
                GATEWAY_VARIANTS[target](settings)
            config = self.work_dir / f"gateway-{port}.yaml"
            config.write_text(yaml.safe_dump(settings, sort_keys=False))
            argv = [py, "-m", "gateway", "--config", str(config)]
            argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
            tree = self.trees.get(target)
            if tree is not None:
                # Its packages first; the benchmark handlers still come from this checkout.
                # providers/ was the import package itself before it held gateway_providers.
                env = {"PYTHONPATH": f"{tree}:{tree / 'providers'}:{REPO}"}
        elif target in ("baseline", "mock"):
            argv = [py, "-m", "benchmarks.servers.baseline", "--port", str(port)]
        elif target in ("raw", "upstream"):
            # The upstream shares its CPU with the load generator and must not be what
            # limits a proxy: Starlette's StreamingResponse cost ~590 us a 20-chunk
            # stream, about what a proxy spends, and capped every target's streams/s.
            argv = [py, "-m", "benchmarks.servers.raw", "--port", str(port)]
        elif target == "forwarder":
            if upstream_port is None:
                raise ValueError("the forwarder needs an upstream")
            argv = [py, "-m", "benchmarks.servers.forwarder", "--port", str(port)]
            argv += ["--upstream", f"http://127.0.0.1:{upstream_port}/v1"]
        elif target == "litellm":
            assert self.litellm is not None
            argv = self._litellm_argv(port, upstream_port)
            env = {
                "LITELLM_LOG": "ERROR",
                "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
            }
        else:
            raise ValueError(f"unknown target {target!r}")
        server = Server(target, argv, port, log_path, env=env, cpus=cpus or self.server_cpus)
        if target == "litellm":
            server.cwd = self.work_dir
        elif target in self.trees:
            # ``python -m`` puts the working directory first on sys.path: there, the
            # commit's packages are found before this checkout's.
            server.cwd = self.trees[target]
        return server

    def _litellm_argv(self, port: int, upstream_port: int | None) -> list[str]:
        folder = self.work_dir / f"litellm-{port}"
        folder.mkdir()
        handlers = Path(__file__).with_name("litellm_handlers.py")
        shutil.copy(handlers, folder / "litellm_bench_handlers.py")
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump(litellm_config(upstream_port), sort_keys=False))
        assert self.litellm is not None
        return [
            self.litellm,
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ]

    def start(
        self, target: str, *, upstream_port: int | None = None, cpus: set[int] | None = None
    ) -> Server:
        """A target started and answering (stopped at the end of the scenario)."""
        server = self.server(target, upstream_port=upstream_port, cpus=cpus)
        self.servers.append(server)
        server.start()
        server.wait_ready(120 if target == "litellm" else 30)
        return server

    def start_all(
        self, targets: Sequence[str], *, upstream_port: int | None = None
    ) -> tuple[dict[str, Server], dict[str, str]]:
        """Start the targets together, then wait for each; one that fails is reported,
        not fatal."""
        pending = [self.server(t, upstream_port=upstream_port) for t in targets]
        for server in pending:
            self.servers.append(server)
            server.start()
        started: dict[str, Server] = {}
        failed: dict[str, str] = {}
        for server in pending:
            try:
                server.wait_ready(120 if server.name == "litellm" else 30)
                started[server.name] = server
            except ServerError as exc:
                failed[server.name] = str(exc)
                self.echo(f"  ! {server.name} did not start: {exc}")
                server.stop()
        return started, failed

    def progress(
        self,
        label: str,
        server: Server | None = None,
        *,
        seconds: float | None = None,
        answers: int | None = None,
        every: float = 5.0,
    ) -> Callable[[int | None], None]:
        """An ``on_tick`` for a long run: a line on stderr every ``every`` seconds with
        the time, the answers so far when the load generator counts them, and the
        server's RSS; ``seconds`` and ``answers`` are the run's goal."""
        start = last = time.perf_counter()

        def tick(done: int | None) -> None:
            nonlocal last
            now = time.perf_counter()
            if now - last < every:
                return
            last = now
            parts = [f"{now - start:.0f}" + (f" of {seconds:g} s" if seconds else " s")]
            if done is not None:
                parts.append(f"{done:,}" + (f" of {answers:,}" if answers else "") + " answers")
            if server is not None:
                parts.append(f"RSS {server.rss() / 1024 / 1024:.1f} MB")
            print(f"  ... {label}: {', '.join(parts)}", file=sys.stderr, flush=True)

        return tick

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()
            # The gateway's own targets only: the references have their known faults (the
            # bare aiohttp forwarder logs a traceback for each stale keep-alive
            # connection it does not retry; LiteLLM logs plenty).
            found = server.errors() if server.name.startswith(_OURS) else []
            if found:
                self.log_errors.setdefault(server.name, []).extend(found)
                self.echo(f"  ! {server.name} logged {len(found)} error(s): {found[0][:160]}")
        self.servers.clear()

    # load

    def throughput(
        self,
        server: Server,
        bodies: Sequence[bytes],
        connections: int,
        *,
        duration: float | None = None,
        requests: int = 0,
        on_tick: Callable[[int | None], None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Requests per second and latency percentiles from wrk (or the asyncio client),
        and ``stolen``: the % of the server CPUs' time the hypervisor took meanwhile."""
        before = cpu_ticks(self.server_cpus)
        cpu_before = server.cpu_seconds()
        result = self._throughput(
            server,
            bodies,
            connections,
            duration=duration,
            requests=requests,
            on_tick=on_tick,
            headers=headers,
        )
        after = cpu_ticks(self.server_cpus)
        cpu_after = server.cpu_seconds()
        if cpu_before is not None and cpu_after is not None and result.get("requests"):
            # The server's own CPU a request: what time stolen from it does not change.
            result["cpu_us"] = round((cpu_after - cpu_before) / result["requests"] * 1e6, 1)
        if after[1] > before[1]:
            stolen = result["stolen"] = round(
                100 * (after[0] - before[0]) / (after[1] - before[1]), 1
            )
            self.stolen.append(stolen)
        return result

    def _throughput(
        self,
        server: Server,
        bodies: Sequence[bytes],
        connections: int,
        *,
        duration: float | None,
        requests: int,
        on_tick: Callable[[int | None], None] | None,
        headers: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        seconds = self.duration if duration is None else duration
        if self.tool == "wrk":
            return load.wrk_run(
                server.url + CHAT_PATH,
                bodies,
                connections=connections,
                duration=seconds if not requests else max(seconds, 600),
                requests=requests,
                threads=self.wrk_threads,
                cpus=self.load_cpus,
                on_tick=on_tick,
                headers=headers,
            )
        return load.client_run(
            server.port,
            CHAT_PATH,
            bodies,
            connections=connections,
            duration=seconds if not requests else max(seconds, 600),
            requests=requests or -1,
            cpus=self.load_cpus,
            on_tick=on_tick,
            headers=headers,
        )

    def streams(
        self,
        server: Server,
        body: bytes,
        connections: int,
        duration: float | None = None,
        *,
        requests: int = -1,
        drop_after: int = 0,
        rate: float = 0.0,
    ) -> dict[str, Any]:
        """Per-chunk timing of streaming requests from the asyncio client; with
        ``drop_after`` each client hangs up after that many events; with ``rate`` the
        connections send that many a second in all (paced, not as fast as answered)."""
        return load.client_run(
            server.port,
            CHAT_PATH,
            [body],
            connections=connections,
            duration=self.duration if duration is None else duration,
            requests=requests,
            stream=True,
            drop_after=drop_after,
            cpus=self.load_cpus,
            rate=rate,
        )

    def same_bytes(
        self, servers: dict[str, Server], body: bytes, reference: str = "gateway"
    ) -> dict[str, bool]:
        """Whether each target answers ``body`` with the reference's bytes (ids masked)."""
        answers: dict[str, bytes] = {}
        for name, server in servers.items():
            if name == "litellm":
                continue  # LiteLLM answers its own shape (more fields); same work, not bytes
            try:
                status, payload = http_request(server.port, "POST", CHAT_PATH, body)
            except OSError as exc:
                self.echo(f"  ! {name}: {exc}")
                continue
            answers[name] = normalise(payload) if status == 200 else b"HTTP %d" % status
        if reference not in answers:
            return {}
        result = {}
        for name, answer in answers.items():
            if name == reference:
                continue
            result[name] = answer == answers[reference]
            if not result[name]:
                self.echo(
                    f"  ! {name} answers other bytes than {reference}:\n"
                    f"    {reference}: {answers[reference][:300]!r}\n"
                    f"    {name}: {answer[:300]!r}"
                )
        return result


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory = round(int(first.split()[1]) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    versions = {}
    for name in ("uvicorn", "starlette", "msgspec", "anyio", "httpx", "httptools", "uvloop"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:  # no git
        commit = ""
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gb": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "wrk": load.wrk_version(),
        "commit": commit or None,
    }


def litellm_version(path: str) -> str | None:
    """What ``PATH --version`` says (LiteLLM prints "LiteLLM: Current Version = X")."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"Version = (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else None


def now_stamp() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
