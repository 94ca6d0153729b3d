"""aiohttp's connector with a cap on idle keep-alive connections (imported on first use).

aiohttp caps connections in use (``limit``) but keeps every idle one until its
keep-alive expiry: after a burst of 1,000 streams it would hold 1,000 idle sockets.
``max_keepalive_connections`` caps them here, as httpx's ``Limits`` did. This reaches
into the connector's pool (``_conns``, ``_acquired``, ``_waiters``); the tests of the
keep-alive cap and of ``pool_stats`` fail if a new aiohttp moves them.
"""

from __future__ import annotations

from typing import Any

import aiohttp


class CappedConnector(aiohttp.TCPConnector):
    def __init__(self, *, max_idle: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_idle = max_idle

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        super()._release(key, protocol, should_close=should_close)
        conns = self._conns
        idle = sum(len(q) for q in conns.values())
        while idle > self._max_idle:
            # Drop the oldest idle connection, of the host just released to if it has one.
            k = key if conns.get(key) else next(iter(conns))
            queue = conns[k]
            proto, _ = queue.popleft()
            proto.close()
            idle -= 1
            if not queue:
                del conns[k]

    def stats(self) -> dict[str, int]:
        idle = sum(1 for q in self._conns.values() for proto, _ in q if proto.is_connected())
        active = len(self._acquired)
        waiting = sum(len(w) for w in self._waiters.values())
        return {
            "connections": idle + active,
            "idle": idle,
            "active": active,
            "requests": active + waiting,
            "waiting": waiting,
        }
