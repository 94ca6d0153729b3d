"""Memory a proxied JSON request holds while its upstream answers, by source line.

At 256 connections every request in flight holds its objects across the upstream's
wait; with ~12 KB each that is ~3 MB, more than this machine's 2 MB L2 per core, and
each wake-up finds its request's objects cold. This counts what is held: the gateway's
app on its own server (httptools protocol, the command's limits) and an upstream that
holds every answer until all ``--requests`` have arrived, in this process on asyncio's
loop (tracemalloc sees this process only), one connection per request. Printed: bytes
and allocations held per request in flight, and the lines that allocated the most.

Run: ``python -m benchmarks.inflight [--requests 256] [--top 25]`` (a few seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from gateway._server import Limits, protocol_factory
from gateway.app import create_app

_ANSWER = (
    b'{"id":"c","object":"chat.completion","created":1,"model":"proxied","choices":'
    b'[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
)
_BODY = b'{"model":"proxied","messages":[{"role":"user","content":"hi"}]}'
_REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


class _Upstream:
    """Answers in one write, once ``expected`` requests are in (then at once)."""

    def __init__(self) -> None:
        self.seen = 0
        self.expected = 0
        self.all_in = asyncio.Event()
        self.release = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await _read_message(reader)
                self.seen += 1
                if self.seen >= self.expected:
                    self.all_in.set()
                await self.release.wait()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(_ANSWER), _ANSWER)
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def hold(self, expected: int) -> None:
        self.seen, self.expected = 0, expected
        self.all_in.clear()
        self.release.clear()


async def measure(requests: int, config_dir: Path) -> tuple[int, list[Any]]:
    """Held bytes per request in flight, and tracemalloc's per-line differences."""
    upstream = _Upstream()
    up = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{up.sockets[0].getsockname()[1]}/v1"
    config = config_dir / "config.yaml"
    deployment = {"model": "openai/proxied", "api_base": base, "api_key": "k"}
    config.write_text(
        yaml.safe_dump({"model_list": [{"model_name": "proxied", "litellm_params": deployment}]})
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(requests + 16)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(str(config)),
            http=protocol_factory("httptools", Limits()),
            log_level="warning",
            lifespan="on",
        )
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(requests)]

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_REQUEST)
        head = await _read_message(reader)
        assert head.startswith(b"HTTP/1.1 200"), head

    try:
        # A first round grows the upstream pool and every connection's buffers.
        upstream.hold(0)
        upstream.release.set()
        await asyncio.gather(*(one(r, w) for r, w in clients))
        upstream.hold(requests)
        await asyncio.sleep(0.1)
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        flying = [asyncio.create_task(one(r, w)) for r, w in clients]
        await upstream.all_in.wait()
        await asyncio.sleep(0.1)  # every request is now waiting for its answer
        during = tracemalloc.take_snapshot()
        upstream.release.set()
        await asyncio.gather(*flying)
    finally:
        tracemalloc.stop()
        for _, writer in clients:
            writer.close()
        server.should_exit = True
        await serving
        up.close()
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    ignore.append(tracemalloc.Filter(False, asyncio.streams.__file__))  # the clients'
    stats = during.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    return sum(s.size_diff for s in stats), stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inflight")
    parser.add_argument("--requests", type=int, default=256, help="in flight at once")
    parser.add_argument("--top", type=int, default=25, help="lines shown")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-inflight-") as tmp:
        held, stats = asyncio.run(measure(args.requests, Path(tmp)))
    n = args.requests
    blocks = sum(s.count_diff for s in stats)
    print(f"held per request in flight: {held / n:,.0f} bytes in {blocks / n:.1f} allocations")
    for stat in sorted(stats, key=lambda s: -s.size_diff)[: args.top]:
        if stat.size_diff <= 0:
            break
        frame = stat.traceback[0]
        where = frame.filename.split("site-packages/")[-1]
        print(f"{stat.size_diff / n:>8,.0f} B {stat.count_diff / n:>5.1f}  {where}:{frame.lineno}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
