"""Virtual keys, budgets and spend, on SQLite or PostgreSQL.

On when ``general_settings.database_url`` is set (with a ``master_key``).
"""

from __future__ import annotations

import os
from typing import Any

from .cache import Grant, KeyManager, hash_key, new_key
from .store import StoreError, open_store

__all__ = ["Grant", "KeyManager", "StoreError", "check_database", "hash_key", "new_key"]


async def check_database(config: Any) -> None:
    """Open and migrate the config's database, then close it. Raises ``StoreError``."""
    store = open_store(config.database_url, os.path.dirname(config.path) if config.path else None)
    await store.open()
    await store.close()
