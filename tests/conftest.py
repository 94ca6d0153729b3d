from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from keys_fixtures import database_url, postgres  # noqa: F401 (fixtures)

import gateway
from tests.redis_server import RedisServer, find_redis

# Bytecode is written (to the __pycache__ folders git ignores) even where the environment
# sets PYTHONDONTWRITEBYTECODE: the suite runs on several worker processes and starts the
# CLI and the benchmark servers as subprocesses, each of which would otherwise compile the
# test modules (with pytest's assertion rewriting) and the package again: about 3 s of CPU
# a worker, measured. Set here, before pytest imports the test modules.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# Every httpx client (each httpx.get/post, each openai or anthropic client) and every
# aiohttp session builds an SSL context. With SSL_CERT_FILE set, or httpx's certifi bundle,
# that parses a whole CA bundle on the spot: 33-43 ms of CPU each, thousands of times a
# run, in tests that speak plain HTTP to 127.0.0.1 only. The system's certificate folder
# is a CA store as real, read lazily: only when a certificate is verified, which no test
# does. Set before any test module, server or subprocess starts, so they inherit it.
if os.path.isdir("/etc/ssl/certs"):
    os.environ.pop("SSL_CERT_FILE", None)
    os.environ["SSL_CERT_DIR"] = "/etc/ssl/certs"


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if not hasattr(config, "workerinput") and config.getoption("numprocesses", None):
        from tests.precompile import precompile

        precompile(config)  # the xdist controller, before its workers start


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadscope`` (pyproject's addopts), refined: tests/scheduling.py says how."""
    if config.getoption("dist") != "loadscope":
        return None
    from tests.scheduling import Scheduling

    return Scheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # xdist hands tests out by node id: two items with one id would run as one.
    if len({item.nodeid for item in items}) != len(items):
        raise pytest.UsageError("two tests share a node id: xdist would run only one")


def pytest_collection_finish(session: pytest.Session) -> None:
    # Imported as `fake_upstream` (tests/ is on sys.path too) it would load a second
    # time, with module state of its own: one name only.
    if "fake_upstream" in sys.modules:
        raise pytest.UsageError("import the fake upstream as tests.fake_upstream")
    # A worker's heap holds the whole collection and, later, the fuzz run's hypothesis and
    # schemathesis (~200 MB): Python's default of a young collection every 700
    # allocations promoted enough of it to run ~20 full collections of ~150 ms each. Every
    # 10,000: 5 (fuzz, openai_gateway, keys_spend and frontdoors_routing in one process:
    # 4.1 -> 2.6 s of collections). gc.freeze(),
    # which would spare the collected heap entirely, hides referrers from hypothesis'
    # register_random check and fails its runs.
    gc.set_threshold(10_000)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # Last: at exit Python collects the whole heap while it tears the modules down, 1-2.5 s
    # of a worker's ~200 MB, during which the controller waits for it (xdist ends when the
    # last worker's process has). Frozen, that collection skips the heap: ~0.1 s.
    gc.freeze()


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    server = RedisServer(find_redis())
    yield server
    server.close()


@pytest.fixture
def redis_server(redis_session: RedisServer) -> Iterator[RedisServer]:
    """A running redis-server, empty; restarted if a test killed it."""
    if redis_session.process is None:
        redis_session.start()
    redis_session.flush()
    yield redis_session
    if redis_session.process is None:
        redis_session.start()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    """Each test starts with no handlers registered by another."""
    from gateway import registry

    saved_map = list(gateway.custom_provider_map)
    saved_registered = dict(registry._registered)
    yield
    gateway.custom_provider_map = saved_map
    registry._registered.clear()
    registry._registered.update(saved_registered)
