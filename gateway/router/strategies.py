"""Routing strategies: which of a group's available deployments takes a request.

One method per strategy, picked once when the router is made; each gets the
deployments that are free right now (never empty) and answers one of them.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable

from ..config import Strategy
from .deployments import Deployment, Group, weight_of
from .state import RouterState

__all__ = ["Chooser"]


class Chooser:
    """Picks a deployment by the router's ``routing_strategy``."""

    def __init__(
        self,
        strategy: Strategy,
        state: RouterState,
        clock: Callable[[], float],
        latency_buffer: float,
    ) -> None:
        self._state = state
        self._clock = clock
        self._latency_buffer = latency_buffer
        pick: dict[str, Callable[[Group, list[Deployment], bool], Deployment]] = {
            "simple-shuffle": self._shuffle,
            "least-busy": self._least_busy,
            "latency-based": self._lowest_latency,
            "usage-based": self._least_used,
        }
        self._pick = pick[strategy]

    def choose(self, group: Group, ds: list[Deployment], stream: bool) -> Deployment:
        if len(ds) == 1:
            return ds[0]
        return self._pick(group, ds, stream)

    def _shuffle(self, group: Group, ds: list[Deployment], stream: bool) -> Deployment:
        if group.weights is None:
            return random.choice(ds)
        if len(ds) == len(group.deployments):
            cumulative = group.weights
        else:
            cumulative = list(itertools.accumulate(weight_of(d) for d in ds))
        return ds[bisect.bisect(cumulative, random.random() * cumulative[-1])]

    def _least_busy(self, group: Group, ds: list[Deployment], stream: bool) -> Deployment:
        scores = [self._state.in_flight(d.id) for d in ds]
        best = min(scores)
        return random.choice([d for d, n in zip(ds, scores, strict=True) if n == best])

    def _lowest_latency(self, group: Group, ds: list[Deployment], stream: bool) -> Deployment:
        lat = [self._state.latency(d.id, first_token=stream) for d in ds]
        measured = [(d, x) for d, x in zip(ds, lat, strict=True) if x is not None]
        if len(measured) < len(ds):  # measure every deployment before preferring one
            return random.choice([d for d, x in zip(ds, lat, strict=True) if x is None])
        limit = min(x for _, x in measured) * (1 + self._latency_buffer)
        return random.choice([d for d, x in measured if x <= limit])

    def _least_used(self, group: Group, ds: list[Deployment], stream: bool) -> Deployment:
        # The most headroom under rpm/tpm; without limits, the least used.
        now = self._clock()
        scores = [self._utilisation(d, now) for d in ds]
        best = min(scores)
        return random.choice([d for d, x in zip(ds, scores, strict=True) if x == best])

    def _utilisation(self, d: Deployment, now: float) -> tuple[float, int, int]:
        requests, tokens = self._state.usage(d.id, now)
        share = 0.0
        if d.rpm:
            share = requests / d.rpm
        if d.tpm:
            share = max(share, tokens / d.tpm)
        limited = 1.0 if (d.rpm or d.tpm) else 0.0
        # Limited deployments compare by share used; unlimited ones by raw use.
        return (share if limited else -1.0, tokens, requests)
