"""aiohttp's connector with a cap on idle keep-alive connections (imported on first use).

aiohttp caps connections in use (``limit``) but keeps every idle one until its
keep-alive expiry: after a burst of 1,000 streams it would hold 1,000 idle sockets.
``max_keepalive_connections`` caps them here. Not at the moment of release, as httpx's
``Limits`` do: under steady load the pool rotates (aiohttp reuses the longest idle
first), so more than the cap sit idle for a few milliseconds at a time, and closing
them there made a gateway at 256 connections reopen upstream connections all the
time (173 closed in 4 s against none for the bare forwarder, each a new connect later).
A connection beyond the cap is closed once it has been idle ``TRIM_AFTER`` seconds:
the cap holds at rest, within that time after a burst.

This reaches into the connector's pool (``_conns``, ``_acquired``, ``_waiters``); the
tests of the keep-alive cap and of ``pool_stats`` fail if a new aiohttp moves them.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Any

import aiohttp

TRIM_AFTER = 1.0  # seconds a connection beyond the cap may stay idle


class CappedConnector(aiohttp.TCPConnector):
    def __init__(self, *, max_idle: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_idle = max_idle
        self._trim_handle: asyncio.TimerHandle | None = None

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        super()._release(key, protocol, should_close=should_close)
        # One count per release (a few hosts at most) and at most one timer at a time.
        if self._trim_handle is None and sum(map(len, self._conns.values())) > self._max_idle:
            self._trim_handle = self._loop.call_later(TRIM_AFTER, self._trim)

    def _trim(self) -> None:
        self._trim_handle = None
        if self.closed:
            return
        conns = self._conns
        idle = sum(map(len, conns.values()))
        due = monotonic() - TRIM_AFTER
        while idle > self._max_idle:
            # The longest idle connection of any host: each queue's oldest is its first.
            key = min(conns, key=lambda k: conns[k][0][1])
            queue = conns[key]
            proto, since = queue[0]
            if since > due:
                # Still rotating: look again when this one has been idle long enough.
                self._trim_handle = self._loop.call_later(since - due, self._trim)
                return
            queue.popleft()
            proto.close()
            idle -= 1
            if not queue:
                del conns[key]

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
