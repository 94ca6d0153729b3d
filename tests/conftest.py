from __future__ import annotations

import os
import sys
from collections.abc import Iterator

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


def pytest_collection_finish(session: pytest.Session) -> None:
    # Imported as `fake_upstream` (tests/ is on sys.path too) it would load a second
    # time, with module state of its own: one name only.
    if "fake_upstream" in sys.modules:
        raise pytest.UsageError("import the fake upstream as tests.fake_upstream")


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
