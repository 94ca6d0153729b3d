"""Where keys and spend live: SQLite (embedded) or PostgreSQL, behind one small class.

Both backends run the same SQL. Statements are written with PostgreSQL's ``$1``
placeholders; for SQLite they become ``?1`` (same numbering), so no query exists twice.
Values are plain: times are epoch seconds (double), money is double, lists and
mappings are JSON text, so neither backend needs types of its own.

The schema is versioned (``gateway_schema``); ``open`` applies the migrations a database
lacks, under a lock so several workers starting at once migrate it once.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio

__all__ = ["SCHEMA_VERSION", "Store", "StoreError", "describe_url", "open_store"]

StatementArgs = Sequence[Any]


class StoreError(Exception):
    """The database cannot be reached or used; the message says which and why."""


# Each migration is a list of statements, applied in one transaction. Append, never edit.
_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE gateway_keys (
            token TEXT PRIMARY KEY,
            key_name TEXT NOT NULL,
            key_alias TEXT,
            models TEXT NOT NULL,
            max_budget DOUBLE PRECISION,
            budget_duration TEXT,
            budget_reset_at DOUBLE PRECISION,
            spend DOUBLE PRECISION NOT NULL DEFAULT 0,
            expires DOUBLE PRECISION,
            rpm_limit BIGINT,
            tpm_limit BIGINT,
            max_parallel_requests BIGINT,
            metadata TEXT NOT NULL,
            user_id TEXT,
            team_id TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX gateway_keys_alias ON gateway_keys (key_alias)",
        """CREATE TABLE gateway_spend_logs (
            request_id TEXT PRIMARY KEY,
            api_key TEXT NOT NULL,
            key_alias TEXT,
            model_group TEXT NOT NULL,
            deployment TEXT,
            prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL,
            total_tokens BIGINT NOT NULL,
            tokens_estimated INTEGER NOT NULL,
            spend DOUBLE PRECISION NOT NULL,
            status TEXT NOT NULL,
            status_code INTEGER NOT NULL,
            start_time DOUBLE PRECISION NOT NULL,
            end_time DOUBLE PRECISION NOT NULL,
            ttft DOUBLE PRECISION,
            day TEXT NOT NULL,
            batch_id TEXT NOT NULL
        )""",
        "CREATE INDEX gateway_spend_logs_time ON gateway_spend_logs (start_time)",
        "CREATE INDEX gateway_spend_logs_key ON gateway_spend_logs (api_key, start_time)",
        "CREATE INDEX gateway_spend_logs_day ON gateway_spend_logs (day)",
        "CREATE INDEX gateway_spend_logs_batch ON gateway_spend_logs (batch_id)",
    ],
]
SCHEMA_VERSION = len(_MIGRATIONS)

_DOLLAR = re.compile(r"\$(\d+)")


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
        where, args = _where(filters)
        total = await self._fetch(f"SELECT COUNT(*) AS n FROM gateway_keys{where}", args)
        n = len(args)
        rows = await self._fetch(
            f"SELECT * FROM gateway_keys{where} ORDER BY created_at DESC, token "
            f"LIMIT ${n + 1} OFFSET ${n + 2}",
            [*args, limit, offset],
        )
        return rows, int(total[0]["n"])

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
        where, args = _where(filters)
        total = await self._fetch(f"SELECT COUNT(*) AS n FROM gateway_spend_logs{where}", args)
        n = len(args)
        rows = await self._fetch(
            f"SELECT * FROM gateway_spend_logs{where} ORDER BY start_time DESC, request_id "
            f"LIMIT ${n + 1} OFFSET ${n + 2}",
            [*args, limit, offset],
        )
        return rows, int(total[0]["n"])

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


# -- SQLite --------------------------------------------------------------------------------


class SQLiteStore(Store):
    """The stdlib ``sqlite3`` on one connection, used from one worker thread at a time.

    The database file is opened in WAL mode so readers (the admin page) and the spend
    writer do not block each other, and with a busy timeout so several ``--workers``
    processes share it.
    """

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    async def open(self) -> None:
        self._limiter = anyio.CapacityLimiter(1)
        try:
            await self._run(self._connect)
            await self.migrate()
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from None
        except BaseException:
            await self.close()
            raise

    def _connect(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        if self.path != ":memory:" and not os.path.isdir(folder):
            raise sqlite3.OperationalError(f"folder {folder} does not exist")
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._conn = conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await self._run(conn.close)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _conn_or_fail(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"SQLite database {self.path} is closed")
        return self._conn

    async def _fetch(self, sql: str, args: StatementArgs = ()) -> list[dict[str, Any]]:
        sql = _DOLLAR.sub(r"?\1", sql)

        def run() -> list[dict[str, Any]]:
            return [dict(row) for row in self._conn_or_fail().execute(sql, tuple(args))]

        return await self._wrap(run)

    async def _transaction(self, steps: list[tuple[str, list[StatementArgs]]]) -> list[int]:
        def run() -> list[int]:
            conn = self._conn_or_fail()
            changed = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in steps:
                    cursor = conn.executemany(_DOLLAR.sub(r"?\1", sql), [tuple(r) for r in rows])
                    changed.append(cursor.rowcount)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            return changed

        return await self._wrap(run)

    async def _wrap(self, run: Any) -> Any:
        try:
            return await self._run(run)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite database {self.path}: {exc}") from exc

    async def migrate(self) -> int:
        def run() -> int:
            conn = self._conn_or_fail()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS gateway_schema (version INTEGER NOT NULL)")
                row = conn.execute("SELECT MAX(version) FROM gateway_schema").fetchone()
                found = int(row[0] or 0)
                self._check_version(found)
                for version in range(found + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[version - 1]:
                        conn.execute(statement)
                    conn.execute("INSERT INTO gateway_schema (version) VALUES (?)", (version,))
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            return found

        return int(await self._run(run))


# -- PostgreSQL ----------------------------------------------------------------------------


class PostgresStore(Store):
    """asyncpg with a connection pool.

    A connection that broke (the server restarted) is dropped by the pool and a new one
    made on the next call, so a database that comes back is used again without a restart.
    """

    def __init__(self, url: str, *, pool_size: int = 10, timeout: float = 10.0) -> None:
        self.url = url
        self.pool_size = pool_size
        self.timeout = timeout
        self._pool: Any = None

    async def open(self) -> None:
        try:
            import asyncpg
        except ImportError:
            raise StoreError(
                "a postgresql:// database_url needs asyncpg: pip install 'gateway[postgres]'"
            ) from None
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.timeout,
                command_timeout=self.timeout,
            )
            await self.migrate()
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            # A connection dropped mid-protocol (the server restarted) can surface as
            # asyncpg's "cannot switch to state N": the same outage, not a bug of ours.
            asyncpg.InternalClientError,
            TimeoutError,
        ) as exc:
            await self.close()
            raise StoreError(
                f"cannot connect to PostgreSQL at {describe_url(self.url)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await pool.close()
            pool.terminate()

    def _pool_or_fail(self) -> Any:
        if self._pool is None:
            raise StoreError(f"PostgreSQL {describe_url(self.url)} is closed")
        return self._pool

    async def _fetch(self, sql: str, args: StatementArgs = ()) -> list[dict[str, Any]]:
        async with self._errors():
            rows = await self._pool_or_fail().fetch(sql, *args)
            return [dict(row) for row in rows]

    async def _transaction(self, steps: list[tuple[str, list[StatementArgs]]]) -> list[int]:
        changed = []
        async with self._errors(), self._pool_or_fail().acquire() as conn, conn.transaction():
            for sql, rows in steps:
                if len(rows) == 1:
                    status = await conn.execute(sql, *rows[0])
                    changed.append(int(status.rsplit(" ", 1)[-1]))
                else:
                    await conn.executemany(sql, rows)
                    changed.append(len(rows))
        return changed

    @contextlib.asynccontextmanager
    async def _errors(self) -> Any:
        import asyncpg

        try:
            yield
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            # A connection dropped mid-protocol (the server restarted) can surface as
            # asyncpg's "cannot switch to state N": the same outage, not a bug of ours.
            asyncpg.InternalClientError,
            TimeoutError,
        ) as exc:
            raise StoreError(
                f"PostgreSQL {describe_url(self.url)}: {type(exc).__name__}: {exc}"
            ) from exc

    async def migrate(self) -> int:
        async with self._pool_or_fail().acquire() as conn, conn.transaction():
            # One migrating worker at a time; the others wait, then find nothing to do.
            await conn.execute("SELECT pg_advisory_xact_lock(7215342)")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS gateway_schema (version INTEGER NOT NULL)"
            )
            found = int(await conn.fetchval("SELECT MAX(version) FROM gateway_schema") or 0)
            self._check_version(found)
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version - 1]:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO gateway_schema (version) VALUES ($1)", version)
        return found


def open_store(url: str, base_dir: str | None = None) -> Store:
    """The store for a ``database_url`` (not yet opened).

    ``sqlite:///relative.db`` is relative to ``base_dir`` (the config's folder),
    ``sqlite:////abs/path.db`` absolute, ``sqlite`` alone ``gateway.db`` in ``base_dir``.
    """
    scheme = url.partition(":")[0].lower()
    if scheme in ("postgres", "postgresql"):
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
        return SQLiteStore(url, path)
    raise StoreError(
        f"database_url {describe_url(url)!r}: expected sqlite:///path.db or postgresql://..."
    )
