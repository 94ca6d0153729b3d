"""Request metrics for ``GET /metrics``, in Prometheus' text format.

The hot path only bumps plain counters in dicts keyed by a small tuple of bounded labels
(``Metrics.observe``, ~1.5 us a request); the prometheus-client library, imported on the
first scrape, renders them. Model groups and deployments come from the config: a model
nobody configured is labelled ``unknown``, so a client cannot grow the label space.

Across ``--workers``: the CLI gives every worker one directory (``GATEWAY_METRICS_DIR``).
Each worker writes a snapshot of its series there about once a second (``Snapshots``),
and a scrape of any worker renders the sum of its own fresh series and the others' last
snapshots. Gauges of a worker that died are dropped; its counters stay, as counters must.
prometheus-client's own multiprocess mode would make every increment an mmap write
under a lock (several microseconds a request for these series); a second of lag on a
scrape taken every 15 s costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from .record import RequestRecord

__all__ = ["BUCKETS", "METRICS_DIR_ENV", "Histogram", "Metrics", "Snapshots"]

logger = logging.getLogger("gateway.metrics")

METRICS_DIR_ENV = "GATEWAY_METRICS_DIR"

# Seconds. LLM calls range from a cached millisecond to minutes of streaming.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# The gateway's own time: tens of microseconds when all is well.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

UNKNOWN = "unknown"


class Histogram:
    """Counts per bucket (the last: above every bound) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, count in zip((*self.bounds, None), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound is None else repr(bound), total))
        return out


def _merge(table: dict[Any, Histogram], key: Any, hist: Histogram) -> None:
    if not hist.sum and not any(hist.counts):
        return
    into = table.get(key)
    if into is None:
        into = table[key] = Histogram(hist.bounds)
    into.counts = [a + b for a, b in zip(into.counts, hist.counts, strict=True)]
    into.sum += hist.sum


class _Series:
    """The counters of one (route, model group, deployment): one dict lookup a request."""

    __slots__ = (
        "duration",
        "labels",
        "overhead",
        "statuses",
        "tokens_in",
        "tokens_out",
        "tpot",
        "ttft",
        "upstream",
    )

    def __init__(self, route: str, model: str, deployment: str) -> None:
        self.labels = (route, model, deployment)
        self.statuses: dict[int, int] = {}
        self.duration = Histogram(BUCKETS)
        self.overhead = Histogram(OVERHEAD_BUCKETS)
        self.upstream = Histogram(BUCKETS)
        self.ttft = Histogram(BUCKETS)
        self.tpot = Histogram(TOKEN_BUCKETS)
        self.tokens_in = 0
        self.tokens_out = 0


class Metrics:
    """The counters of one app (one worker process)."""

    def __init__(self, groups: Iterable[str] = (), router: Any = None, threads: Any = None) -> None:
        self.groups = frozenset(groups)
        self.router = router  # its events and per-deployment state, read at scrape time
        self.threads = threads  # the app's ThreadPool, read at scrape time
        # (route, model as asked, deployment) -> its counters; the model's label is
        # resolved once, when a series is made.
        self.series: dict[tuple[str | None, str | None, str | None], _Series] = {}
        self.in_flight = 0
        # More prometheus-client collectors (objects with ``collect()``), e.g. spend logs'.
        self.collectors: list[Any] = []
        self.version = 0  # bumped per request: a snapshot is written only after changes
        self.snapshots: Snapshots | None = None

    def observe(self, rec: RequestRecord, ended: float) -> None:
        """Count one finished request."""
        deployment = rec.deployment
        series = self.series.get((rec.route, rec.model, deployment))
        if series is None:
            series = self._new_series((rec.route, rec.model, deployment))
        self.version += 1
        # Counted here, not by a method of the series: a call less a request.
        statuses = series.statuses
        status = rec.status
        statuses[status] = statuses.get(status, 0) + 1
        started = rec.started
        seconds = ended - started
        hist = series.duration
        hist.counts[bisect_left(BUCKETS, seconds)] += 1
        hist.sum += seconds
        upstream = rec.upstream
        if rec.responded is not None:
            seconds = rec.responded - started - upstream
            if seconds < 0.0:
                seconds = 0.0
            hist = series.overhead
            hist.counts[bisect_left(OVERHEAD_BUCKETS, seconds)] += 1
            hist.sum += seconds
        if deployment is None:
            return
        hist = series.upstream
        hist.counts[bisect_left(BUCKETS, upstream)] += 1
        hist.sum += upstream
        tokens_out = rec.tokens_out
        if rec.tokens_in:
            series.tokens_in += rec.tokens_in
        if tokens_out:
            series.tokens_out += tokens_out
        first = rec.first_token
        if first is not None:
            series.ttft.observe(first - started)
            out = tokens_out if tokens_out is not None else rec.chunks
            if out > 1:
                series.tpot.observe((ended - first) / (out - 1))

    def _new_series(self, key: tuple[str | None, str | None, str | None]) -> _Series:
        route, model, deployment = key
        if model is not None and model not in self.groups:
            # A model nobody configured: one series for all of them, made once each.
            unknown = (route, UNKNOWN, deployment)
            series = self.series.get(unknown) or _Series(route or "", UNKNOWN, deployment or "")
            self.series[unknown] = series
        else:
            series = _Series(route or "", model or "", deployment or "")
        if len(self.series) < 10_000:  # unknown names: bounded even in this cache
            self.series[key] = series
        return series

    def _tables(self) -> dict[str, dict[Any, Any]]:
        """The series regrouped by their labels, for rendering."""
        requests: dict[tuple[str, str, str, int], int] = {}
        durations: dict[tuple[str, str], Histogram] = {}
        overhead: dict[str, Histogram] = {}
        by_deployment: dict[str, dict[tuple[str, str], Histogram]] = {
            "upstream": {},
            "ttft": {},
            "tpot": {},
        }
        tokens: dict[tuple[str, str, str], int] = {}
        for series in {id(s): s for s in self.series.values()}.values():
            route, model, deployment = series.labels
            for status, n in series.statuses.items():
                k = (route, model, deployment, status)
                requests[k] = requests.get(k, 0) + n
            _merge(durations, (route, model), series.duration)
            _merge(overhead, route, series.overhead)
            if deployment:
                where = (model, deployment)
                for name in by_deployment:
                    _merge(by_deployment[name], where, getattr(series, name))
                for direction, n in (("input", series.tokens_in), ("output", series.tokens_out)):
                    if n:
                        where3 = (model, deployment, direction)
                        tokens[where3] = tokens.get(where3, 0) + n
        return {
            "requests": requests,
            "durations": durations,
            "overhead": overhead,
            "tokens": tokens,
            **by_deployment,
        }

    def statuses(self, route: str) -> dict[int, int]:
        """Requests answered on ``route`` by status, in this worker."""
        out: dict[int, int] = {}
        for series in {id(s): s for s in self.series.values()}.values():
            if series.labels[0] == route:
                for status, n in series.statuses.items():
                    out[status] = out.get(status, 0) + n
        return out

    def deployment_mean(self, table: str, model: str, deployment: str) -> float | None:
        """This worker's mean of ``upstream`` or ``ttft`` seconds for a deployment."""
        total, count = 0.0, 0
        for series in {id(s): s for s in self.series.values()}.values():
            if series.labels[1:] == (model, deployment):
                hist = getattr(series, table)
                total += hist.sum
                count += sum(hist.counts)
        return total / count if count else None

    def families(self) -> list[Any]:
        """This process's metric families (prometheus-client objects)."""
        families = list(_Collector(self).collect())
        for collector in self.collectors:
            families.extend(collector.collect())
        return families

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        families = self.families()
        if self.snapshots is not None:
            families = self.snapshots.merged(families)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        return generate_latest(registry)


class _Families:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def _hist_family(name: str, doc: str, labels: list[str], table: dict[Any, Histogram]) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, hist in sorted(table.items()):
        values = list(key) if isinstance(key, tuple) else [key]
        family.add_metric(values, hist.cumulative(), hist.sum)
    return family


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.metrics
        t = m._tables()
        requests = CounterMetricFamily(
            "gateway_requests",
            "Requests answered, by route, model group (unknown: not configured), the "
            "deployment that answered, and HTTP status (499: the client went away)",
            labels=["route", "model_group", "deployment", "status"],
        )
        for (route, model, deployment, status), count in sorted(t["requests"].items()):
            requests.add_metric([route, model, deployment, str(status)], count)
        yield requests
        yield _hist_family(
            "gateway_request_duration_seconds",
            "Time from request to the end of the answer (the whole stream for streams)",
            ["route", "model_group"],
            t["durations"],
        )
        yield _hist_family(
            "gateway_overhead_seconds",
            "The gateway's own time: from the request to its response headers, less the "
            "time spent waiting on handlers and upstreams",
            ["route"],
            t["overhead"],
        )
        yield _hist_family(
            "gateway_deployment_latency_seconds",
            "Time waiting on the router's call (handler or upstream, retries included; a "
            "stream's until its first chunk), by the deployment that answered",
            ["model_group", "deployment"],
            t["upstream"],
        )
        yield _hist_family(
            "gateway_time_to_first_token_seconds",
            "Streams: time from the request to the first chunk",
            ["model_group", "deployment"],
            t["ttft"],
        )
        yield _hist_family(
            "gateway_time_per_output_token_seconds",
            "Streams: time after the first chunk per further output token (from the "
            "stream's usage, else one token a chunk)",
            ["model_group", "deployment"],
            t["tpot"],
        )
        tokens = CounterMetricFamily(
            "gateway_tokens",
            "Tokens the answers reported, by direction (input: prompt, output: completion)",
            labels=["model_group", "deployment", "direction"],
        )
        for key, count in sorted(t["tokens"].items()):
            tokens.add_metric(list(key), count)
        yield tokens
        yield GaugeMetricFamily(
            "gateway_requests_in_flight", "Requests being answered now", value=m.in_flight
        )
        threads = m.threads
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
        router = m.router
        if router is not None:
            yield from router_families(router)


def router_families(router: Any) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    in_flight = GaugeMetricFamily(
        "gateway_deployment_in_flight",
        "Calls in flight per deployment",
        labels=["model_group", "deployment"],
    )
    state = router.state
    for group, deployment in router.deployment_ids():
        in_flight.add_metric([group, deployment], state.in_flight(deployment))
    yield in_flight
    events = CounterMetricFamily(
        "gateway_router_events",
        "What the router did: retry, fallback (model_group: the group fallen back to), "
        "cooldown (a deployment entered one), hedge_started, hedge_won, shed (refused "
        "with 429 at capacity), timeout",
        labels=["model_group", "deployment", "event"],
    )
    for key, count in sorted(router.events.counts.items()):
        events.add_metric(list(key), count)
    yield events
    errors = CounterMetricFamily(
        "gateway_upstream_errors",
        "Failed attempts on a deployment (handler or upstream), by error class",
        labels=["model_group", "deployment", "error"],
    )
    for key, count in sorted(router.events.errors.items()):
        errors.add_metric(list(key), count)
    yield errors


# -- across worker processes ------------------------------------------------------------


class _Sample(msgspec.Struct, array_like=True):
    name: str
    labels: dict[str, str]
    value: float


class _Family(msgspec.Struct, array_like=True):
    name: str
    type: str
    doc: str
    samples: list[_Sample]


class _Snapshot(msgspec.Struct):
    pid: int
    families: list[_Family]


_encode_snapshot = msgspec.json.Encoder().encode
_decode_snapshot = msgspec.json.Decoder(_Snapshot).decode


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Snapshots:
    """This worker's series in ``folder`` for the others, and theirs merged into a scrape."""

    def __init__(self, metrics: Metrics, folder: str) -> None:
        self.metrics = metrics
        self.folder = folder
        self.pid = os.getpid()
        self.path = os.path.join(folder, f"worker-{self.pid}.json")
        self._written = -1

    def write(self, force: bool = False) -> None:
        metrics = self.metrics
        if not force and metrics.version == self._written:
            return
        self._written = metrics.version
        snapshot = _Snapshot(self.pid, [_as_family(f) for f in metrics.families()])
        temp = f"{self.path}.tmp"
        try:
            with open(temp, "wb") as file:
                file.write(_encode_snapshot(snapshot))
            os.replace(temp, self.path)
        except OSError as exc:
            logger.warning("cannot write metrics snapshot %s: %s", self.path, exc)

    def others(self) -> Iterator[_Snapshot]:
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            if not name.endswith(".json") or name == os.path.basename(self.path):
                continue
            with contextlib.suppress(OSError, msgspec.DecodeError, msgspec.ValidationError):
                with open(os.path.join(self.folder, name), "rb") as file:
                    yield _decode_snapshot(file.read())

    def merged(self, own: list[Any]) -> list[Any]:
        """``own`` families plus every other worker's, summed."""
        from prometheus_client import Metric

        order: list[str] = []
        kinds: dict[str, tuple[str, str]] = {}
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}

        def add(family: _Family, gauges: bool) -> None:
            if family.type == "gauge" and not gauges:
                return
            if family.name not in kinds:
                order.append(family.name)
                kinds[family.name] = (family.type, family.doc)
                sums[family.name] = {}
            table = sums[family.name]
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                table[key] = table.get(key, 0.0) + s.value

        for family in own:
            add(_as_family(family), True)
        for snapshot in self.others():
            add_gauges = _alive(snapshot.pid)
            for family in snapshot.families:
                add(family, add_gauges)
        out = []
        for name in order:
            kind, doc = kinds[name]
            metric = Metric(name, doc, kind)
            for (sample, labels), value in sums[name].items():
                metric.add_sample(sample, dict(labels), value)
            out.append(metric)
        return out


def _as_family(family: Any) -> _Family:
    return _Family(
        family.name,
        family.type,
        family.documentation,
        [_Sample(s.name, dict(s.labels), float(s.value)) for s in family.samples],
    )
