"""The keys database's schema: its migrations, in order, and the statements that bring a
database at one version up to this gateway's (``upgrade``). The stores run them, each
on its own connection, under a lock."""

from __future__ import annotations

from typing import Any

__all__ = ["CREATE_VERSION_TABLE", "FIND_VERSION", "SCHEMA_VERSION", "upgrade"]

# Each migration is a list of statements, applied in one transaction. Append, never edit.
MIGRATIONS: list[list[str]] = [
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
SCHEMA_VERSION = len(MIGRATIONS)

CREATE_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS gateway_schema (version INTEGER NOT NULL)"
FIND_VERSION = "SELECT MAX(version) FROM gateway_schema"


def upgrade(found: int) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements (``$1`` placeholders) and their arguments that bring a schema at
    version ``found`` to ``SCHEMA_VERSION``, each version recorded as it is applied."""
    steps: list[tuple[str, tuple[Any, ...]]] = []
    for version in range(found + 1, SCHEMA_VERSION + 1):
        steps += [(statement, ()) for statement in MIGRATIONS[version - 1]]
        steps.append(("INSERT INTO gateway_schema (version) VALUES ($1)", (version,)))
    return steps
