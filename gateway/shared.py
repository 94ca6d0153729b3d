"""One Redis connection for what gateway instances share, and what happens when it fails.

Redis being down or slow is never a failed request: every call has a short timeout
(``router_settings.redis_timeout``); the first failure marks the connection down, logs
once, counts in ``gateway_redis_errors_total``, and callers answer from their own
process's counters until a background ping (backoff 50 ms doubling to 5 s) finds Redis
again. ``/health/readiness`` says ``degraded`` meanwhile (still 200: the instance
serves).

Writes the hot path makes (a request counted, a slot freed) are queued and sent in one
pipeline per event-loop turn, together with the next read if one is waiting: a request
awaits at most one round trip.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

__all__ = ["SharedRedis", "connect"]

logger = logging.getLogger("gateway.shared")

# Writes queued while a flush is under way; beyond this the oldest are dropped (counters
# then run a little low, never the process out of memory).
_MAX_QUEUED = 10_000


def connect(url: str, timeout: float) -> Any:
    """A redis-py asyncio client for ``url``; ``redis+sentinel://h1:p1,h2:p2/service``
    and ``redis+cluster://host:port`` pick Sentinel and Cluster mode."""
    try:
        import redis.asyncio as aioredis
    except ImportError:  # pragma: no cover - the extra is documented
        raise RuntimeError("redis_url needs redis-py: pip install 'gateway[redis]'") from None
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 0,
    }
    parts = urlsplit(url)
    if parts.scheme in ("redis+sentinel", "rediss+sentinel"):
        from redis.asyncio.sentinel import Sentinel

        hosts = []
        for item in parts.netloc.rpartition("@")[2].split(","):
            host, _, port = item.rpartition(":")
            hosts.append((host or item, int(port) if port.isdigit() else 26379))
        service = parts.path.strip("/") or parse_qs(parts.query).get("service", ["mymaster"])[0]
        password = parts.password
        sentinel = Sentinel(hosts, password=password, **options)
        return sentinel.master_for(service, password=password, **options)
    if parts.scheme in ("redis+cluster", "rediss+cluster"):
        from redis.asyncio.cluster import RedisCluster

        scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
        plain = urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))
        return RedisCluster.from_url(plain, **options)
    return aioredis.from_url(url, max_connections=64, **options)


class SharedRedis:
    """A Redis client and its health, owned by one app (or one ``Router``).

    ``instance`` names this process in per-instance entries (in-flight counts), so a
    crashed instance's entries expire instead of leaking.
    """

    def __init__(self, url: str, *, timeout: float = 0.02, prefix: str = "gw") -> None:
        self.url = url
        self.timeout = timeout
        # One hash tag for every key: Lua scripts touch several keys at once, which
        # Redis Cluster allows only within one slot.
        self.prefix = "{" + prefix + "}:"
        self.instance = f"{os.getpid()}-{random.getrandbits(48):012x}"
        self.up = True
        self.errors = 0
        self.outages = 0
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._queue: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
        self._flush_scheduled = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_resume: list[Callable[[], None]] = []

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = connect(self.url, self.timeout)
        return self._client

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def script(self, name: str, lua: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(lua)
        return script

    # -- calls -----------------------------------------------------------------------

    def queue(self, script: Any, keys: list[str], args: list[Any]) -> None:
        """A write to send with the next pipeline (this event-loop turn at the latest)."""
        if not self.up:
            return
        queue = self._queue
        if len(queue) >= _MAX_QUEUED:
            del queue[0]
        queue.append((script, (), {"keys": keys, "args": args}))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._flush_scheduled = False
                return
            loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        if self._queue and self.up:
            self.spawn(self.execute([]))

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def execute(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any] | None:
        """Queued writes then ``calls`` (scripts with keys and args) in one pipeline; their
        results, or None if Redis is down or failed (the caller uses its own counters)."""
        if not self.up:
            return None
        queued, self._queue = self._queue, []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for script, _, kw in queued:
                    _add(pipe, script, kw["keys"], kw["args"])
                for script, keys, args in calls:
                    _add(pipe, script, keys, args)
                results = await asyncio.wait_for(pipe.execute(), self.timeout * 2)
        except Exception as exc:  # redis errors, OSError, timeouts: all mean "not now"
            self.failed(exc)
            return None
        return results[len(queued) :]

    async def call(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        """``fn(client)``; None if Redis is down or failed."""
        if not self.up:
            return None
        try:
            return await asyncio.wait_for(fn(self.client), self.timeout * 2)
        except Exception as exc:
            self.failed(exc)
            return None

    # -- health ----------------------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.up:
            return
        self.up = False
        self.outages += 1
        self._queue.clear()
        logger.warning(
            "Redis at %s unreachable (%s: %s); using this instance's own counters until it is back",
            _safe(self.url),
            type(exc).__name__,
            exc,
        )
        try:
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())
        except RuntimeError:
            pass

    async def _reconnect(self) -> None:
        delay = 0.05
        while True:
            await asyncio.sleep(delay * (0.5 + random.random()))
            try:
                # Pooled connections from before the outage are dead: drop them first.
                pool = getattr(self.client, "connection_pool", None)
                if pool is not None:
                    await pool.disconnect()
                await asyncio.wait_for(self.client.ping(), max(self.timeout * 5, 0.1))
            except asyncio.CancelledError:
                raise
            except Exception:
                self.errors += 1
                delay = min(delay * 2, 5.0)
                continue
            break
        self.up = True
        self._reconnecting = None
        logger.warning("Redis at %s is back; sharing state again", _safe(self.url))
        for hook in self.on_resume:
            hook()

    @property
    def status(self) -> str:
        return "connected" if self.up else "unreachable"

    def collect(self) -> Any:
        """Prometheus metrics (a collector for ``Metrics.collectors``)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "gateway_redis_up",
            "1 while shared state goes through Redis, 0 in fallback",
            int(self.up),
        )
        yield CounterMetricFamily(
            "gateway_redis_errors",
            "Redis calls that failed or timed out (each answered from local state)",
            self.errors,
        )
        yield CounterMetricFamily(
            "gateway_redis_outages", "Times this instance fell back to local state", self.outages
        )

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        if self._reconnecting is not None:
            tasks.append(self._reconnecting)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # closing a broken connection: nothing to do about it
                pass
            self._client = None
            self._scripts.clear()


def _add(pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
    # EVALSHA in the pipeline; the pipeline loads the script first if Redis lacks it
    # (a restarted server), the same as redis-py's Script.__call__ does, minus a coroutine.
    pipe.scripts.add(script)
    pipe.evalsha(script.sha, len(keys), *keys, *args)


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return url
