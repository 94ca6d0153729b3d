"""The key store on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.keys.store import SCHEMA_VERSION, StoreError, describe_url, open_store
from tests.pg_server import free_port


def key_row(token: str, **fields: Any) -> dict[str, Any]:
    row = {
        "token": token,
        "key_name": "sk-...abcd",
        "key_alias": None,
        "models": "[]",
        "max_budget": None,
        "budget_duration": None,
        "budget_reset_at": None,
        "spend": 0.0,
        "expires": None,
        "rpm_limit": None,
        "tpm_limit": None,
        "max_parallel_requests": None,
        "metadata": "{}",
        "user_id": None,
        "team_id": None,
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    row.update(fields)
    return row


def log_row(request_id: str, token: str, spend: float, start: float = 1000.0) -> tuple[Any, ...]:
    return (request_id, token, None, "gpt-a", "gpt-a/0", 1, 2, 3, 0, spend, "success", 200,
            start, start + 1, None, "1970-01-01")  # fmt: skip


async def test_schema_is_created_once_and_versioned(database_url: str) -> None:
    store = open_store(database_url)
    await store.open()
    try:
        assert await store.migrate() == SCHEMA_VERSION  # already there: nothing applied
        rows = await store._fetch("SELECT version FROM gateway_schema ORDER BY version")
        assert [r["version"] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        await store.close()
    again = open_store(database_url)
    await again.open()  # re-opening an up-to-date database changes nothing
    await again.close()


async def test_a_newer_schema_is_refused(database_url: str) -> None:
    store = open_store(database_url)
    await store.open()
    await store._transaction([("INSERT INTO gateway_schema (version) VALUES ($1)", [[99]])])
    await store.close()
    with pytest.raises(StoreError, match="version 99, newer than this gateway"):
        await open_store(database_url).open()


async def test_keys_round_trip(database_url: str) -> None:
    store = open_store(database_url)
    await store.open()
    try:
        await store.insert_key(key_row("a" * 64, key_alias="one", max_budget=2.5))
        await store.insert_key(key_row("b" * 64, key_alias="two", created_at=2.0))
        row = await store.get_key("a" * 64)
        assert row is not None and row["key_alias"] == "one" and row["max_budget"] == 2.5
        assert await store.update_key("a" * 64, {"rpm_limit": 7})
        assert not await store.update_key("c" * 64, {"rpm_limit": 7})
        assert (await store.get_key("a" * 64))["rpm_limit"] == 7  # type: ignore[index]
        rows, total = await store.list_keys({}, 0, 1)
        assert total == 2 and [r["token"] for r in rows] == ["b" * 64]  # newest first
        rows, total = await store.list_keys({"key_alias =": "one"}, 0, 10)
        assert total == 1 and rows[0]["token"] == "a" * 64
        assert await store.delete_keys(["a" * 64, "c" * 64]) == ["a" * 64]
        assert await store.get_key("a" * 64) is None
    finally:
        await store.close()


async def test_spend_batches_charge_what_they_insert(database_url: str) -> None:
    store = open_store(database_url)
    await store.open()
    try:
        token = "d" * 64
        await store.insert_key(key_row(token, budget_reset_at=50.0))
        await store.write_spend([log_row("r1", token, 0.25)], [])
        assert (await store.get_key(token))["spend"] == 0.25  # type: ignore[index]
        # A reset applies once: the second one names a period that already ended.
        await store.write_spend([], [(100.0, token, 50.0)])
        await store.write_spend([], [(150.0, token, 50.0)])
        row = await store.get_key(token)
        assert row is not None and row["spend"] == 0.0 and row["budget_reset_at"] == 100.0
        # r1 again (a batch retried after a commit whose outcome was unknown): neither
        # logged nor charged twice. Rows of keys that do not exist (the master key) are
        # logged and charge nobody.
        batch = [log_row("r2", token, 0.5), log_row("r1", token, 0.25), log_row("r3", "m", 1.0)]
        await store.write_spend(batch, [])
        await store.write_spend(batch, [])
        _, total = await store.spend_logs({}, 0, 10)
        assert total == 3
        assert (await store.get_key(token))["spend"] == 0.5  # type: ignore[index]
    finally:
        await store.close()


async def test_postgres_down_is_a_clear_error() -> None:
    url = f"postgresql://gateway:secret@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL at .*:\*\*\*@"):
        await open_store(url).open()


async def test_sqlite_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open SQLite database"):
        await open_store(f"sqlite:///{tmp_path}/nowhere/gw.db").open()


def test_bad_urls() -> None:
    with pytest.raises(StoreError, match=r"expected sqlite:///path\.db or postgresql://"):
        open_store("mysql://x")
    with pytest.raises(StoreError, match=r"sqlite:///relative/path\.db"):
        open_store("sqlite:/x.db")
    assert describe_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert open_store("sqlite", "/etc/gw").path == "/etc/gw/gateway.db"  # type: ignore[attr-defined]
    assert open_store("sqlite:///a/b.db", "/srv").path == "/srv/a/b.db"  # type: ignore[attr-defined]
    assert open_store("sqlite:////a/b.db", "/srv").path == "/a/b.db"  # type: ignore[attr-defined]


def _cli_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            model_list:
              - model_name: m
                litellm_params: {{model: mock/m, mock_response: hi}}
            general_settings:
              master_key: sk-master
              database_url: {url}
            """
        )
    )
    return path


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_cli_exits_2_when_the_database_is_down(tmp_path: Path, kind: str) -> None:
    if kind == "postgres":
        url, expected = f"postgresql://gateway@127.0.0.1:{free_port()}/gw", "cannot connect"
    else:
        url, expected = f"sqlite:///{tmp_path}/missing/gw.db", "cannot open SQLite"
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(_cli_config(tmp_path, url))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("gateway: error: general_settings.database_url: ")
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_database_url_needs_a_master_key() -> None:
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="database_url: virtual keys need"):
        parse_config({"general_settings": {"database_url": "sqlite"}})
