"""Request metrics for ``GET /metrics``, in Prometheus' text format.

The hot path only bumps plain counters held by each route (well under a
microsecond); the prometheus-client library, imported on the first scrape, renders
them. Each worker process counts its own requests.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

__all__ = ["BUCKETS", "Metrics", "RouteStats"]

# Seconds. LLM calls range from a cached millisecond to minutes of streaming.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class RouteStats:
    """One route's answers by status, and a histogram of their durations."""

    __slots__ = ("buckets", "statuses", "sum")

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, status: int, seconds: float) -> None:
        statuses = self.statuses
        statuses[status] = statuses.get(status, 0) + 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class Metrics:
    """The counters of one app."""

    def __init__(self, threads: Any = None) -> None:
        self.routes: dict[str, RouteStats] = {}
        self.in_flight = 0
        # More prometheus-client collectors (objects with ``collect()``), e.g. spend logs'.
        self.collectors: list[Any] = []
        self.threads = threads  # the app's ThreadPool, read at scrape time

    def route(self, name: str) -> RouteStats:
        stats = self.routes.get(name)
        if stats is None:
            stats = self.routes[name] = RouteStats()
        return stats

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        for collector in self.collectors:
            registry.register(collector)
        return generate_latest(registry)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        requests = CounterMetricFamily(
            "gateway_requests",
            "Requests answered, by route and HTTP status (499: the client went away)",
            labels=["route", "status"],
        )
        durations = HistogramMetricFamily(
            "gateway_request_duration_seconds",
            "Time from request to the end of the answer (the whole stream for streams)",
            labels=["route"],
        )
        for name, stats in sorted(self.metrics.routes.items()):
            for status, count in sorted(stats.statuses.items()):
                requests.add_metric([name, str(status)], count)
            cumulative, buckets = 0, []
            for bound, count in zip((*BUCKETS, float("inf")), stats.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            durations.add_metric([name], buckets, stats.sum)
        yield requests
        yield durations
        yield GaugeMetricFamily(
            "gateway_requests_in_flight",
            "Requests being answered now",
            value=self.metrics.in_flight,
        )
        threads = self.metrics.threads
        if threads is not None:
            yield GaugeMetricFamily(
                "gateway_sync_threads_busy",
                "Worker threads running a sync handler now (stuck ones included)",
                value=threads.busy,
            )
            yield GaugeMetricFamily(
                "gateway_sync_threads_stuck",
                "Worker threads still running a sync handler whose caller gave up "
                "(its deadline passed or the client left); they hold their slot",
                value=threads.stuck,
            )
