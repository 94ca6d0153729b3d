"""Fixtures shared by the virtual-key tests: a database per test (SQLite and a real
PostgreSQL), a config with priced models, and a served app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway import CustomLLM
from gateway.app import GatewayApp, create_app
from tests.fake_upstream import ServerHandle, serve_in_thread
from tests.pg_server import INSTALL, PostgresServer, find_bin, missing

MASTER = "sk-master-test"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
PRICE_IN = 0.001
PRICE_OUT = 0.002
MOCK_COST = 10 * PRICE_IN + 20 * PRICE_OUT  # the mock provider's usage is 10/20/30


class Gate:
    """Holds ``slow`` requests until released (for max_parallel_requests)."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None


GATE = Gate()


class KeysTestLLM(CustomLLM):
    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        import gateway

        if kwargs["model"] == "slow":
            assert GATE.event is not None
            await GATE.event.wait()
        return gateway.completion(model="x", mock_response="ok")

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        # No usage anywhere: the gateway must estimate, and say so.
        for word in ["abcd", "efgh", "ijkl"]:
            yield {
                "text": word,
                "is_finished": False,
                "finish_reason": "",
                "index": 0,
                "tool_use": None,
                "usage": None,
            }


def keys_config(database_url: str, **general: Any) -> dict[str, Any]:
    prices = {"input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT}
    return {
        "model_list": [
            {
                "model_name": "gpt-a",
                "litellm_params": {"model": "mock/a", "mock_response": "hello there"},
                "model_info": prices,
            },
            {
                "model_name": "gpt-b",
                "litellm_params": {"model": "mock/b", "mock_response": "b"},
                "model_info": prices,
            },
            {"model_name": "slow", "litellm_params": {"model": "keystest/slow"}},
            {
                "model_name": "streamer",
                "litellm_params": {"model": "keystest/stream"},
                "model_info": prices,
            },
        ],
        "litellm_settings": {
            "custom_provider_map": [{"provider": "keystest", "custom_handler": KeysTestLLM()}]
        },
        "general_settings": {"master_key": MASTER, "database_url": database_url, **general},
    }


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = find_bin()
    if bindir is None:
        missing(f"PostgreSQL (initdb, pg_ctl) not found: {INSTALL}")
    assert bindir is not None
    server = PostgresServer(bindir)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@contextlib.contextmanager
def serve_keys(database_url: str, **general: Any) -> Iterator[tuple[ServerHandle, GatewayApp]]:
    app = create_app(keys_config(database_url, **general))
    with serve_in_thread(app) as handle:
        yield handle, app


def flush(handle: ServerHandle, app: GatewayApp) -> None:
    """Write every buffered spend row now."""
    handle.call(app.runtime.keys.writer.flush, timeout=30)


async def generate(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/key/generate", json=fields, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


CHAT = {"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]}
