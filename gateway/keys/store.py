"""Where keys and spend live: SQLite (embedded) or PostgreSQL, behind one small class.

Both backends run the same SQL, written once in ``Store`` with PostgreSQL's ``$1``
placeholders (for SQLite they become ``?1``, same numbering), so no query exists twice;
``sqlite.py`` and ``postgres.py`` run it, ``schema.py`` holds the migrations.
Values are plain: times are epoch seconds (double), money is double, lists and
mappings are JSON text, so neither backend needs types of its own.

The schema is versioned (``gateway_schema``); ``open`` applies the migrations a database
lacks, under a lock so several workers starting at once migrate it once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "Store", "StoreError", "describe_url", "open_store"]

StatementArgs = Sequence[Any]


class StoreError(Exception):
    """The database cannot be reached or used; the message says which and why."""


def describe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Store:
    """One database: the statements the gateway runs, and how they run.

    Subclasses provide ``open``, ``close``, ``migrate``, ``_fetch`` and ``_transaction``;
    everything the gateway asks of a database is written once, here.
    """

    url: str

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _fetch(self, sql: str, args: StatementArgs = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def _transaction(self, steps: list[tuple[str, list[StatementArgs]]]) -> list[int]:
        """Run each statement once per argument tuple, all in one transaction.

        Returns the rows each step changed.
        """
        raise NotImplementedError

    # -- schema -----------------------------------------------------------------------

    async def migrate(self) -> int:
        """Bring the schema up to ``SCHEMA_VERSION``, under a lock so that workers starting
        together migrate once; the version found before."""
        raise NotImplementedError

    @staticmethod
    def _check_version(found: int) -> None:
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"the database's schema is version {found}, newer than this gateway's "
                f"({SCHEMA_VERSION}): upgrade the gateway"
            )

    # -- keys -------------------------------------------------------------------------

    _KEY_COLUMNS = (
        "token",
        "key_name",
        "key_alias",
        "models",
        "max_budget",
        "budget_duration",
        "budget_reset_at",
        "spend",
        "expires",
        "rpm_limit",
        "tpm_limit",
        "max_parallel_requests",
        "metadata",
        "user_id",
        "team_id",
        "created_at",
        "updated_at",
    )

    async def insert_key(self, row: dict[str, Any]) -> None:
        columns = self._KEY_COLUMNS
        marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        sql = f"INSERT INTO gateway_keys ({', '.join(columns)}) VALUES ({marks})"
        await self._transaction([(sql, [[row[c] for c in columns]])])

    async def get_key(self, token: str) -> dict[str, Any] | None:
        rows = await self._fetch("SELECT * FROM gateway_keys WHERE token = $1", [token])
        return rows[0] if rows else None

    async def update_key(self, token: str, fields: dict[str, Any]) -> bool:
        names = [n for n in fields if n in self._KEY_COLUMNS and n != "token"]
        sets = ", ".join(f"{n} = ${i}" for i, n in enumerate(names, 1))
        sql = f"UPDATE gateway_keys SET {sets} WHERE token = ${len(names) + 1}"
        changed = await self._transaction([(sql, [[*(fields[n] for n in names), token]])])
        return changed[0] > 0

    async def delete_keys(self, tokens: Iterable[str]) -> list[str]:
        """Delete the keys; the tokens that existed."""
        tokens = list(dict.fromkeys(tokens))
        if not tokens:
            return []
        sql = "DELETE FROM gateway_keys WHERE token = $1"
        changed = await self._transaction([(sql, [[t]]) for t in tokens])
        return [t for t, n in zip(tokens, changed, strict=True) if n > 0]

    async def list_keys(
        self, filters: dict[str, Any], offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        return await self._page("gateway_keys", "created_at DESC, token", filters, offset, limit)

    # -- spend ------------------------------------------------------------------------

    _LOG_COLUMNS = (
        "request_id",
        "api_key",
        "key_alias",
        "model_group",
        "deployment",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "tokens_estimated",
        "spend",
        "status",
        "status_code",
        "start_time",
        "end_time",
        "ttft",
        "day",
        "batch_id",
    )
    _INSERT_LOG = (
        f"INSERT INTO gateway_spend_logs ({', '.join(_LOG_COLUMNS)}) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, len(_LOG_COLUMNS) + 1))}) "
        "ON CONFLICT (request_id) DO NOTHING"
    )
    # Keys are charged what this batch's rows that were inserted cost: a batch retried
    # after a commit whose outcome was unknown (the connection dropped) inserts nothing
    # again, so charges nothing again. No read-then-write, so concurrent writers lose
    # nothing either.
    _ADD_SPEND = (
        "UPDATE gateway_keys SET spend = spend + COALESCE(("
        "SELECT SUM(l.spend) FROM gateway_spend_logs l "
        "WHERE l.batch_id = $1 AND l.api_key = gateway_keys.token), 0) "
        "WHERE token IN (SELECT api_key FROM gateway_spend_logs WHERE batch_id = $1)"
    )
    # Conditional on the period it ends, so that of several workers noticing the same
    # reset, one applies it.
    _RESET = (
        "UPDATE gateway_keys SET spend = 0, budget_reset_at = $1 "
        "WHERE token = $2 AND budget_reset_at = $3"
    )

    async def write_spend(
        self, logs: list[Sequence[Any]], resets: list[tuple[float, str, float]]
    ) -> None:
        """One batch in one transaction: resets first, then the rows and the spend they add.

        ``logs`` are tuples in ``_LOG_COLUMNS`` order but the last (this call adds the
        batch id); ``resets`` are (next reset, token, this reset).
        """
        steps: list[tuple[str, list[StatementArgs]]] = []
        if resets:
            steps.append((self._RESET, list(resets)))
        if logs:
            batch = uuid.uuid4().hex
            steps.append((self._INSERT_LOG, [(*row, batch) for row in logs]))
            steps.append((self._ADD_SPEND, [(batch,)]))
        if steps:
            await self._transaction(steps)

    async def spend_logs(
        self, filters: dict[str, Any], offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        order = "start_time DESC, request_id"
        return await self._page("gateway_spend_logs", order, filters, offset, limit)

    async def spend_report(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        where, args = _where(filters)
        return await self._fetch(
            "SELECT day, api_key, MAX(key_alias) AS key_alias, model_group, "
            "SUM(spend) AS spend, COUNT(*) AS requests, "
            "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
            "SUM(total_tokens) AS total_tokens "
            f"FROM gateway_spend_logs{where} "
            "GROUP BY day, api_key, model_group ORDER BY day, api_key, model_group",
            args,
        )

    async def _page(
        self, table: str, order: str, filters: dict[str, Any], offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of ``table``'s rows that match ``filters``, and how many match."""
        where, args = _where(filters)
        total = await self._fetch(f"SELECT COUNT(*) AS n FROM {table}{where}", args)
        n = len(args)
        rows = await self._fetch(
            f"SELECT * FROM {table}{where} ORDER BY {order} LIMIT ${n + 1} OFFSET ${n + 2}",
            [*args, limit, offset],
        )
        return rows, int(total[0]["n"])

    async def totals(self) -> dict[str, Any]:
        rows = await self._fetch(
            "SELECT COUNT(*) AS requests, COALESCE(SUM(spend), 0) AS spend FROM gateway_spend_logs"
        )
        return rows[0]


def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """``filters`` maps ``"column op"`` to a value: {"api_key =": "...", "day >=": ...}."""
    clauses, args = [], []
    for i, (what, value) in enumerate(filters.items(), 1):
        column, op = what.split(" ")
        clauses.append(f"{column} {op} ${i}")
        args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def open_store(url: str, base_dir: str | None = None) -> Store:
    """The store for a ``database_url`` (not yet opened).

    ``sqlite:///relative.db`` is relative to ``base_dir`` (the config's folder),
    ``sqlite:////abs/path.db`` absolute, ``sqlite`` alone ``gateway.db`` in ``base_dir``.
    """
    scheme = url.partition(":")[0].lower()
    if scheme in ("postgres", "postgresql"):
        from .postgres import PostgresStore  # each backend imports this module's Store

        return PostgresStore(url)
    if scheme == "sqlite":
        rest = url[len("sqlite") :]
        if rest in ("", ":", "://"):
            path = "gateway.db"
        elif rest.startswith(":///"):
            path = rest[4:]
        else:
            raise StoreError(
                f"database_url {url!r}: write sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        if path != ":memory:" and not os.path.isabs(path):
            path = os.path.join(base_dir or os.getcwd(), path)
        from .sqlite import SQLiteStore

        return SQLiteStore(url, path)
    raise StoreError(
        f"database_url {describe_url(url)!r}: expected sqlite:///path.db or postgresql://..."
    )
