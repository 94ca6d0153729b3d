"""Key limits on the hot path: expiry, rpm/tpm/parallel limits, budgets and their reset.

Time is the key manager's injected clock, moved by the test.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.keys_fixtures import ADMIN, CHAT, GATE, MOCK_COST, bearer, flush, generate, serve_keys


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def chat(client: httpx.AsyncClient, key: str, **body: object) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={**CHAT, **body}, headers=bearer(key))


async def test_an_expired_key_is_refused(database_url: str) -> None:
    with serve_keys(database_url) as (handle, app):
        clock = app.runtime.keys.clock = Clock()
        async with httpx.AsyncClient(base_url=handle.url) as client:
            key = (await generate(client, duration="1h"))["key"]
            assert (await chat(client, key)).status_code == 200
            clock.now += 3601
            expired = await chat(client, key)
            assert expired.status_code == 401
            error = expired.json()["error"]
            assert error["type"] == "authentication_error" and error["code"] == "expired_key"
            assert "expired at" in error["message"]


async def test_rpm_limit(database_url: str) -> None:
    with serve_keys(database_url) as (handle, app):
        clock = app.runtime.keys.clock = Clock()
        async with httpx.AsyncClient(base_url=handle.url) as client:
            key = (await generate(client, rpm_limit=2))["key"]
            assert (await chat(client, key)).status_code == 200
            clock.now += 10
            assert (await chat(client, key)).status_code == 200
            limited = await chat(client, key)
            assert limited.status_code == 429
            assert limited.json()["error"]["type"] == "rate_limit_error"
            assert "rpm_limit (2)" in limited.json()["error"]["message"]
            assert limited.headers["retry-after"] == "50"  # the first request leaves the window
            clock.now += 50
            assert (await chat(client, key)).status_code == 200


async def test_tpm_limit(database_url: str) -> None:
    with serve_keys(database_url) as (handle, app):
        clock = app.runtime.keys.clock = Clock()
        async with httpx.AsyncClient(base_url=handle.url) as client:
            key = (await generate(client, tpm_limit=30))["key"]
            assert (await chat(client, key)).status_code == 200  # 30 tokens
            limited = await chat(client, key)
            assert limited.status_code == 429
            assert "tpm_limit (30)" in limited.json()["error"]["message"]
            assert 1 <= int(limited.headers["retry-after"]) <= 60
            clock.now += 61
            assert (await chat(client, key)).status_code == 200


async def test_max_parallel_requests(database_url: str) -> None:
    with serve_keys(database_url) as (handle, app):

        async def make_gate() -> None:
            GATE.event = asyncio.Event()

        handle.call(make_gate)
        async with httpx.AsyncClient(base_url=handle.url, timeout=30) as client:
            key = (await generate(client, max_parallel_requests=1))["key"]
            first = asyncio.ensure_future(chat(client, key, model="slow"))
            token = (await client.get("/key/info", params={"key": key}, headers=ADMIN)).json()
            entry = None
            for _ in range(500):
                entry = app.runtime.keys._entries.get(token["info"]["token"])
                if entry is not None and entry.in_flight == 1:
                    break
                await asyncio.sleep(0.01)
            assert entry is not None and entry.in_flight == 1
            limited = await chat(client, key, model="slow")
            assert limited.status_code == 429
            assert "max_parallel_requests (1)" in limited.json()["error"]["message"]
            assert limited.headers["retry-after"] == "1"
            assert handle.loop is not None and GATE.event is not None
            handle.loop.call_soon_threadsafe(GATE.event.set)
            assert (await first).status_code == 200
            assert (await chat(client, key)).status_code == 200  # the slot was freed


async def test_budget_blocks_until_its_period_resets(database_url: str) -> None:
    with serve_keys(database_url) as (handle, app):
        clock = app.runtime.keys.clock = Clock()
        async with httpx.AsyncClient(base_url=handle.url) as client:
            made = await generate(client, max_budget=0.06, budget_duration="1d")
            key = made["key"]
            assert (await chat(client, key)).status_code == 200  # spend 0.05
            assert (await chat(client, key)).status_code == 200  # spend 0.10: over, after
            over = await chat(client, key)
            assert over.status_code == 429
            error = over.json()["error"]
            assert error["type"] == "insufficient_quota" and error["code"] == "budget_exceeded"
            assert over.headers["retry-after"] == "86400"
            flush(handle, app)
            info = await client.get("/key/info", params={"key": key}, headers=ADMIN)
            assert info.json()["info"]["spend"] == pytest.approx(2 * MOCK_COST)

            clock.now += 86400 + 5  # the period ended (the cache entry aged out too)
            assert (await chat(client, key)).status_code == 200
            flush(handle, app)
            info = (await client.get("/key/info", params={"key": key}, headers=ADMIN)).json()
            assert info["info"]["spend"] == pytest.approx(MOCK_COST)
            first_reset = made["budget_reset_at"]
            assert info["info"]["budget_reset_at"] > first_reset  # the next period's end
            # The other requests' rows are kept: the reset zeroes the key's period only.
            logs = (await client.get("/spend/logs", headers=ADMIN)).json()
            assert logs["total"] == 3


async def test_budget_reset_found_by_another_process(database_url: str) -> None:
    """A worker restarting after the period ended sees the reset; the database agrees."""
    with serve_keys(database_url) as (handle, app):
        async with httpx.AsyncClient(base_url=handle.url) as client:
            key = (await generate(client, max_budget=0.01, budget_duration="1h"))["key"]
            assert (await chat(client, key)).status_code == 200
            assert (await chat(client, key)).status_code == 429
    with serve_keys(database_url) as (handle, app):
        clock = app.runtime.keys.clock = Clock()
        clock.now += 3600 + 1
        async with httpx.AsyncClient(base_url=handle.url) as client:
            assert (await chat(client, key)).status_code == 200
            assert (await chat(client, key)).status_code == 429
