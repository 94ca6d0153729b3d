"""``DualCache``, at LiteLLM's ``litellm.caching.dual_cache`` path: the ``cache`` argument
of ``async_pre_call_hook``. Here one bounded in-memory cache per app (LiteLLM adds Redis)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

__all__ = ["DualCache"]


class DualCache:
    """Key -> value with an optional TTL in seconds; the oldest entries go past ``max_items``."""

    def __init__(self, max_items: int = 10_000, default_ttl: float | None = None) -> None:
        self.max_items = max_items
        self.default_ttl = default_ttl
        self._items: OrderedDict[str, tuple[Any, float | None]] = OrderedDict()

    def set_cache(self, key: str, value: Any, ttl: float | None = None, **kwargs: Any) -> None:
        ttl = ttl if ttl is not None else self.default_ttl
        expires = time.monotonic() + ttl if ttl is not None else None
        items = self._items
        items[key] = (value, expires)
        items.move_to_end(key)
        while len(items) > self.max_items:
            items.popitem(last=False)

    def get_cache(self, key: str, **kwargs: Any) -> Any:
        entry = self._items.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and time.monotonic() >= expires:
            del self._items[key]
            return None
        return value

    def delete_cache(self, key: str) -> None:
        self._items.pop(key, None)

    def increment_cache(
        self, key: str, value: float, ttl: float | None = None, **kwargs: Any
    ) -> Any:
        total = (self.get_cache(key) or 0) + value
        self.set_cache(key, total, ttl=ttl)
        return total

    async def async_set_cache(
        self, key: str, value: Any, ttl: float | None = None, **kwargs: Any
    ) -> None:
        self.set_cache(key, value, ttl=ttl)

    async def async_get_cache(self, key: str, **kwargs: Any) -> Any:
        return self.get_cache(key)

    async def async_delete_cache(self, key: str) -> None:
        self.delete_cache(key)

    async def async_increment_cache(
        self, key: str, value: float, ttl: float | None = None, **kwargs: Any
    ) -> Any:
        return self.increment_cache(key, value, ttl=ttl)
