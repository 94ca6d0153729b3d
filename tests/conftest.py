from __future__ import annotations

from collections.abc import Iterator

import pytest

import gateway


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
