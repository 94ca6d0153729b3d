"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temp dir on loopback.

Debian's ``postgresql`` package puts the binaries in /usr/lib/postgresql/<version>/bin.
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
(the package creates it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

INSTALL = "install it: apt-get install -y postgresql"


def find_bin() -> str | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def missing(what: str) -> None:
    """Skip (fail under CI=true) for a binary this machine lacks."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI must have it")
    pytest.skip(what)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    user = "gateway"

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="gateway-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                missing("PostgreSQL cannot run as root and there is no 'postgres' user")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            os.chmod(self.dir, 0o700)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run(
            "initdb",
            "-D",
            self.data,
            "-A",
            "trust",
            "-U",
            self.user,
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        # The free port is picked before the server binds it: on several test workers
        # another process may take it in between, so a failed start tries another port.
        for attempt in range(3):
            try:
                self.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                self.port = free_port()
        self._databases = 0

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._as, os.path.join(self.bindir, tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        log = os.path.join(self.dir, "log")
        self._run("pg_ctl", "-D", self.data, "-l", log, "-o", options, "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        # fast: committed rows survive a restart (synchronous_commit=off leaves the last
        # commits in the WAL buffer, which immediate would drop).
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        self._databases += 1
        name = f"test{self._databases}_{int(time.time() * 1000) % 100000}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return self.url(name)

    def close(self) -> None:
        try:
            # The data is deleted next: no shutdown checkpoint (a fast stop took up to 5 s).
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
