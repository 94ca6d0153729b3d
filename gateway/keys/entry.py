"""Virtual keys and what the hot path keeps of each: its limits and live counters."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections import deque
from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = ["Entry", "hash_key", "new_key", "parse_duration"]

_json_decode = msgspec.json.decode


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
