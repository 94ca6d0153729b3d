"""``SQLiteStore``: the keys database embedded, on the stdlib ``sqlite3``."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from .schema import CREATE_VERSION_TABLE, FIND_VERSION, upgrade
from .store import StatementArgs, Store, StoreError

__all__ = ["SQLiteStore"]

T = TypeVar("T")

# Statements are written with PostgreSQL's $1 placeholders; SQLite's are ?1, same numbering.
_DOLLAR = re.compile(r"\$(\d+)")


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
        def run(conn: sqlite3.Connection) -> list[int]:
            changed = []
            for sql, rows in steps:
                cursor = conn.executemany(_DOLLAR.sub(r"?\1", sql), [tuple(r) for r in rows])
                changed.append(cursor.rowcount)
            return changed

        return await self._wrap(lambda: _atomic(self._conn_or_fail(), run))

    async def _wrap(self, run: Any) -> Any:
        try:
            return await self._run(run)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite database {self.path}: {exc}") from exc

    async def migrate(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            conn.execute(CREATE_VERSION_TABLE)
            found = int(conn.execute(FIND_VERSION).fetchone()[0] or 0)
            self._check_version(found)
            for sql, args in upgrade(found):
                conn.execute(_DOLLAR.sub(r"?\1", sql), args)
            return found

        return int(await self._run(lambda: _atomic(self._conn_or_fail(), run)))


def _atomic(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work(conn)`` in one write transaction, rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return result
