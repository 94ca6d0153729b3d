"""``python -m benchmarks run --before/--after REF``: a target served from a commit's
packages, the benchmark handlers still from this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import REPO, Context

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(),
    reason="needs git and a git checkout of this repository",
)


def test_a_commits_gateway_is_what_the_target_imports(tmp_path: Path) -> None:
    ctx = Context(duration=1, connections=[1], quick=True, out_dir=tmp_path, work_dir=tmp_path)
    commit = ctx.use_commit("before", "HEAD")
    assert len(commit) == 40
    assert ctx.before
    server = ctx.server("before")
    assert server.argv[1:3] == ["-m", "gateway"]
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gateway, benchmarks.handlers;"
            " print(gateway.__file__); print(benchmarks.handlers.__file__)",
        ],
        cwd=server.cwd,
        env={**os.environ, **server.env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found == [
        str(ctx.trees["before"] / "gateway" / "__init__.py"),
        str(REPO / "benchmarks" / "handlers.py"),
    ]
    # The other targets still serve this checkout.
    assert ctx.server("gateway").cwd == REPO


def test_an_unknown_commit_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "chat", "--quick", "--before", "no-such-ref"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--before no-such-ref: not a commit of this repository" in result.stdout
