"""Spend: prices, usage, the batched writer, /spend/logs and /spend/report, under load
and across a database restart."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gateway.app import GatewayApp
from gateway.keys import hash_key
from gateway.keys.spend import SpendWriter
from gateway.keys.store import open_store
from tests.fake_upstream import ServerHandle
from tests.keys_fixtures import (
    ADMIN,
    CHAT,
    MOCK_COST,
    PRICE_OUT,
    bearer,
    flush,
    generate,
    serve_keys,
)
from tests.pg_server import PostgresServer


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def chat(client: httpx.AsyncClient, key: str, **body: object) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={**CHAT, **body}, headers=bearer(key))


async def db_totals(url: str) -> tuple[dict[str, float], dict[str, float], int]:
    """(key spend, sum of spend rows per key, rows), read straight from the database."""
    store = open_store(url)
    await store.open()
    try:
        keys = {r["token"]: r["spend"] for r in await store._fetch("SELECT * FROM gateway_keys")}
        rows = await store._fetch(
            "SELECT api_key, SUM(spend) AS spend, COUNT(*) AS n FROM gateway_spend_logs "
            "GROUP BY api_key"
        )
        return keys, {r["api_key"]: r["spend"] for r in rows}, sum(int(r["n"]) for r in rows)
    finally:
        await store.close()


async def test_spend_logs_filters_and_pages(database_url: str) -> None:
    day_one = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()
    with serve_keys(database_url) as (handle, app):
        clock = app.runtime.keys.clock = Clock(day_one)
        async with httpx.AsyncClient(base_url=handle.url, headers=ADMIN) as admin:
            a = await generate(admin, key_alias="a")
            b = await generate(admin, key_alias="b")
            async with httpx.AsyncClient(base_url=handle.url) as client:
                for _ in range(3):
                    assert (await chat(client, a["key"])).status_code == 200
                    clock.now += 1  # rows in a known order
                assert (await chat(client, b["key"], model="gpt-b")).status_code == 200
                clock.now += 86400
                assert (await chat(client, a["key"], model="gpt-b")).status_code == 200
                clock.now += 1
                streamed = await chat(client, b["key"], model="streamer", stream=True)
                assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
            flush(handle, app)

            logs = (await admin.get("/spend/logs")).json()
            assert logs["total"] == 6
            newest = logs["data"][0]
            assert newest["model_group"] == "streamer" and newest["key_alias"] == "b"
            # A stream without usage: estimated (4 characters a token) and marked so.
            assert newest["tokens_estimated"] is True
            assert newest["completion_tokens"] == 3 and newest["prompt_tokens"] == 0
            assert newest["spend"] == pytest.approx(3 * PRICE_OUT)
            assert newest["ttft"] is not None and newest["status"] == "success"
            first = logs["data"][-1]
            assert first["tokens_estimated"] is False and first["total_tokens"] == 30
            assert first["spend"] == pytest.approx(MOCK_COST)
            assert first["model"] == "gpt-a/0" and first["api_key"] == a["token"]
            assert first["startTime"].startswith("2026-03-01T12:00:00")

            by_key = (await admin.get("/spend/logs", params={"api_key": a["key"]})).json()
            assert by_key["total"] == 4
            by_token = (await admin.get("/spend/logs", params={"api_key": a["token"]})).json()
            assert by_token["total"] == 4
            by_model = (await admin.get("/spend/logs", params={"model": "gpt-b"})).json()
            assert {r["key_alias"] for r in by_model["data"]} == {"a", "b"}
            day = (
                await admin.get(
                    "/spend/logs", params={"start_date": "2026-03-01", "end_date": "2026-03-01"}
                )
            ).json()
            assert day["total"] == 4
            later = (
                await admin.get("/spend/logs", params={"start_date": str(day_one + 3600)})
            ).json()
            assert later["total"] == 2
            iso = (
                await admin.get("/spend/logs", params={"end_date": "2026-03-01T12:30:00Z"})
            ).json()
            assert iso["total"] == 4
            page = (await admin.get("/spend/logs", params={"page_size": 4, "page": 2})).json()
            assert page["total_pages"] == 2 and len(page["data"]) == 2
            assert page["data"][-1]["request_id"] == first["request_id"]
            bad = await admin.get("/spend/logs", params={"start_date": "yesterday"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "start_date"

            report = (await admin.get("/spend/report")).json()
            cells = {(r["group_by_day"], r["key_alias"], r["model_group"]): r for r in report}
            assert set(cells) == {
                ("2026-03-01", "a", "gpt-a"),
                ("2026-03-01", "b", "gpt-b"),
                ("2026-03-02", "a", "gpt-b"),
                ("2026-03-02", "b", "streamer"),
            }
            assert cells["2026-03-01", "a", "gpt-a"]["requests"] == 3
            assert cells["2026-03-01", "a", "gpt-a"]["spend"] == pytest.approx(3 * MOCK_COST)
            assert cells["2026-03-01", "a", "gpt-a"]["total_tokens"] == 90
            one_day = (
                await admin.get(
                    "/spend/report", params={"start_date": "2026-03-02", "model": "gpt-b"}
                )
            ).json()
            assert [(r["group_by_day"], r["key_alias"]) for r in one_day] == [("2026-03-02", "a")]


async def test_master_key_requests_are_logged_not_charged(database_url: str) -> None:
    with serve_keys(database_url) as (handle, app):
        async with httpx.AsyncClient(base_url=handle.url, headers=ADMIN) as admin:
            assert (await admin.post("/v1/chat/completions", json=CHAT)).status_code == 200
            flush(handle, app)
            row = (await admin.get("/spend/logs")).json()["data"][0]
            assert row["key_alias"] == "master_key"
            assert row["api_key"] == hash_key("sk-master-test")
            assert row["spend"] == pytest.approx(MOCK_COST)


async def test_failed_calls_are_logged_with_their_status(database_url: str) -> None:
    with serve_keys(database_url) as (handle, app):
        async with httpx.AsyncClient(base_url=handle.url, headers=ADMIN) as admin:
            missing = await admin.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
            assert missing.status_code == 404
            flush(handle, app)
            row = (await admin.get("/spend/logs")).json()["data"][0]
            assert row["status"] == "failure" and row["status_code"] == 404
            assert row["spend"] == 0 and row["model_group"] == "nope"


async def _load(
    servers: list[str], keys: list[str], total: int, concurrency: int = 50
) -> list[int]:
    from httpx_aiohttp import AiohttpTransport

    limit = asyncio.Semaphore(concurrency)
    # httpx over aiohttp's pool (as gateway.http_client() does): with httpx's own pool
    # the client took 3.2 ms of CPU a request here, four times the two gateways' own,
    # and 1,000 requests 5.6 s; over aiohttp 0.5 ms and 1.0 s.
    clients = [
        httpx.AsyncClient(base_url=url, timeout=60, transport=AiohttpTransport()) for url in servers
    ]

    async def one(i: int) -> int:
        async with limit:
            client = clients[i % len(clients)]
            response = await chat(client, keys[i % len(keys)])
            return response.status_code

    try:
        return await asyncio.gather(*(one(i) for i in range(total)))
    finally:
        for client in clients:
            await client.aclose()


async def test_spend_totals_equal_the_logs_after_1000_concurrent_requests(
    database_url: str,
) -> None:
    """10 keys, 1,000 requests, two gateways writing the same database at once."""
    with serve_keys(database_url) as (one, app_one), serve_keys(database_url) as (two, app_two):
        async with httpx.AsyncClient(base_url=one.url, headers=ADMIN) as admin:
            keys = [(await generate(admin, key_alias=f"k{i}"))["key"] for i in range(10)]
        statuses = await _load([one.url, two.url], keys, 1000)
        assert statuses == [200] * 1000
        flush(one, app_one)
        flush(two, app_two)
        assert app_one.runtime.keys.writer.dropped == app_two.runtime.keys.writer.dropped == 0
    key_spend, log_spend, rows = await db_totals(database_url)
    assert rows == 1000
    for key in keys:
        token = hash_key(key)
        assert key_spend[token] == pytest.approx(100 * MOCK_COST, rel=1e-9)
        assert log_spend[token] == pytest.approx(key_spend[token], rel=1e-9)


async def _until_written(handle: ServerHandle, app: GatewayApp, timeout: float = 60) -> None:
    writer = app.runtime.keys.writer
    deadline = time.monotonic() + timeout
    while writer.buffered and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert writer.buffered == 0, "spend rows were not written after the database came back"


async def test_a_database_restarted_mid_load(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    with serve_keys(url) as (handle, app):
        async with httpx.AsyncClient(base_url=handle.url, headers=ADMIN) as admin:
            keys = [(await generate(admin, key_alias=f"r{i}"))["key"] for i in range(3)]
            unseen = (await generate(admin, key_alias="unseen"))["key"]
        assert await _load([handle.url], keys, 30) == [200] * 30  # keys now cached
        down: list[httpx.Response] = []

        async def restart() -> None:
            await asyncio.to_thread(postgres.stop)
            async with httpx.AsyncClient(base_url=handle.url) as client:
                # A key this gateway never saw cannot be checked now; the admin API
                # cannot answer either: 503, not a wrong 401.
                down.append(await chat(client, unseen))
                down.append(await client.get("/key/list", headers=ADMIN))
            writer = app.runtime.keys.writer
            deadline = time.monotonic() + 30
            while writer.failures < 2:  # down long enough for several failed writes
                assert time.monotonic() < deadline, "the writer never tried the database"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(postgres.start)

        restarting = asyncio.ensure_future(restart())
        statuses: list[int] = []
        while not restarting.done():
            statuses += await _load([handle.url], keys, 30, concurrency=10)
        await restarting
        statuses += await _load([handle.url], keys, 30)
        assert statuses == [200] * len(statuses)  # cached keys kept working throughout
        assert [r.status_code for r in down] == [503, 503]
        assert down[0].json()["error"]["code"] == "key_store_down"
        async with httpx.AsyncClient(base_url=handle.url) as client:
            assert (await chat(client, unseen)).status_code == 200  # back: checked now
        statuses.append(200)
        await _until_written(handle, app)
        writer = app.runtime.keys.writer
        assert writer.failures >= 1  # the writer did see the database down
        assert writer.dropped == 0
    key_spend, log_spend, rows = await db_totals(url)
    assert rows == 30 + len(statuses)
    assert sum(key_spend.values()) == pytest.approx(rows * MOCK_COST, rel=1e-9)
    for token, spend in key_spend.items():
        assert log_spend[token] == pytest.approx(spend, rel=1e-9)


async def test_a_full_buffer_drops_rows_counted_and_logged(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(f"sqlite:///{tmp_path}/gw.db")
    await store.open()
    writer = SpendWriter(store, max_buffer=5)
    try:
        with caplog.at_level(logging.ERROR, logger="gateway.keys"):
            for i in range(8):
                row = (f"r{i}", "t" * 64, None, "m", None, 1, 1, 2, 0, 0.5, "success", 200,
                       1.0, 2.0, None, "1970-01-01")  # fmt: skip
                writer.add(row, "t" * 64, 0.5, True)
        assert writer.dropped == 3 and writer.buffered == 5
        assert "dropped 1 spend rows" in caplog.text  # logged at once, then every 10 s
        await writer.flush()
        _, total = await store.spend_logs({}, 0, 100)
        assert total == 5 and writer.written == 5 and writer.pending == {}
    finally:
        await writer.close()
        await store.close()


async def test_drops_are_a_metric(database_url: str) -> None:
    with serve_keys(database_url) as (handle, app):
        app.runtime.keys.writer.max_buffer = 0
        async with httpx.AsyncClient(base_url=handle.url, headers=ADMIN) as admin:
            for _ in range(3):
                assert (await admin.post("/v1/chat/completions", json=CHAT)).status_code == 200
            metrics = (await admin.get("/metrics")).text
            assert "gateway_spend_logs_dropped_total 3.0" in metrics
            assert "gateway_spend_logs_written_total 0.0" in metrics
            assert "gateway_spend_logs_buffered 0.0" in metrics


async def test_the_writer_survives_an_unexpected_store_error(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(f"sqlite:///{tmp_path}/gw.db")
    await store.open()
    real_write = store.write_spend
    failures = [RuntimeError("cannot switch to state 15")]

    async def flaky_write(*args: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real_write(*args)

    store.write_spend = flaky_write  # type: ignore[method-assign]
    writer = SpendWriter(store, interval=0.01)
    writer.start()
    try:
        with caplog.at_level(logging.ERROR, logger="gateway.keys"):
            row = ("r", "t" * 64, None, "m", None, 1, 1, 2, 0, 0.5, "success", 200,
                   1.0, 2.0, None, "1970-01-01")  # fmt: skip
            writer.add(row, "t" * 64, 0.5, True)
            for _ in range(500):
                if writer.written:
                    break
                await asyncio.sleep(0.01)
        assert writer.written == 1 and writer.failures == 1
        assert "cannot switch to state 15" in caplog.text
    finally:
        await writer.close()
        await store.close()
