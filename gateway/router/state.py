"""What the router counts: requests in flight, latency averages, usage in the last
minute, failures and cooldowns, behind the one interface a shared store could implement.
"""

from __future__ import annotations

from collections import deque

__all__ = ["LATENCY_ALPHA", "WINDOW", "RouterState"]

# How far back failures count toward a cooldown, and the rpm/tpm window.
WINDOW = 60.0
# Weight of the newest sample in the latency moving averages.
LATENCY_ALPHA = 0.3


class RouterState:
    """What the router counts, behind one small interface.

    Keys are deployment ids; times come from the router's clock and are passed in, so an
    implementation needs no clock of its own. This one lives in the process. One backed
    by a shared store (many gateway instances) would keep the same methods, answering
    from a local copy it syncs in the background, so the request path never waits on it.
    """

    def __init__(self) -> None:
        self._total = 0
        self._in_flight: dict[str, int] = {}
        self._latency: dict[str, float] = {}
        self._ttft: dict[str, float] = {}
        self._failures: dict[str, deque[float]] = {}
        self._cooldowns: dict[str, float] = {}
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}
        self._token_sums: dict[str, int] = {}

    # in flight: requests under max_in_flight, and attempts per deployment

    def try_admit(self, limit: int) -> bool:
        """Count a request in if fewer than ``limit`` are in flight."""
        if self._total >= limit:
            return False
        self._total += 1
        return True

    def leave(self) -> None:
        self._total -= 1

    @property
    def total_in_flight(self) -> int:
        return self._total

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)

    def start(self, key: str) -> None:
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def finish(self, key: str) -> None:
        self._in_flight[key] -= 1

    # latency: moving averages of whole answers and of time to first chunk

    def record_latency(self, key: str, seconds: float, *, first_token: bool = False) -> None:
        table = self._ttft if first_token else self._latency
        old = table.get(key)
        table[key] = seconds if old is None else old + LATENCY_ALPHA * (seconds - old)

    def latency(self, key: str, *, first_token: bool = False) -> float | None:
        if first_token:
            value = self._ttft.get(key)
            if value is not None:
                return value
        return self._latency.get(key)

    def first_token_latency(self, key: str) -> float | None:
        return self._ttft.get(key)

    # usage in the last minute

    def record_request(self, key: str, now: float) -> None:
        self._requests.setdefault(key, deque()).append(now)

    def record_tokens(self, key: str, now: float, tokens: int) -> None:
        if tokens > 0:
            self._tokens.setdefault(key, deque()).append((now, tokens))
            self._token_sums[key] = self._token_sums.get(key, 0) + tokens

    def _prune(self, key: str, now: float) -> None:
        start = now - WINDOW
        requests = self._requests.get(key)
        while requests and requests[0] <= start:
            requests.popleft()
        tokens = self._tokens.get(key)
        while tokens and tokens[0][0] <= start:
            self._token_sums[key] -= tokens.popleft()[1]

    def usage(self, key: str, now: float) -> tuple[int, int]:
        """Requests and tokens in the last minute."""
        self._prune(key, now)
        return len(self._requests.get(key) or ()), self._token_sums.get(key, 0)

    def rate_wait(self, key: str, now: float, rpm: int | None, tpm: int | None) -> float:
        """Seconds until the deployment is under its rpm and tpm again (0: it is now)."""
        self._prune(key, now)
        wait = 0.0
        requests = self._requests.get(key)
        if rpm is not None and requests and len(requests) >= rpm:
            wait = requests[len(requests) - rpm] + WINDOW - now
        if tpm is not None and self._token_sums.get(key, 0) >= tpm:
            total = self._token_sums[key]
            for at, tokens in self._tokens[key]:
                total -= tokens
                if total < tpm:
                    wait = max(wait, at + WINDOW - now)
                    break
        return max(wait, 0.0)

    # failures and cooldowns

    def record_failure(self, key: str, now: float) -> int:
        """Count a failure; the number of failures in the last minute."""
        failures = self._failures.setdefault(key, deque())
        failures.append(now)
        while failures[0] <= now - WINDOW:
            failures.popleft()
        return len(failures)

    def recent_failures(self, key: str, now: float) -> int:
        """Failures in the last minute (reset when a cooldown starts)."""
        return sum(1 for at in self._failures.get(key) or () if at > now - WINDOW)

    def cool_down(self, key: str, until: float) -> None:
        self._cooldowns[key] = max(until, self._cooldowns.get(key, until))
        self._failures.pop(key, None)

    def cooldown_remaining(self, key: str, now: float) -> float:
        until = self._cooldowns.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._cooldowns[key]
            return 0.0
        return until - now
