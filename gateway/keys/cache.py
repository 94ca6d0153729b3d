"""Virtual keys on the hot path: a cache of each key's limits and live counters.

A request with a generated key costs a SHA-256 of the key and a dict lookup; the
database is asked only the first time a key is seen in this process and when its
entry is older than ``ttl`` (refreshed in the background from ``ttl / 2``). A key
updated or deleted here is invalidated at once; in other ``--workers`` within ``ttl``.
While the database is down, cached keys keep working on their last known state.

Rate windows, parallel counts and the spend added here live in the entry, so without
Redis limits hold per process: with N workers, ``rpm_limit`` and ``tpm_limit`` allow up
to N times as much. Spend is shared through the database, re-read every ``ttl``. With
``router_settings.redis_url`` these counters are shared too (``shared.KeyCounters``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from random import getrandbits
from typing import Any

import msgspec

from ..errors import (
    AuthenticationError,
    GatewayError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
)
from .spend import Prices, SpendCollector, SpendWriter, chunk_usage, result_usage, text_chars
from .store import Store, StoreError, open_store

__all__ = ["Entry", "Grant", "KeyManager", "hash_key", "new_key", "parse_duration"]

logger = logging.getLogger("gateway.keys")

_json_decode = msgspec.json.decode

# -- keys --------------------------------------------------------------------------------


def new_key() -> str:
    """A new key: ``sk-`` and 256 random bits, URL-safe."""
    return "sk-" + secrets.token_urlsafe(32)


def hash_key(key: str | bytes) -> str:
    """What is stored of a key (LiteLLM's choice too: SHA-256, hex).

    A fast hash suffices: keys are 256 random bits, not passwords to brute-force.
    """
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(mo|s|m|h|d|w)\s*")


def parse_duration(text: str) -> float:
    """ "30s", "10m", "24h", "30d", "1w", "1mo" (30 days) -> seconds. ValueError if not."""
    match = _DURATION.fullmatch(text)
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 24h, 30d, 1w or 1mo")
    return float(match[1]) * _UNITS[match[2]]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


# -- cache entries ---------------------------------------------------------------------------


class Entry:
    """One key as the hot path sees it: its limits (from the database) and counters."""

    __slots__ = (
        "alias",
        "budget_period",
        "charged",
        "expires",
        "in_flight",
        "loaded_at",
        "master",
        "max_budget",
        "max_parallel",
        "models",
        "models_payload",
        "new_requests",
        "new_tokens",
        "refreshing",
        "requests",
        "reset_at",
        "rpm",
        "spend",
        "token",
        "token_sum",
        "tokens",
        "tpm",
        "view",
    )

    def __init__(self, token: str, *, master: bool = False) -> None:
        self.token = token
        self.master = master
        self.alias: str | None = None
        self.models: frozenset[str] | None = None
        self.models_payload: bytes | None = None
        self.max_budget: float | None = None
        self.budget_period: float | None = None
        self.reset_at: float | None = None
        self.spend = 0.0
        self.expires: float | None = None
        self.rpm: int | None = None
        self.tpm: int | None = None
        self.max_parallel: int | None = None
        self.in_flight = 0
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.token_sum = 0
        self.loaded_at = 0.0
        self.refreshing = False
        self.charged = not master  # the master key has no row to charge
        # Shared counters as last read from Redis, and what this process added since.
        self.view: Any = None
        self.new_requests = 0
        self.new_tokens = 0

    @property
    def shares(self) -> bool:
        """Whether a request of this key needs the shared counters."""
        return not self.master and (
            self.rpm is not None
            or self.tpm is not None
            or self.max_parallel is not None
            or self.max_budget is not None
        )

    def load(self, row: dict[str, Any], pending: float, now: float) -> None:
        self.alias = row["key_alias"]
        models = _json_decode(row["models"]) if row["models"] else []
        self.models = frozenset(models) if models else None
        self.models_payload = None
        self.max_budget = row["max_budget"]
        duration = row["budget_duration"]
        self.budget_period = parse_duration(duration) if duration else None
        reset_at = row["budget_reset_at"]
        if self.reset_at is not None and reset_at is not None and self.reset_at > reset_at:
            pass  # reset here, not yet written: our own count since then is the truth
        else:
            self.spend = float(row["spend"]) + pending
            self.reset_at = reset_at
        self.expires = row["expires"]
        self.rpm = row["rpm_limit"]
        self.tpm = row["tpm_limit"]
        self.max_parallel = row["max_parallel_requests"]
        self.loaded_at = now


# -- a request's view --------------------------------------------------------------------------


class Grant:
    """The key one request came with; admits it to a model and records what it cost."""

    __slots__ = (
        "chars",
        "deployment",
        "entry",
        "estimated",
        "first_at",
        "manager",
        "messages",
        "model",
        "started",
        "usage",
    )

    def __init__(self, manager: KeyManager, entry: Entry) -> None:
        self.manager = manager
        self.entry = entry
        self.model: str | None = None
        self.deployment: str | None = None
        self.usage: tuple[int, int] | None = None
        self.messages: Any = None
        self.chars = 0
        self.first_at: float | None = None
        self.started = 0.0

    @property
    def is_master(self) -> bool:
        return self.entry.master

    def admit(self, model: str) -> None:
        """Check this key may call ``model`` now; raises the error to answer if not."""
        e = self.entry
        manager = self.manager
        now = manager.clock()
        if not e.master:
            if e.expires is not None and now >= e.expires:
                raise AuthenticationError(
                    f"API key expired at {_iso(e.expires)}", code="expired_key"
                )
            if e.models is not None and model not in e.models:
                raise PermissionDeniedError(
                    f"This API key is not allowed to call model `{model}`; it may call: "
                    f"{', '.join(sorted(e.models))}",
                    param="model",
                    code="model_not_allowed",
                )
            if e.reset_at is not None and now >= e.reset_at:
                manager.reset_budget(e, now)
            view = e.view
            if view is not None and view.spend > e.spend:
                e.spend = view.spend  # other instances' costs, ahead of the database
            if e.max_budget is not None and e.spend >= e.max_budget:
                headers = {}
                if e.reset_at is not None:
                    headers = {"Retry-After": str(max(1, math.ceil(e.reset_at - now)))}
                raise RateLimitError(
                    f"Budget exceeded: this key spent {e.spend:.6f} of its max_budget "
                    f"{e.max_budget}"
                    + (f"; it resets at {_iso(e.reset_at)}" if e.reset_at is not None else ""),
                    type="insufficient_quota",
                    code="budget_exceeded",
                    headers=headers,
                    retryable=False,
                )
            if view is not None:
                self._admit_shared(e, view, now)
            else:
                self._admit_local(e, now)
        e.in_flight += 1
        self.model = model
        self.started = now
        counters = manager.counters
        if counters is not None and e.shares:
            counters.admitted(e)

    def _admit_shared(self, e: Entry, view: Any, now: float) -> None:
        if e.max_parallel is not None and e.in_flight + view.in_flight >= e.max_parallel:
            raise _limited(f"max_parallel_requests ({e.max_parallel})", 1.0)
        if e.rpm is not None and view.requests + e.new_requests >= e.rpm:
            raise _limited(f"rpm_limit ({e.rpm})", view.requests_free - now)
        if e.tpm is not None and view.tokens + e.new_tokens >= e.tpm:
            raise _limited(f"tpm_limit ({e.tpm})", view.tokens_free - now)
        if e.rpm is not None:
            e.requests.append(now)  # the local window too: it answers if Redis goes

    def _admit_local(self, e: Entry, now: float) -> None:
        if e.max_parallel is not None and e.in_flight >= e.max_parallel:
            raise _limited(f"max_parallel_requests ({e.max_parallel})", 1.0)
        if e.rpm is not None:
            requests = e.requests
            while requests and requests[0] <= now - 60.0:
                requests.popleft()
            if len(requests) >= e.rpm:
                raise _limited(f"rpm_limit ({e.rpm})", requests[0] + 60.0 - now)
        if e.tpm is not None:
            tokens = e.tokens
            while tokens and tokens[0][0] <= now - 60.0:
                e.token_sum -= tokens.popleft()[1]
            if e.token_sum >= e.tpm:
                raise _limited(f"tpm_limit ({e.tpm})", tokens[0][0] + 60.0 - now)
        if e.rpm is not None:
            e.requests.append(now)  # counted once admitted, not when refused

    def tap(self, call: Callable[[], Awaitable[Any]], messages: Any = None) -> Any:
        """``call`` (returning a ``Routed``), noting the deployment and usage of its answer."""
        self.messages = messages

        async def tapped() -> Any:
            routed = await call()
            self.deployment = routed.deployment
            result = routed.result
            if hasattr(result, "__aiter__") and hasattr(result, "aclose"):
                self.first_at = self.manager.clock()
                routed.result = _TappedStream(result, self)
            else:
                self.usage = result_usage(result)
            return routed

        return tapped

    def finish(self, status: int) -> None:
        """The request is over (``status`` as answered): free its slot, record its cost."""
        if self.model is None:
            return  # never admitted: an admin call, or refused before a model was known
        manager = self.manager
        e = self.entry
        e.in_flight -= 1
        now = manager.clock()
        estimated = False
        usage = self.usage
        if usage is None and self.first_at is not None:
            # A stream without usage: estimated, four characters a token.
            estimated = True
            usage = (text_chars(self.messages) // 4, self.chars // 4)
        prompt, completion = usage or (0, 0)
        total = prompt + completion
        if e.tpm is not None and total:
            e.tokens.append((now, total))
            e.token_sum += total
        cost = manager.prices.cost(self.model, self.deployment, prompt, completion)
        if cost and not e.master:
            e.spend += cost
        counters = manager.counters
        if counters is not None and e.shares:
            counters.finished(e, total, cost, now)
        ttft = None if self.first_at is None else self.first_at - self.started
        row = (
            manager.request_id(),
            e.token,
            e.alias,
            self.model,
            self.deployment,
            prompt,
            completion,
            total,
            int(estimated),
            cost,
            "success" if status < 400 else "failure",
            status,
            self.started,
            now,
            ttft,
            manager.day(self.started),
        )
        manager.writer.add(row, e.token, cost, e.charged)


def _limited(what: str, retry_after: float) -> RateLimitError:
    return RateLimitError(
        f"Rate limit reached for this API key: {what}",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


class _TappedStream:
    """A routed stream whose chunks are counted for the request's usage."""

    __slots__ = ("_gen", "_grant", "_inner")

    def __init__(self, inner: Any, grant: Grant) -> None:
        self._inner = inner
        self._grant = grant
        self._gen = self._chunks()

    def __aiter__(self) -> Any:
        return self._gen

    async def _chunks(self) -> Any:
        grant = self._grant
        async for chunk in self._inner:
            usage, chars = chunk_usage(chunk)
            if usage is not None:
                grant.usage = usage
            grant.chars += chars
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            await self._inner.aclose()


# -- the manager --------------------------------------------------------------------------------


class KeyManager:
    """Keys, their cache, and the spend writer of one app.

    ``clock`` (wall-clock seconds) is used for expiry, budget periods, rate windows and
    the cache's age, so tests can move time.
    """

    def __init__(
        self,
        store: Store,
        *,
        master_key: str,
        prices: Prices,
        ttl: float = 10.0,
        clock: Callable[[], float] = time.time,
        writer: SpendWriter | None = None,
        lookup_timeout: float = 2.0,
        max_unknown: int = 10_000,
    ) -> None:
        self.store = store
        self.prices = prices
        self.ttl = ttl
        self.clock = clock
        self.writer = writer or SpendWriter(store)
        self.lookup_timeout = lookup_timeout
        self.master = Entry(hash_key(master_key), master=True)
        self.master.alias = "master_key"
        self._entries: dict[str, Entry] = {}
        # Keys found not to exist, briefly remembered so a flood of bad keys does not
        # become a flood of queries. Bounded; one second, so a key made by another
        # worker works here at once after.
        self._unknown: dict[str, float] = {}
        self._max_unknown = max_unknown
        self._lookups: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._day: tuple[int, str] = (-1, "")
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        # Counters shared with other instances through Redis (``use_redis``), if any.
        self.counters: Any = None

    def use_redis(self, shared: Any) -> None:
        from .shared import KeyCounters

        self.counters = KeyCounters(shared)

    @classmethod
    def from_config(cls, config: Any, **options: Any) -> KeyManager:
        base = os.path.dirname(config.path) if config.path else None
        store = open_store(config.database_url, base)
        return cls(store, master_key=config.master_key, prices=Prices(config.model_list), **options)

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open (and migrate) the database, start the writer. Raises ``StoreError``."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self.store.open()
            self.writer.start()
            self._started = True

    async def _start_lazily(self) -> None:
        try:
            await self.start()
        except StoreError as exc:
            raise ServiceUnavailableError(f"Key store unavailable: {exc}") from None

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.writer.close()
        await self.store.close()

    # -- the hot path ------------------------------------------------------------------------

    async def authenticate(self, presented: bytes | None) -> Grant:
        """The grant for a presented key (``None``: the master key, already checked)."""
        if not self._started:  # a host app that never ran our lifespan
            await self._start_lazily()
        if presented is None:
            return Grant(self, self.master)
        token = hash_key(presented)
        entry = self._entries.get(token)
        if entry is not None:
            age = self.clock() - entry.loaded_at
            if age >= self.ttl:
                entry = await self._lookup(token, entry)
            elif age > self.ttl / 2 and not entry.refreshing:
                self._refresh_soon(entry)
        else:
            entry = await self._lookup(token, None)
        if self.counters is not None and entry.shares:
            await self.counters.sync(entry, self.clock())  # one Redis round trip
        return Grant(self, entry)

    def request_id(self) -> str:
        # 128 random bits; getrandbits, not os.urandom: no syscall (0.6 us vs 1.6 us here).
        return f"{getrandbits(128):032x}"

    def day(self, ts: float) -> str:
        """The UTC day of ``ts``, YYYY-MM-DD; strftime costs 2 us, so cached per day."""
        index = int(ts // 86400)
        if index != self._day[0]:
            self._day = (index, time.strftime("%Y-%m-%d", time.gmtime(index * 86400)))
        return self._day[1]

    def reset_budget(self, e: Entry, now: float) -> None:
        this_reset = e.reset_at
        assert this_reset is not None and e.budget_period is not None
        periods = math.floor((now - this_reset) / e.budget_period) + 1
        e.reset_at = this_reset + periods * e.budget_period
        e.spend = 0.0
        self.writer.reset(e.token, e.reset_at, this_reset)

    # -- the slow path ----------------------------------------------------------------------

    async def _lookup(self, token: str, stale: Entry | None) -> Entry:
        now = self.clock()
        if stale is None:
            until = self._unknown.get(token)
            if until is not None and now < until:
                raise _invalid()
        try:
            row = await asyncio.wait_for(self._fetch(token), self.lookup_timeout)
        except (StoreError, TimeoutError) as exc:
            if stale is not None:
                logger.warning("key store unavailable, using cached key %s: %s", token[:8], exc)
                stale.loaded_at = now - self.ttl / 2  # try again soon, in the background
                return stale
            raise ServiceUnavailableError(
                "Key store unavailable: cannot check this API key now", code="key_store_down"
            ) from None
        if row is None:
            self._entries.pop(token, None)
            if len(self._unknown) >= self._max_unknown:
                self._unknown.clear()
            self._unknown[token] = now + 1.0
            raise _invalid()
        # The entry in the cache now, if someone made one while we waited.
        entry = self._entries.get(token) or stale or Entry(token)
        if not hmac.compare_digest(row["token"], token):  # a defence; the query matched it
            raise _invalid()
        entry.load(row, self.writer.pending.get(token, 0.0), now)
        self._entries[token] = entry
        return entry

    async def _fetch(self, token: str) -> dict[str, Any] | None:
        # One query per token at a time: concurrent first requests of a key share it.
        future = self._lookups.get(token)
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._lookups[token] = future
        try:
            row = await self.store.get_key(token)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc if isinstance(exc, Exception) else StoreError("gone"))
                future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._lookups.pop(token, None)
        future.set_result(row)
        return row

    def _refresh_soon(self, entry: Entry) -> None:
        entry.refreshing = True

        async def refresh() -> None:
            try:
                await self._lookup(entry.token, entry)
            except GatewayError:
                pass  # deleted: _lookup dropped it from the cache
            finally:
                entry.refreshing = False

        task = asyncio.get_running_loop().create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def collector(self) -> Any:
        return SpendCollector(self.writer)

    def models_payload(self, entry: Entry, runtime: Any) -> bytes:
        """``/v1/models`` as this key sees it: its models only."""
        payload = entry.models_payload
        if payload is None:
            allowed = entry.models or frozenset()
            payload = entry.models_payload = msgspec.json.encode(
                {
                    "object": "list",
                    "data": [
                        {
                            "id": name,
                            "object": "model",
                            "created": runtime.started,
                            "owned_by": "gateway",
                        }
                        for name in runtime.router.model_names()
                        if name in allowed
                    ],
                }
            )
        return payload

    # -- for the admin endpoints --------------------------------------------------------------

    def reload(self, row: dict[str, Any]) -> None:
        """A key changed here: its cached entry takes the new limits now (counters kept)."""
        entry = self._entries.get(row["token"])
        if entry is not None:
            entry.load(row, self.writer.pending.get(row["token"], 0.0), self.clock())

    def invalidate(self, token: str) -> None:
        self._entries.pop(token, None)
        self._unknown.pop(token, None)

    def spend_now(self, token: str) -> float | None:
        """This process's view of a key's spend, if cached (ahead of the database)."""
        entry = self._entries.get(token)
        return None if entry is None else entry.spend


def _invalid() -> AuthenticationError:
    return AuthenticationError("Invalid API key", code="invalid_api_key")
