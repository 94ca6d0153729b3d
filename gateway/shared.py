"""One Redis connection for what gateway instances share, and what happens when it fails.

Redis being down or slow is never a failed request: every call has a short timeout
(``router_settings.redis_timeout``); the first failure marks the connection down, logs
once, counts in ``gateway_redis_errors_total``, and callers answer from their own
process's counters until a background ping (backoff 50 ms doubling to 5 s) finds Redis
again. ``/health/readiness`` says ``degraded`` meanwhile (still 200: the instance
serves).

Writes the hot path makes (a request counted, a slot freed) are queued and sent with
the next read of any request, or on their own within 2 ms: a request awaits at most
one round trip, and other instances see this one's counts at most 2 ms plus a round
trip late. Everything is one Lua script (``_SCRIPT``), so a write
and a read are atomic and cost one command, not a pipeline (redis-py's pipeline costs
twice a single command's time in Python); the reads of every request of one event-loop
turn share that command.

Times are Redis' own (``TIME``), so instances need no synchronized clocks. Requests and
tokens are counted in one-second buckets of a hash per counted thing, summed over the
last 60. In-flight counts are one hash field per instance, rewritten whole (never
incremented) with an expiry a heartbeat renews, so a crashed instance leaks nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

try:
    from redis.exceptions import NoScriptError
except ImportError:  # redis-py is the optional extra gateway[redis]; connect() says so

    class NoScriptError(Exception):  # type: ignore[no-redef]
        pass


__all__ = ["SharedRedis", "connect"]

# ARGV: instance, number of counted triples, of spend keys, of write ops; then per op:
# op, x, y. KEYS: the triples, the spend keys, then one key per op.
_SCRIPT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now_ms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local inst = ARGV[1]
local ntrip, nspend, nops = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local base = 3 * ntrip + nspend
for i = 1, nops do
  local key = KEYS[base + i]
  local a = 4 + (i - 1) * 3
  local op, x, y = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  if op == 'r' or op == 't' then
    redis.call('HINCRBY', key, op .. ':' .. sec, x)
    redis.call('EXPIRE', key, 120)
  elseif op == 'f' then
    if tonumber(x) <= 0 then
      redis.call('HDEL', key, inst)
    else
      redis.call('HSET', key, inst, x .. ':' .. string.format('%d', now_ms + 30000))
      redis.call('PEXPIRE', key, 30000)
    end
  elseif op == 'c' then
    if redis.call('PTTL', key) < tonumber(x) then
      redis.call('SET', key, '1', 'PX', x)
    end
  elseif op == 's' then
    redis.call('INCRBYFLOAT', key, x)
    redis.call('EXPIRE', key, y)
  end
end
local out = {}
for i = 1, 3 * ntrip, 3 do
  local cd = redis.call('PTTL', KEYS[i])
  if cd < 0 then cd = 0 end
  local req, tok, old_r, old_t = 0, 0, -1, -1
  local h = redis.call('HGETALL', KEYS[i + 1])
  for j = 1, #h, 2 do
    local f = h[j]
    local s = tonumber(string.sub(f, 3))
    if s == nil or s <= sec - 60 then
      redis.call('HDEL', KEYS[i + 1], f)
    else
      local v = tonumber(h[j + 1])
      if string.sub(f, 1, 1) == 'r' then
        req = req + v
        if old_r < 0 or s < old_r then old_r = s end
      else
        tok = tok + v
        if old_t < 0 or s < old_t then old_t = s end
      end
    end
  end
  local wait_r, wait_t = 0, 0
  if old_r >= 0 then wait_r = (old_r + 61) * 1000 - now_ms end
  if old_t >= 0 then wait_t = (old_t + 61) * 1000 - now_ms end
  local busy = 0
  local f = redis.call('HGETALL', KEYS[i + 2])
  for j = 1, #f, 2 do
    local n, exp = string.match(f[j + 1], '(%d+):(%d+)')
    if n == nil or tonumber(exp) < now_ms then
      redis.call('HDEL', KEYS[i + 2], f[j])
    elseif f[j] ~= inst then
      busy = busy + tonumber(n)
    end
  end
  table.insert(out, {cd, req, tok, wait_r, wait_t, busy})
end
for i = 3 * ntrip + 1, base do
  table.insert(out, redis.call('GET', KEYS[i]) or '0')
end
return out
"""
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
# An instance's in-flight entry lives this long without a heartbeat (the script's 30000).
IN_FLIGHT_TTL = 30.0

logger = logging.getLogger("gateway.shared")

# Distinct keys with queued writes; beyond this new ones are dropped (counters then run a
# little low, never the process out of memory).
_MAX_QUEUED = 10_000
# Requests whose reads share one script call, at most.
_MAX_READS = 64
_Read = tuple[Sequence[str], Sequence[str], "asyncio.Future[list[Any] | None]"]
# Writes ride along with the next read (under load: at once); without one, they go on
# their own after this long. It bounds how late other instances see this one's counts.
_WRITE_LAG = 0.002
# Timeouts in a row put down to a busy loop before Redis is taken for down all the same.
LATE_LIMIT = 3


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
        sentinel = Sentinel(hosts, password=password, **options)  # type: ignore[no-untyped-call]
        return sentinel.master_for(service, password=password, **options)
    if parts.scheme in ("redis+cluster", "rediss+cluster"):
        from redis.asyncio.cluster import RedisCluster

        scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
        plain = urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))
        return RedisCluster.from_url(plain, **options)
    # Blocking: past 64 concurrent calls a call waits briefly for a connection instead of
    # failing (which would count as Redis down).
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=64, timeout=max(timeout * 5, 0.1), **options
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it


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
        self.late = 0  # timeouts put down to a busy event loop (see ``failed``)
        self._late_in_a_row = 0
        self._client: Any = None
        # Queued writes, merged per (op, key): counts add up, an in-flight count replaces
        # the last, a cooldown keeps the longest. A batch is small however busy we are.
        self._ops: dict[tuple[str, str], list[Any]] = {}
        self._flush_scheduled = False
        self._reads: list[_Read] | None = None  # this loop turn's reads, if any
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

    # -- the one script ------------------------------------------------------------------

    def queue(self, op: str, key: str, x: Any = 0, y: Any = 0) -> None:
        """A write for the next call (sent within ``_WRITE_LAG`` at the latest):
        ``r``/``t`` add ``x`` requests/tokens to a usage hash; ``f`` sets this instance's
        in-flight count to ``x``; ``c`` cools a key down for ``x`` ms (the longer wins);
        ``s`` adds ``x`` to a spend counter kept ``y`` seconds."""
        if not self.up:
            return
        ops = self._ops
        pending = ops.get((op, key))
        if pending is None:
            if len(ops) >= _MAX_QUEUED:
                self.errors += 1
                return
            ops[op, key] = [x, y]
        elif op == "f":
            pending[0] = x
        elif op == "c":
            pending[0] = max(pending[0], x)
        else:
            pending[0] += x
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._flush_scheduled = True
            loop.call_later(_WRITE_LAG, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        if self._ops and self.up:
            self.spawn(self._flush())

    async def _flush(self) -> None:
        if self._ops and self.up:  # else a read took them since
            await self._script((), ())

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """``coro`` as a task this object cancels when it closes."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def sync(self, counted: Sequence[str], spends: Sequence[str]) -> list[Any] | None:
        """Queued writes, then a read, in one script call (one round trip).

        ``counted`` are triples of keys (cooldown, usage hash, in-flight hash) read as
        [cooldown ms left, requests, tokens, ms until the oldest request and token
        buckets leave the minute, other instances' in flight]; ``spends`` are counters
        read as strings. None if Redis is down or failed: use local counters.

        Reads asked for in the same event-loop turn share one script call (each
        costs this process ~150 us of redis-py however many keys it reads).
        """
        if not self.up:
            return None
        batch = self._reads
        if batch is None or len(batch) >= _MAX_READS:
            # The task's first step runs in a later loop turn, after this turn's reads.
            batch = self._reads = []
            task = self.spawn(self._read(batch))
            task.add_done_callback(lambda _: _settle(batch))
        future: asyncio.Future[list[Any] | None] = asyncio.get_running_loop().create_future()
        batch.append((counted, spends, future))
        return await future

    async def _read(self, batch: list[_Read]) -> None:
        if self._reads is batch:
            self._reads = None
        triples: dict[tuple[str, ...], int] = {}
        counters: dict[str, int] = {}
        for counted, spends, _ in batch:
            for i in range(0, len(counted), 3):
                triples.setdefault(tuple(counted[i : i + 3]), len(triples))
            for key in spends:
                counters.setdefault(key, len(counters))
        out = await self._script([k for t in triples for k in t], list(counters))
        if out is None:
            return  # _settle answers None to all
        if not isinstance(out, list) or len(out) != len(triples) + len(counters):
            self.failed(ValueError(f"unexpected script answer {out!r:.80}: not our Redis?"))
            return
        n = len(triples)
        for counted, spends, future in batch:
            if not future.done():
                rows = [out[triples[tuple(counted[i : i + 3])]] for i in range(0, len(counted), 3)]
                rows += [out[n + counters[key]] for key in spends]
                future.set_result(rows)

    async def _script(self, counted: Sequence[str], spends: Sequence[str]) -> Any:
        """The script call: this instance's queued writes, then the reads."""
        ops, self._ops = self._ops, {}
        keys = [*counted, *spends]
        args: list[Any] = [self.instance, len(counted) // 3, len(spends), len(ops)]
        for (op, key), (x, y) in ops.items():
            keys.append(key)
            args += (op, repr(x) if op == "s" else x, y)
        client = self.client
        started = asyncio.get_running_loop().time()
        try:
            try:
                out = await client.evalsha(_SHA, len(keys), *keys, *args)
            except NoScriptError:  # a new (or restarted) Redis: load it once
                await client.script_load(_SCRIPT)
                out = await client.evalsha(_SHA, len(keys), *keys, *args)
        except Exception as exc:  # redis errors, OSError, timeouts: all mean "not now"
            self.failed(exc, started)
            return None
        self._late_in_a_row = 0
        return out

    async def call(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        """``fn(client)``; None if Redis is down or failed."""
        if not self.up:
            return None
        started = asyncio.get_running_loop().time()
        try:
            out = await fn(self.client)  # socket_timeout bounds it
        except Exception as exc:
            self.failed(exc, started)
            return None
        self._late_in_a_row = 0
        return out

    # -- health ----------------------------------------------------------------------

    def failed(self, exc: BaseException, started: float | None = None) -> None:
        """A call failed: Redis is down until a ping answers. Not for a timeout that
        fired over twice late (the call began at ``started``): then this process's
        event loop was busy, not Redis slow, and only this call answers locally (a
        saturated loop would otherwise flap between Redis and local counters). Unless
        ``LATE_LIMIT`` such calls failed in a row with no answer between: a loop that
        stays saturated must still find out that Redis hung, or every call would wait
        out its timeout for as long as the load lasts."""
        self.errors += 1
        if not self.up:
            return
        if started is not None and _is_timeout(exc):
            late = asyncio.get_running_loop().time() - started
            if late > 2 * self.timeout + 0.005:
                self.late += 1
                self._late_in_a_row += 1
                if self._late_in_a_row < LATE_LIMIT:
                    return
        self._late_in_a_row = 0
        self.up = False
        self.outages += 1
        self._ops.clear()
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
        yield CounterMetricFamily(
            "gateway_redis_late",
            "Redis timeouts put down to this process's busy event loop (answered locally, "
            "Redis not marked down)",
            self.late,
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


def _is_timeout(exc: BaseException) -> bool:
    # redis-py's TimeoutError is its own class, not the builtin.
    return isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError"


def _settle(batch: list[_Read]) -> None:
    """Reads the script call did not answer (Redis failed, or shutdown cancelled it):
    None, so their requests use local counters."""
    for _, _, future in batch:
        if not future.done():
            future.set_result(None)


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return url
