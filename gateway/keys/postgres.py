"""``PostgresStore``: the keys database on PostgreSQL, through asyncpg's pool."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio

from .schema import CREATE_VERSION_TABLE, FIND_VERSION, upgrade
from .store import StatementArgs, Store, StoreError, describe_url

__all__ = ["PostgresStore"]


def _outages(asyncpg: Any) -> tuple[type[BaseException], ...]:
    """What asyncpg raises when the database is down, unreachable or went away."""
    return (
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        # A connection dropped mid-protocol (the server restarted) can surface as
        # asyncpg's "cannot switch to state N": the same outage, not a bug of ours.
        asyncpg.InternalClientError,
        TimeoutError,
    )


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
        except _outages(asyncpg) as exc:
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
        except _outages(asyncpg) as exc:
            raise StoreError(
                f"PostgreSQL {describe_url(self.url)}: {type(exc).__name__}: {exc}"
            ) from exc

    async def migrate(self) -> int:
        async with self._pool_or_fail().acquire() as conn, conn.transaction():
            # One migrating worker at a time; the others wait, then find nothing to do.
            await conn.execute("SELECT pg_advisory_xact_lock(7215342)")
            await conn.execute(CREATE_VERSION_TABLE)
            found = int(await conn.fetchval(FIND_VERSION) or 0)
            self._check_version(found)
            for sql, args in upgrade(found):
                await conn.execute(sql, *args)
        return found
