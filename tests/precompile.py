"""Bytecode for a fresh checkout, written once before the xdist workers start.

Each worker imports every test module (assertion-rewritten: pytest's own bytecode files)
and the package. In a checkout that has none of those files yet, every worker made them
itself, at the same time: 5-7 s of CPU each, mostly pytest's assertion rewriting. Here
the controller writes them first, on two processes, and the workers load them. With the
files present this only compares timestamps. Uses pytest's private rewrite helpers; if a
pytest version lacks them, the workers write the files themselves, as before.
"""

from __future__ import annotations

import compileall
import fnmatch
import os
import re
import sys
from pathlib import Path

import pytest

PACKAGES = ("gateway", "providers", "benchmarks", "tests")


def precompile(config: pytest.Config) -> None:
    if sys.dont_write_bytecode or not hasattr(os, "fork"):
        return
    try:
        from _pytest.assertion.rewrite import (
            PYC_TAIL,
            _read_pyc,
            _rewrite_test,
            _write_pyc,
            assertstate_key,
            get_cache_dir,
        )
    except ImportError:
        return
    root = Path(config.rootpath)
    patterns = [*config.getini("python_files"), "conftest.py"]
    rewritten = [
        path
        for path in sorted((root / "tests").rglob("*.py"))
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)
    ]
    state = config.stash[assertstate_key]

    def rewrite(paths: list[Path]) -> None:
        for path in paths:
            pyc = get_cache_dir(path) / (path.name[:-3] + PYC_TAIL)
            if _read_pyc(path, pyc) is None:
                pyc.parent.mkdir(exist_ok=True)
                source_hash, code = _rewrite_test(path, config)
                _write_pyc(state, code, source_hash, pyc)

    # The controller has no thread yet (xdist starts its workers after this): a fork is safe.
    child = os.fork()
    if child == 0:
        try:
            rewrite(rewritten[1::2])
        finally:
            os._exit(0)
    try:
        rewrite(rewritten[0::2])
        skip = re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns))
        for package in PACKAGES:  # what is imported as is, and by the subprocesses too
            if (root / package).is_dir():
                compileall.compile_dir(root / package, quiet=2, rx=_Basename(skip))
    finally:
        os.waitpid(child, 0)


class _Basename:
    """compileall's ``rx``: tests whether a path's file name matches (it passes the path)."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def search(self, path: str) -> bool:
        return self.pattern.match(os.path.basename(path)) is not None
