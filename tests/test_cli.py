"""The ``gateway`` command, run as a real subprocess."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "examples" / "config.yaml"
START_TIMEOUT = 30.0  # generous: two shared, noisy cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def example_gateway() -> Iterator[str]:
    """The gateway on the example config, on a port it binds itself (``--port 0``: no
    pick-then-bind race with other tests' servers); its base URL."""
    server = Server("--config", str(EXAMPLE_CONFIG), "--host", "127.0.0.1", "--port", "0")
    try:
        port = server.wait_for_line(r"^gateway: listening on http://127\.0\.0\.1:(\d+) ")[1]
        url = f"http://127.0.0.1:{port}"
        server.wait_until_live(url)
        yield url
    finally:
        server.stop()


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


class Server:
    """A CLI process whose output is read in background threads."""

    def __init__(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
        )
        self.stdout_lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self.stdout.append(line)
                self.stdout_lines.put(line)
            else:
                self.stderr.append(line)

    def wait_for_line(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.stdout_lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(
            f"no line matching {pattern!r}; stdout={''.join(self.stdout)!r} "
            f"stderr={''.join(self.stderr)!r}"
        )

    def wait_until_live(self, base_url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "".join(self.stderr)
            try:
                if httpx.get(f"{base_url}/health/liveliness", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"{base_url} never became live; stderr={''.join(self.stderr)!r}")

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def start() -> Iterator:
    servers: list[Server] = []

    def start(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Server:
        server = Server(*args, cwd=cwd, env=env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


def write_config(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"gateway: error: {expected}\n"
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""


# -- errors: exit status 2 and one line ------------------------------------------------


def test_broken_config_exits_2_with_one_line(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        model_list:
          - model_name: ok
            litellm_params: {model: my-custom-llm/a}
          - model_name: broken
            litellm_params: {api_base: "http://127.0.0.1:9"}
        """,
    )
    result = run_cli("--config", "broken.yaml", cwd=tmp_path)
    assert_one_line_error(result, "broken.yaml: file not found")
    result = run_cli("--config", "config.yaml", cwd=tmp_path)
    assert_one_line_error(
        result, "config.yaml: model_list[1].litellm_params.model: required key missing"
    )


def test_invalid_yaml_exits_2(tmp_path: Path) -> None:
    write_config(tmp_path, "model_list:\n  - model_name: [x\n")
    result = run_cli("--config", str(tmp_path / "config.yaml"))
    assert result.returncode == 2
    assert re.fullmatch(
        r"gateway: error: \S+config\.yaml: line 3, column \d+: invalid YAML: .+\n", result.stderr
    )
    assert "Traceback" not in result.stderr


def test_missing_env_var_and_handler_errors_exit_2(tmp_path: Path) -> None:
    env_text = "general_settings:\n  master_key: os.environ/GW_CLI_TEST_UNSET\n"
    write_config(tmp_path, env_text)
    env_result = run_cli("--config", "config.yaml", cwd=tmp_path)
    assert_one_line_error(
        env_result,
        "config.yaml: general_settings.master_key: environment variable GW_CLI_TEST_UNSET "
        "is not set",
    )

    (tmp_path / "cli_boom_handler.py").write_text("import no_such_dependency_xyz\n")
    write_config(
        tmp_path,
        """
        litellm_settings:
          custom_provider_map:
          - {"provider": "p", "custom_handler": cli_boom_handler.handler}
        """,
    )
    result = run_cli("--config", "config.yaml", cwd=tmp_path)
    assert_one_line_error(
        result,
        "config.yaml: litellm_settings.custom_provider_map[0].custom_handler: importing handler "
        f"module {tmp_path / 'cli_boom_handler.py'} failed: ModuleNotFoundError: "
        "No module named 'no_such_dependency_xyz' (cli_boom_handler.py line 1)",
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--config", "x.yaml", "--port", "http"],
        ["--config", "x.yaml", "--port", "70000"],
        ["--config", "x.yaml", "--workers", "0"],
        ["--config", "x.yaml", "--log-level", "loud"],
        ["--config", "x.yaml", "--workers", "2", "--port", "0"],
        [],
    ],
)
def test_bad_arguments_exit_2(args: list[str], monkeypatch) -> None:
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: gateway")
    assert "gateway: error: " in result.stderr
    assert "Traceback" not in result.stderr


def test_console_script_reports_config_errors(tmp_path: Path) -> None:
    script = shutil.which("gateway", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the gateway console script is not installed next to this interpreter")
    result = subprocess.run(
        [script, "--config", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == f"gateway: error: {tmp_path / 'missing.yaml'}: file not found\n"


# -- serving -------------------------------------------------------------------------


def test_serves_the_example_config_and_stops_on_sigterm(start) -> None:
    server = start("--config", str(EXAMPLE_CONFIG), "--host", "127.0.0.1", "--port", "0")
    served = server.wait_for_line(r"^gateway: serving (\d+) models: (.*)$")
    assert served[1] == "5"
    assert served[2].split(", ") == [
        "test-model",
        "my-custom-model",
        "my-unixtime-model",
        "my-streaming-model",
        "my-embedding-model",
    ]
    listening = server.wait_for_line(r"^gateway: listening on http://127\.0\.0\.1:(\d+) ")
    base_url = f"http://127.0.0.1:{listening[1]}"
    server.wait_until_live(base_url)

    body = {"model": "my-custom-model", "messages": [{"role": "user", "content": "Hello"}]}
    for path in ("/v1/chat/completions", "/chat/completions"):
        response = httpx.post(base_url + path, json=body, timeout=10)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["choices"][0]["message"]["content"] == "Hi!"
        assert answer["model"] == "my-custom-model"
    models = httpx.get(f"{base_url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]][:2] == ["test-model", "my-custom-model"]

    assert server.stop() == 0
    stderr = "".join(server.stderr)
    assert "Traceback" not in stderr
    assert "Application shutdown complete" in stderr


def test_config_from_env_and_warnings_on_stdout(start, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        model_list:
          - model_name: canned
            litellm_params: {model: mock/x, mock_response: "canned answer"}
        litellm_settings:
          drop_parms: true
        """,
    )
    env = {**os.environ, "GATEWAY_CONFIG": str(config)}
    server = start("--host", "127.0.0.1", "--port", "0", "--log-level", "warning", env=env)
    warning = server.wait_for_line(r"^gateway: warning: (.*)$")
    assert warning[1] == (
        f"{config}: litellm_settings.drop_parms: unknown key, ignored (did you mean 'drop_params'?)"
    )
    port = server.wait_for_line(r"^gateway: listening on http://127\.0\.0\.1:(\d+) ")[1]
    base_url = f"http://127.0.0.1:{port}"
    server.wait_until_live(base_url)
    body = {"model": "canned", "messages": [{"role": "user", "content": "Hello"}]}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=10)
    assert response.json()["choices"][0]["message"]["content"] == "canned answer"
    assert server.stop() == 0
    # Printed once on stdout, not logged again on stderr.
    assert "drop_parms" not in "".join(server.stderr)


def _spawned_children(pid: int) -> list[int]:
    """Child processes started by multiprocessing's spawn (uvicorn's workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the ")".
        if int(stat.rpartition(")")[2].split()[1]) != pid:
            continue
        cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            children.append(int(entry.name))
    return children


def start_workers(start, *args: str) -> tuple[Server, str]:
    """A multi-worker gateway on a free port, and its URL.

    Workers need a port known in advance (--port 0 works with one worker only), so one is
    picked; should another process take it before the gateway binds it, the gateway
    exits with "address already in use" and another port is tried.
    """
    for _ in range(5):
        port = free_port()
        server = start(*args, "--host", "127.0.0.1", "--port", str(port))
        server.wait_for_line(r"^gateway: listening on http://127\.0\.0\.1:\d+ \(2 workers\)")
        base_url = f"http://127.0.0.1:{port}"
        try:
            server.wait_until_live(base_url)
        except AssertionError:
            if server.process.poll() is not None and "in use" in "".join(server.stderr):
                continue
            raise
        return server, base_url
    raise AssertionError("no free port could be bound in 5 tries")


def test_two_workers_share_the_port(start) -> None:
    server, base_url = start_workers(start, "--config", str(EXAMPLE_CONFIG), "--workers", "2")
    body = {"model": "my-custom-model", "messages": [{"role": "user", "content": "Hello"}]}
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for _ in range(10):
            response = client.post("/v1/chat/completions", json=body)
            assert response.json()["choices"][0]["message"]["content"] == "Hi!"
    if sys.platform.startswith("linux"):
        # Two workers that answer: started workers log "Application startup complete".
        deadline = time.monotonic() + START_TIMEOUT
        while "".join(server.stderr).count("Application startup complete") < 2:
            assert time.monotonic() < deadline, "".join(server.stderr)
            time.sleep(0.05)
        assert len(_spawned_children(server.process.pid)) == 2
    assert server.stop() == 0
    assert "Traceback" not in "".join(server.stderr)


_CLIENT_REPORTER = """
import gateway


class Reporter(gateway.CustomLLM):
    async def acompletion(self, model, messages, **kwargs):
        client = gateway.http_client()
        text = f"{client.timeout.read:g} {id(client)}"
        return gateway.ModelResponse(
            model=model, choices=[{"message": {"role": "assistant", "content": text}}]
        )


handler = Reporter()
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_handlers_get_the_apps_client_under_the_command(start, tmp_path: Path, workers) -> None:
    # The command makes its app's runtime the current one for the whole process (no set
    # and reset per request): handlers still get the app's client, in every worker.
    (tmp_path / "cli_client_reporter.py").write_text(_CLIENT_REPORTER)
    write_config(
        tmp_path,
        """
        model_list:
          - {model_name: a, litellm_params: {model: rep/x}}
        litellm_settings:
          custom_provider_map:
          - {provider: rep, custom_handler: cli_client_reporter.handler}
        gateway_settings:
          upstream: {read_timeout: 77}
        """,
    )
    args = ("--config", str(tmp_path / "config.yaml"), "--workers", str(workers))
    if workers == 1:
        server = start(*args, "--host", "127.0.0.1", "--port", "0")
        port = server.wait_for_line(r"^gateway: listening on http://127\.0\.0\.1:(\d+) ")[1]
        base_url = f"http://127.0.0.1:{port}"
        server.wait_until_live(base_url)
    else:
        server, base_url = start_workers(start, *args)
    seen = set()
    body = {"model": "a", "messages": [{"role": "user", "content": "Hello"}]}
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for _ in range(8):
            answer = client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
            timeout, ident = answer.json()["choices"][0]["message"]["content"].split()
            assert timeout == "77"  # the app's client, not the library's per-loop one
            seen.add(ident)
    assert len(seen) <= workers, seen  # one client per worker's app
    assert server.stop() == 0
    assert "Traceback" not in "".join(server.stderr)


# -- the master key ------------------------------------------------------------------


def test_empty_master_key_is_a_config_error(tmp_path: Path) -> None:
    write_config(tmp_path, 'general_settings:\n  master_key: ""\n')
    result = run_cli("--config", "config.yaml", cwd=tmp_path)
    assert_one_line_error(
        result,
        "config.yaml: general_settings.master_key: must not be empty (remove it to run "
        "without a key)",
    )
    write_config(tmp_path, "general_settings:\n  master_key: os.environ/GW_CLI_EMPTY_KEY\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", "config.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "GW_CLI_EMPTY_KEY": ""},
    )
    assert_one_line_error(
        result,
        "config.yaml: general_settings.master_key: environment variable GW_CLI_EMPTY_KEY is empty",
    )


def test_no_key_refused_off_loopback(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        model_list:
          - model_name: canned
            litellm_params: {model: mock/x, mock_response: "hi"}
        """,
    )
    # Port 1: refused before any bind, so nothing is ever exposed (and no privilege needed).
    for host in ("0.0.0.0", "::", "gateway.example"):
        result = run_cli("--config", "config.yaml", "--host", host, "--port", "1", cwd=tmp_path)
        assert_one_line_error(
            result,
            f"config.yaml: general_settings.master_key: required to listen on {host}, which "
            "is not a loopback address (set a master_key, listen on 127.0.0.1, or set "
            "general_settings.allow_unauthenticated: true)",
        )


def test_allow_unauthenticated_warns(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        model_list:
          - model_name: canned
            litellm_params: {model: mock/x, mock_response: "hi"}
        general_settings:
          allow_unauthenticated: true
        """,
    )
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the start is allowed and
    # warned about, then the bind fails, so nothing is ever exposed beyond loopback.
    result = run_cli("--config", "config.yaml", "--host", "192.0.2.1", "--port", "0", cwd=tmp_path)
    assert result.stdout.splitlines()[0] == (
        "gateway: warning: no master_key and listening on 192.0.2.1: anyone who can reach it "
        "can spend your backends (general_settings.allow_unauthenticated is true)"
    )
    assert result.returncode == 3, result.stderr


def test_no_key_on_loopback_by_default(start, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        model_list:
          - model_name: canned
            litellm_params: {model: mock/x, mock_response: "hi"}
        """,
    )
    server = start("--config", str(config), "--port", "0")
    listening = server.wait_for_line(r"^gateway: listening on http://127\.0\.0\.1:(\d+) ")
    server.wait_until_live(f"http://127.0.0.1:{listening[1]}")
    assert "warning" not in "".join(server.stdout)
    assert server.stop() == 0


# -- mistakes that would otherwise fail every request ----------------------------------


def test_unregistered_provider_exits_2(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        model_list:
          - model_name: ok
            litellm_params: {model: mock/x, mock_response: "hi"}
          - model_name: broken
            litellm_params: {model: no-such-provider/x}
        """,
    )
    result = run_cli("--config", "config.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "gateway: error: config.yaml: model_list: deployment broken/1: Model `broken` cannot "
        "be served: Unknown provider 'no-such-provider'. Registered providers: "
    )
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_misspelt_model_list_exits_2(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        model_lst:
          - model_name: canned
            litellm_params: {model: mock/x, mock_response: "hi"}
        """,
    )
    result = run_cli("--config", "config.yaml", cwd=tmp_path)
    assert_one_line_error(
        result,
        "config.yaml: model_lst: unknown key (did you mean 'model_list'?), and no model_list: "
        "the gateway would serve no models",
    )
