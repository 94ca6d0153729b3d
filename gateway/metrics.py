"""Request metrics for ``GET /metrics``, in Prometheus' text format.

The hot path only bumps plain counters (well under a microsecond); the
prometheus-client library, imported on the first scrape, renders them. Each worker
process counts its own requests.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

__all__ = ["BUCKETS", "Metrics"]

# Seconds. LLM calls range from a cached millisecond to minutes of streaming.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0


class Metrics:
    """Counters of one app: requests by route and status, durations by route."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.durations: dict[str, _Histogram] = {}
        self.in_flight = 0

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get(route)
        if histogram is None:
            histogram = self.durations[route] = _Histogram()
        histogram.counts[bisect_left(BUCKETS, seconds)] += 1
        histogram.sum += seconds

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        metrics = self

        class _Collector:
            def collect(self) -> Iterator[Any]:
                requests = CounterMetricFamily(
                    "gateway_requests",
                    "Requests answered, by route and HTTP status (499: client went away)",
                    labels=["route", "status"],
                )
                for (route, status), count in sorted(metrics.requests.items()):
                    requests.add_metric([route, str(status)], count)
                yield requests
                durations = HistogramMetricFamily(
                    "gateway_request_duration_seconds",
                    "Time from request to the end of the answer (whole stream for streams)",
                    labels=["route"],
                )
                for route, histogram in sorted(metrics.durations.items()):
                    cumulative, buckets = 0, []
                    for bound, count in zip(
                        (*BUCKETS, float("inf")), histogram.counts, strict=True
                    ):
                        cumulative += count
                        buckets.append((_bound(bound), cumulative))
                    durations.add_metric([route], buckets, histogram.sum)
                yield durations
                yield GaugeMetricFamily(
                    "gateway_requests_in_flight",
                    "Requests being answered now",
                    value=metrics.in_flight,
                )

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector())  # type: ignore[arg-type]
        return generate_latest(registry)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)
