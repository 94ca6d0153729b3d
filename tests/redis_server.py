"""A throwaway ``redis-server`` for tests: loopback, a free port, no persistence, a temp
dir; restartable on the same port (to test an outage)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time

from tests.pg_server import free_port, missing

INSTALL = "install it: apt-get install -y redis-server"


def find_redis() -> str:
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if shutil.which("/usr/bin/redis-server") else None
    )
    if path is None:
        missing(f"redis-server not found; {INSTALL}")
    assert path is not None
    return path


class RedisServer:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="gateway-redis-")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # The free port is picked before redis binds it: on several test workers another
        # process may take it in between, so a failed start tries another port.
        for attempt in range(3):
            try:
                self.start()
                break
            except RuntimeError:
                self.kill()
                if attempt == 2:
                    raise
                self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:  # could not bind: the PONG is another's
                break
            try:
                if self._answering_pid() == self.process.pid:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def _answering_pid(self) -> int | None:
        """The pid of the redis-server answering on our port. Until ours has bound it (or
        failed to), another worker's server may hold the port and answer: a PONG alone
        once made a worker share its neighbour's Redis (FLUSHALLs and SIGSTOPs crossed)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
            sock.sendall(b"INFO server\r\n")
            answer = b""
            while b"process_id:" not in answer or not answer.endswith(b"\r\n"):
                piece = sock.recv(65536)
                if not piece:
                    return None
                answer += piece
        found = re.search(rb"process_id:(\d+)", answer)
        return int(found[1]) if found else None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(16)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
