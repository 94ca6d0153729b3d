"""The response cache (``litellm_settings.cache: true`` and ``cache_params``).

An answer of ``/v1/chat/completions`` or ``/v1/embeddings`` is reused for a request to
the same endpoint with the same model group, messages (or input) and parameters that
change an answer (everything in the body but ``user``, ``metadata``, ``timeout`` and
``cache``), streamed or not: a streamed answer is stored as the exact bytes of its
events and replayed as a stream. The front doors (completions, responses, messages)
are not cached: a Responses answer has an id of its own that may be stored and chained.
Only complete answers are stored: an error, a stream that ended in an error event, or
an answer cut off by the client never is.

Scope: the model group is part of the key, and a virtual key is admitted to the model
before the cache is looked at, so a key never gets an answer for a model it may not
call. A hit costs no tokens (the spend row says 0) and no upstream call; callbacks get
a success event with LiteLLM's ``cache_hit: true`` and ``response_cost`` 0.

A request controls it with LiteLLM's ``"cache": {"no-cache": true}`` (do not look),
``"no-store": true`` (do not keep this answer) and ``"ttl": N`` (keep it N seconds, at
most ``cache_params.ttl``: the operator decides how long answers may live).

``type: local`` is an LRU of ``max_size`` answers per process; ``type: redis`` is
shared by every instance (``cache_params.url`` or host/port/password, else
``router_settings.redis_url``). Redis down is a miss, never an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from typing import Any

import msgspec

from .config import CacheSettings, redis_url_of
from .errors import BadRequestError
from .shared import SharedRedis

__all__ = ["ResponseCache"]

_encode_sorted = msgspec.json.Encoder(order="sorted").encode

# Body fields that never change an answer.
_IGNORED = frozenset({"user", "metadata", "timeout", "cache", "litellm_metadata", "request_id"})

HIT = (b"x-gateway-cache-hit", b"true")
MISS = (b"x-gateway-cache-hit", b"false")


class _Control(msgspec.Struct, rename={"no_cache": "no-cache", "no_store": "no-store"}):
    no_cache: bool = False
    no_store: bool = False
    ttl: float | None = None


class Lookup:
    """One request's use of the cache: its key and what it may do."""

    __slots__ = ("key", "read", "store", "ttl")

    def __init__(self, key: str, read: bool, store: bool, ttl: float) -> None:
        self.key = key
        self.read = read
        self.store = store
        self.ttl = ttl


class _Local:
    """An LRU of at most ``max_size`` answers, each with its expiry."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: str, value: bytes, ttl: float) -> None:
        items = self._items
        items[key] = (time.monotonic() + ttl, value)
        items.move_to_end(key)
        while len(items) > self.max_size:
            items.popitem(last=False)

    async def aclose(self) -> None:
        self._items.clear()


class _Redis:
    """Answers in Redis. Look-ups made in the same event-loop turn share one ``MGET``: a
    Redis command costs this process ~100 us of redis-py whatever its size, so under
    load many hits pay for one."""

    def __init__(self, shared: SharedRedis, owned: bool) -> None:
        self.shared = shared
        self.owned = owned
        self._batch: dict[str, list[asyncio.Future[bytes | None]]] | None = None

    async def get(self, key: str) -> bytes | None:
        batch = self._batch
        if batch is None or len(batch) >= _MAX_BATCH:
            # The task's first step runs in a later loop turn, after this turn's look-ups.
            batch = self._batch = {}
            task = self.shared.spawn(self._mget(batch))
            task.add_done_callback(lambda _: _settle(batch))
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        waiting = batch.get(key)
        if waiting is None:
            batch[key] = [future]
        else:
            waiting.append(future)
        return await future

    async def _mget(self, batch: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        if self._batch is batch:
            self._batch = None
        keys = list(batch)
        values = await self.shared.call(lambda client: _mget_of(client)(keys))
        if isinstance(values, list) and len(values) == len(keys):
            for value, futures in zip(values, batch.values(), strict=True):
                for future in futures:
                    if not future.done():
                        future.set_result(value if isinstance(value, bytes) else None)

    def put(self, key: str, value: bytes, ttl: float) -> None:
        ms = max(1, int(ttl * 1000))
        self.shared.spawn(self.shared.call(lambda client: client.set(key, value, px=ms)))

    async def aclose(self) -> None:
        if self.owned:
            await self.shared.aclose()


# Keys per MGET: beyond it a new batch starts (a batch's answers are held in memory at once).
_MAX_BATCH = 64


def _settle(batch: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
    """Look-ups the ``MGET`` did not answer (Redis failed, or shutdown cancelled it):
    misses."""
    for futures in batch.values():
        for future in futures:
            if not future.done():
                future.set_result(None)


def _mget_of(client: Any) -> Any:
    # A cluster client's MGET refuses keys of several slots; its non-atomic one splits them.
    return getattr(client, "mget_nonatomic", None) or client.mget


class ResponseCache:
    """The cache of one app."""

    def __init__(self, settings: CacheSettings, shared: SharedRedis | None = None) -> None:
        self.settings = settings
        self.namespace = settings.namespace
        self.hits = 0
        self.misses = 0
        self.backend: _Local | _Redis
        self.shared: SharedRedis | None = None
        if settings.type == "redis":
            own = redis_url_of(settings.url, settings.host, settings.port, settings.password)
            if own is not None:
                self.shared = SharedRedis(own, timeout=shared.timeout if shared else 0.02)
                self.backend = _Redis(self.shared, owned=True)
            else:
                assert shared is not None  # the config checks there is a URL
                self.shared = shared
                self.backend = _Redis(shared, owned=False)
        else:
            self.backend = _Local(settings.max_size)

    def lookup(
        self,
        model: str,
        messages: Any,
        optional: dict[str, Any],
        stream: bool,
        control: Any,
        kind: str = "chat",
    ) -> Lookup | None:
        """The request's key and rules; None if it asked not to use the cache at all.
        ``kind`` (``chat``, ``embeddings``) keeps each API's answers apart."""
        rules = _control(control)
        params = {k: v for k, v in optional.items() if k not in _IGNORED}
        key = (kind, model, stream, messages, params)
        digest = hashlib.sha256(_encode_sorted(key)).hexdigest()
        ttl = self.settings.ttl
        if rules.ttl is not None:
            ttl = min(ttl, rules.ttl)
        if rules.no_cache and rules.no_store:
            return None
        return Lookup(f"{self.namespace}:{digest}", not rules.no_cache, not rules.no_store, ttl)

    async def get(self, lookup: Lookup) -> bytes | None:
        if not lookup.read:
            return None
        value = await self.backend.get(lookup.key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def prefetchable(self, lookup: Lookup) -> str | None:
        """The Redis key to read in the request's shared-state round trip, when this
        cache lives on the router's Redis (one round trip for counters and answer)."""
        backend = self.backend
        if lookup.read and isinstance(backend, _Redis) and not backend.owned:
            # A cluster runs a script on one slot's keys only: the counters' (``{gw}``).
            if "cluster" not in backend.shared.url.split("://", 1)[0]:
                return lookup.key
        return None

    def prefetched(self, value: Any) -> bytes | None:
        """The answer read with the counters: the script reads a missing key as ``0``,
        which no cached answer (JSON or events) can be."""
        if isinstance(value, bytes) and value != b"0":
            self.hits += 1
            return value
        self.misses += 1
        return None

    def put(self, lookup: Lookup, body: bytes) -> None:
        if lookup.store and len(body) <= self.settings.max_item_bytes:
            self.backend.put(lookup.key, body, lookup.ttl)

    def capture(self, send: Any, lookup: Lookup) -> Any:
        """``send`` that marks the answer a miss and keeps a complete, successful one."""
        parts: list[bytes] = []
        state = {"ok": False, "size": 0}
        limit = self.settings.max_item_bytes

        async def capturing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["ok"] = message["status"] == 200
                message["headers"] = [*message.get("headers", ()), MISS]
            elif state["ok"]:
                body = message.get("body", b"")
                state["size"] += len(body)
                if state["size"] > limit:
                    state["ok"] = False
                    parts.clear()
                else:
                    parts.append(body)
                    if not message.get("more_body") and _complete(parts):
                        self.put(lookup, b"".join(parts))
            await send(message)

        return capturing

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(
            "gateway_cache_hits", "Answers served from the response cache", self.hits
        )
        yield CounterMetricFamily(
            "gateway_cache_misses", "Cache look-ups that found nothing", self.misses
        )

    async def aclose(self) -> None:
        await self.backend.aclose()


def _complete(parts: list[bytes]) -> bool:
    last = parts[-1] if parts else b""
    if last.startswith(b"data: "):  # a stream: only one that ended in [DONE]
        return last == b"data: [DONE]\n\n"
    return True


def _control(value: Any) -> _Control:
    if value is None:
        return _Control()
    try:
        rules = msgspec.convert(value, _Control)
    except msgspec.ValidationError as exc:
        raise BadRequestError(f"Invalid `cache`: {exc}", param="cache") from None
    if rules.ttl is not None and not rules.ttl > 0:
        raise BadRequestError("`cache.ttl` must be a positive number of seconds", param="cache")
    return rules
