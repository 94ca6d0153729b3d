"""A small asyncio HTTP/1.1 load client, run as its own process.

Used for per-chunk timing (time to first token, gaps between chunks), which ``wrk``
cannot see, and as the throughput fallback when ``wrk`` is not installed. Keep-alive
connections, one request at a time per connection, chunked bodies decoded as they
arrive. With ``--drop-after N`` every client hangs up after N events of its stream and
comes back on a new connection. With ``--rate R`` the connections send R requests a
second in all, one every 1/R s (open loop while a connection is free; latencies count
from each request's send), instead of each sending again as soon as it has its answer.
Prints one JSON object.

    python -m benchmarks.client --port 8000 --path /v1/chat/completions \\
        --body-file body.json [--body-file ...] --connections 8 --duration 5 \\
        [--requests N] [--stream] [--drop-after N] [--rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["percentile", "run"]


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of unsorted ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


class _Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ttfts: list[float] = []
        self.gaps: list[float] = []
        self.events = 0
        self.errors = 0
        self.dropped = 0
        self.late = 0
        self.statuses: dict[int, int] = {}
        self.error_messages: dict[str, int] = {}

    def error(self, message: str) -> None:
        self.errors += 1
        self.error_messages[message] = self.error_messages.get(message, 0) + 1


class _Dropped(Exception):
    """The client hangs up in the middle of a stream (``--drop-after``)."""


async def _read_body(
    reader: asyncio.StreamReader,
    head: bytes,
    start: float,
    stats: _Stats,
    stream: bool,
    drop_after: int = 0,
) -> bool:
    """Read one response body; returns whether the connection may be reused."""
    headers = head.lower()
    keep = b"connection: close" not in headers
    if b"transfer-encoding: chunked" not in headers:
        length = 0
        marker = headers.find(b"content-length:")
        if marker >= 0:
            length = int(headers[marker + 15 : headers.index(b"\r\n", marker)])
        if length:
            await reader.readexactly(length)
        return keep
    buffer = b""
    last_content: float | None = None
    first = True
    seen = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return keep
        data = (await reader.readexactly(size + 2))[:-2]
        if not stream:
            continue
        now = time.perf_counter()
        buffer += data
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            stats.events += 1
            seen += 1
            if seen == drop_after:
                raise _Dropped
            if first:
                stats.ttfts.append(now - start)
                first = False
            if b'"content"' in event:
                if last_content is not None:
                    stats.gaps.append(now - last_content)
                last_content = now


async def _worker(
    host: str,
    port: int,
    requests: list[bytes],
    stats: _Stats,
    deadline: float,
    budget: list[int],
    stream: bool,
    drop_after: int = 0,
    pace: list[float] | None = None,
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    turn = 0
    while time.perf_counter() < deadline and budget[0] != 0:
        if pace is not None:  # [the next request's time, the interval], shared
            due = pace[0]
            pace[0] = due + pace[1]
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -pace[1]:
                stats.late += 1  # every connection was busy when its turn came
            if time.perf_counter() >= deadline:
                break
        if budget[0] > 0:
            budget[0] -= 1
        request = requests[turn % len(requests)]
        turn += 1
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            keep = await _read_body(reader, head, start, stats, stream, drop_after)
            stats.latencies.append(time.perf_counter() - start)
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            if status >= 400:
                stats.error(f"HTTP {status}")
            if not keep:
                writer.close()
                writer = None
        except _Dropped:
            stats.dropped += 1
            assert writer is not None
            writer.close()
            writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            stats.error(type(exc).__name__)
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


async def run(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    *,
    connections: int,
    duration: float,
    requests: int = -1,
    stream: bool = False,
    drop_after: int = 0,
    headers: Sequence[str] = (),
    rate: float = 0.0,
) -> dict[str, Any]:
    """Drive ``connections`` keep-alive connections for ``duration`` s (or ``requests``),
    each sending ``bodies`` in turn; ``rate`` > 0: that many requests a second in all."""
    extra = "".join(f"{line}\r\n" for line in headers)
    raw = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    stats = _Stats()
    budget = [requests]
    start = time.perf_counter()
    deadline = start + duration
    pace = [start, 1 / rate] if rate > 0 else None
    await asyncio.gather(
        *(
            _worker(host, port, raw, stats, deadline, budget, stream, drop_after, pace)
            for _ in range(connections)
        )
    )
    elapsed = time.perf_counter() - start
    done = len(stats.latencies)
    lat, ttft, gaps = stats.latencies, stats.ttfts, stats.gaps
    return {
        "tool": "asyncio-client",
        "connections": connections,
        "duration_s": round(elapsed, 3),
        "requests": done,
        "errors": stats.errors,
        "error_kinds": stats.error_messages,
        "dropped": stats.dropped,
        "rate": rate or None,
        "late": stats.late,
        "statuses": {str(k): v for k, v in stats.statuses.items()},
        "rps": round(done / elapsed, 1) if elapsed else 0.0,
        "p50_ms": _ms(percentile(lat, 50)),
        "p90_ms": _ms(percentile(lat, 90)),
        "p99_ms": _ms(percentile(lat, 99)),
        "max_ms": _ms(max(lat) if lat else None),
        "events": stats.events,
        "events_per_s": round(stats.events / elapsed, 1) if elapsed else 0.0,
        "ttft_p50_ms": _ms(percentile(ttft, 50)),
        "ttft_p90_ms": _ms(percentile(ttft, 90)),
        "ttft_p99_ms": _ms(percentile(ttft, 99)),
        "gap_p50_ms": _ms(percentile(gaps, 50)),
        "gap_p90_ms": _ms(percentile(gaps, 90)),
        "gap_p99_ms": _ms(percentile(gaps, 99)),
        "streams": len(ttft),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument(
        "--body-file", type=Path, action="append", required=True, help="repeat to cycle bodies"
    )
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=-1, help="stop after N (-1: no limit)")
    parser.add_argument("--stream", action="store_true", help="time SSE events")
    parser.add_argument(
        "--drop-after", type=int, default=0, help="hang up after N events of each stream"
    )
    parser.add_argument(
        "--header", action="append", default=[], help="'Name: value', repeat for more"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="requests/s in all (0: each as fast as it can)"
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        pass
    result = asyncio.run(
        run(
            args.host,
            args.port,
            args.path,
            [path.read_bytes() for path in args.body_file],
            connections=args.connections,
            duration=args.duration,
            requests=args.requests,
            stream=args.stream,
            drop_after=args.drop_after,
            headers=args.header,
            rate=args.rate,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
