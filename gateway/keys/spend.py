"""What a request cost, and the writer that records it off the request path.

Prices are LiteLLM's ``model_info.input_cost_per_token`` / ``output_cost_per_token`` of
each ``model_list`` entry. Tokens come from the answer's ``usage``; a stream that reports
none is estimated at four characters a token and its row is marked ``tokens_estimated``.

Rows wait in a bounded buffer and are written in batches, one transaction each, by one
task. A failed write keeps the batch and retries with back-off, so a database that
restarts loses nothing; only a full buffer drops rows, and each drop is counted
(``gateway_spend_logs_dropped``) and logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import msgspec

from .store import Store, StoreError

__all__ = ["Prices", "SpendCollector", "SpendWriter", "chunk_usage", "result_usage", "text_chars"]

logger = logging.getLogger("gateway.keys")


class Prices:
    """Cost per token by deployment id, with each model group's first priced deployment
    as the fallback (a deployment id the router made up still has its group's price)."""

    def __init__(self, model_list: Iterable[Any]) -> None:
        self.by_deployment: dict[str, tuple[float, float]] = {}
        self.by_group: dict[str, tuple[float, float]] = {}
        for index, d in enumerate(model_list):
            info = d.model_info or {}
            price = (
                _price(info.get("input_cost_per_token")),
                _price(info.get("output_cost_per_token")),
            )
            # The router's deployment ids: model_info.id, else "<model_name>/<index>".
            self.by_deployment[str(info.get("id") or f"{d.model_name}/{index}")] = price
            if price != (0.0, 0.0):
                self.by_group.setdefault(d.model_name, price)

    def cost(self, group: str, deployment: str | None, prompt: int, completion: int) -> float:
        price = self.by_deployment.get(deployment) if deployment else None
        if price is None or price == (0.0, 0.0):
            price = self.by_group.get(group, (0.0, 0.0))
        return prompt * price[0] + completion * price[1]


def _price(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return 0.0
        return number if number >= 0 else 0.0
    return 0.0


def _tokens(usage: Any) -> tuple[int, int] | None:
    if usage is None or usage is msgspec.UNSET:
        return None
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        total = usage.get("total_tokens")
    else:
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        total = getattr(usage, "total_tokens", None)
    p = int(prompt) if isinstance(prompt, int | float) else None
    c = int(completion) if isinstance(completion, int | float) else None
    if p is None and c is None:
        if isinstance(total, int | float):
            return int(total), 0
        return None
    return max(p or 0, 0), max(c or 0, 0)


def result_usage(result: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens of a whole answer, if it says."""
    usage = result.get("usage") if isinstance(result, dict) else getattr(result, "usage", None)
    return _tokens(usage)


def text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(text_chars(v) for v in value)
    if isinstance(value, dict):
        return sum(text_chars(v) for k, v in value.items() if k in ("content", "text"))
    return 0


def chunk_usage(chunk: Any) -> tuple[tuple[int, int] | None, int]:
    """(reported usage, characters of content) of one stream chunk."""
    if chunk.__class__ is str:  # a front door's stream: the text itself
        return None, len(chunk)
    if isinstance(chunk, msgspec.Raw):
        chunk = msgspec.json.decode(chunk)
    if isinstance(chunk, dict):
        choices = chunk.get("choices") or ()
        chars = sum(text_chars((c.get("delta") or {}).get("content")) for c in choices)
        return _tokens(chunk.get("usage")), chars
    chars = 0
    for choice in getattr(chunk, "choices", ()) or ():
        content = getattr(getattr(choice, "delta", None), "content", None)
        if isinstance(content, str):
            chars += len(content)
    return _tokens(getattr(chunk, "usage", None)), chars


class SpendWriter:
    """Batches spend rows and budget resets into the store, off the request path.

    ``add`` and ``reset`` only append to memory. One task writes: at most ``batch`` rows
    per transaction, every ``interval`` seconds or as soon as a batch is full. ``pending``
    holds, per key, spend added here and not yet committed, so a key re-read from the
    database is not briefly under-charged.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_buffer: int = 100_000,
        batch: int = 1000,
        interval: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        self.store = store
        self.max_buffer = max_buffer
        self.batch = batch
        self.interval = interval
        self.max_backoff = max_backoff
        # ("log", row, token, cost) or ("reset", token, next_reset, this_reset)
        self._events: deque[tuple[Any, ...]] = deque()
        self._logs = 0
        self.pending: dict[str, float] = {}
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self._wake = asyncio.Event()
        # One batch in flight at a time: two would take the same rows and charge twice.
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_drop_log = 0.0
        self._drops_unlogged = 0

    @property
    def buffered(self) -> int:
        return self._logs

    def add(self, row: tuple[Any, ...], token: str, cost: float, charge: bool) -> None:
        if self._logs >= self.max_buffer:
            self._drop(1)
            return
        self._events.append(("log", row, token if charge else None, cost))
        self._logs += 1
        if charge and cost:
            self.pending[token] = self.pending.get(token, 0.0) + cost
        if self._logs >= self.batch:
            self._wake.set()

    def reset(self, token: str, next_reset: float, this_reset: float) -> None:
        # Never dropped: one per key and period, and a lost one would leave the key blocked.
        self._events.append(("reset", token, next_reset, this_reset))
        self._wake.set()

    def _drop(self, n: int) -> None:
        self.dropped += n
        self._drops_unlogged += n
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:
            logger.error(
                "spend log buffer full (%d rows): dropped %d spend rows "
                "(%d in total); the database is not keeping up or is down",
                self.max_buffer,
                self._drops_unlogged,
                self.dropped,
            )
            self._last_drop_log = now
            self._drops_unlogged = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        backoff = 0.0
        while not self._closing:
            wait = backoff or (self.interval if self._logs < self.batch else 0.0)
            if wait:
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
            self._wake.clear()
            if self._closing:
                return
            try:
                await self.flush_once()
            except StoreError as exc:
                self.failures += 1
                backoff = min(max(backoff * 2, 0.25), self.max_backoff)
                logger.warning(
                    "writing %d spend rows failed, retrying in %.2fs: %s",
                    self._logs,
                    backoff,
                    exc,
                )
                continue
            except Exception:
                # Never let the one writer die: rows would pile up unwritten in silence.
                self.failures += 1
                backoff = min(max(backoff * 2, 0.25), self.max_backoff)
                logger.exception("writing %d spend rows failed, retrying", self._logs)
                continue
            backoff = 0.0

    def _take(self) -> tuple[int, list[Any], dict[str, float], list[Any]]:
        """The next batch: events up to ``batch`` rows, cut before a reset of a key this
        batch charges (the reset must come after that spend, not before it)."""
        logs: list[Any] = []
        increments: dict[str, float] = {}
        resets: list[Any] = []
        taken = 0
        for event in self._events:
            if event[0] == "reset":
                if event[1] in increments:
                    break
                resets.append((event[2], event[1], event[3]))
            else:
                if len(logs) >= self.batch:
                    break
                logs.append(event[1])
                token, cost = event[2], event[3]
                if token is not None and cost:
                    increments[token] = increments.get(token, 0.0) + cost
            taken += 1
        return taken, logs, increments, resets

    async def flush_once(self) -> int:
        """Write one batch; the rows written. Raises ``StoreError`` and keeps the batch."""
        async with self._lock:
            return await self._flush_once()

    async def _flush_once(self) -> int:
        if not self._events:
            return 0
        taken, logs, increments, resets = self._take()
        await self.store.write_spend(logs, resets)
        for _ in range(taken):
            self._events.popleft()
        self._logs -= len(logs)
        self.written += len(logs)
        pending = self.pending
        for token, cost in increments.items():
            left = pending.get(token, 0.0) - cost
            if left > 1e-12:
                pending[token] = left
            else:
                pending.pop(token, None)
        return len(logs)

    async def flush(self) -> None:
        """Write everything buffered now (tests, shutdown). Raises ``StoreError``."""
        while self._events:
            await self.flush_once()

    async def close(self, timeout: float = 10.0) -> None:
        """Stop the task and write what is left, for at most ``timeout`` seconds."""
        task, self._task = self._task, None
        self._closing = True
        self._wake.set()
        if task is not None:
            # Let a write in progress finish rather than cancel it mid-transaction.
            await asyncio.wait({task}, timeout=timeout)
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        deadline = time.monotonic() + timeout
        while self._events and time.monotonic() < deadline:
            try:
                await self.flush_once()
            except StoreError as exc:
                self.failures += 1
                logger.warning("writing spend rows at shutdown failed, retrying: %s", exc)
                await asyncio.sleep(0.25)
        if self._logs:
            self.dropped += self._logs
            logger.error(
                "shutting down with %d spend rows not written: dropped (%d in total)",
                self._logs,
                self.dropped,
            )
        self._events.clear()
        self._logs = 0


class SpendCollector:
    """The writer's counters for ``/metrics`` (prometheus-client imported on scrape)."""

    def __init__(self, writer: SpendWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        w = self.writer
        yield CounterMetricFamily(
            "gateway_spend_logs_written", "Spend log rows written to the database", w.written
        )
        yield CounterMetricFamily(
            "gateway_spend_logs_dropped",
            "Spend log rows dropped: buffer full, or not written by shutdown",
            w.dropped,
        )
        yield CounterMetricFamily(
            "gateway_spend_log_write_failures", "Failed spend batch writes (retried)", w.failures
        )
        yield GaugeMetricFamily(
            "gateway_spend_logs_buffered", "Spend log rows waiting to be written", w.buffered
        )
