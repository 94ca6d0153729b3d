"""Instructions per proxied request, gateway and forwarder, counted by callgrind.

Wall-clock figures on a shared machine move with everybody else's load; instruction
counts barely do. Each target's ASGI app is called in-process, one request at a time,
against a real upstream on loopback (the proxy scenario's Starlette upstream, in its own
process, so its cost is not counted). Only the measured requests are counted: the
measured loop runs inside ``functools.reduce``, the one function callgrind is told to
collect in (``--toggle-collect``), after a warm-up outside it.

The gateway is called with what its own server puts in each request's scope (a
``Disconnect``), the forwarder bare, as uvicorn calls it. Neither counts its server's
HTTP parsing: the two servers differ there and it is not what this measures.

Run: ``python -m benchmarks.instructions [--kind json|stream] [--requests N]``
(needs valgrind). With the Starlette upstream a count moves by a few thousand between
runs, with how its writes (head, then body) coalesce into reads. ``--upstream oneshot``
(JSON only) answers each request in one write from a bare asyncio protocol: the same
bytes every time, steady to a few hundred instructions, for A/B runs of small changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from benchmarks.payloads import PROXY_MODEL, chat_body

_ROOT = Path(__file__).resolve().parent.parent
_WARMUP = 200


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 4000),
    }


async def _one(app: Any, body: bytes, scope: Callable[[], dict[str, Any]]) -> bytes:
    given = False
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()
        return {"type": "http.disconnect"}

    out: list[bytes] = []
    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            out.append(message.get("body", b""))

    await app(scope(), receive, send)
    if status != 200:
        raise SystemExit(f"answered {status}: {b''.join(out)[:300]!r}")
    return b"".join(out)


@contextlib.asynccontextmanager
async def _target(name: str, upstream: str) -> AsyncIterator[tuple[Any, Callable[[], Any]]]:
    if name == "forwarder":
        from benchmarks.servers.forwarder import create_app

        forwarder = create_app(upstream + "/v1")
        async with forwarder.router.lifespan_context(forwarder):
            yield forwarder, dict
        return
    from benchmarks.harness import gateway_config
    from gateway._aio import SCOPE_DISCONNECT, Disconnect
    from gateway.app import create_app as create_gateway

    port = int(upstream.rsplit(":", 1)[1])
    gateway = create_gateway(gateway_config(port))
    gateway.own_process()  # as the command does
    loop = asyncio.get_running_loop()
    await gateway.runtime.startup()
    try:
        yield gateway, lambda: {SCOPE_DISCONNECT: Disconnect(loop)}
    finally:
        await gateway.runtime.shutdown()


def _measure(name: str, kind: str, upstream: str, n: int) -> None:
    """In the process callgrind runs: warm up, then ``n`` requests inside reduce()."""
    import uvloop

    body = chat_body(PROXY_MODEL, stream=kind == "stream")
    headers = [
        (b"host", b"127.0.0.1:4000"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    path = "/v1/chat/completions"

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    target = _target(name, upstream)
    app, extra = loop.run_until_complete(target.__aenter__())

    def scope() -> dict[str, Any]:
        return {**_scope(path, headers), **extra()}

    async def requests(count: int) -> bytes:
        answer = b""
        for _ in range(count):
            answer = await _one(app, body, scope)
        return answer

    answer = loop.run_until_complete(requests(_WARMUP))
    # Collected by callgrind: everything while reduce() runs, and nothing else.
    functools.reduce(lambda _, __: loop.run_until_complete(requests(n)), [0], None)
    loop.run_until_complete(target.__aexit__(None, None, None))
    loop.close()
    print(f"{len(answer)} bytes an answer: {answer[:120]!r}", file=sys.stderr)


def _oneshot(port: int) -> None:
    """An upstream answering every request with the same chat answer, in one write."""
    import re

    from benchmarks.payloads import chat_bytes

    answer = chat_bytes(PROXY_MODEL)
    response = (
        b"HTTP/1.1 200 OK\r\ndate: Wed, 02 Dec 2026 00:00:00 GMT\r\nserver: uvicorn\r\n"
        b"content-length: %d\r\ncontent-type: application/json\r\n\r\n%s"
    ) % (len(answer), answer)
    length = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)

    class Answering(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.pending = b""

        def data_received(self, data: bytes) -> None:
            self.pending += data
            while (end := self.pending.find(b"\r\n\r\n")) >= 0:
                found = length.search(self.pending, 0, end)
                size = int(found.group(1)) if found else 0
                if len(self.pending) < end + 4 + size:
                    return
                self.pending = self.pending[end + 4 + size :]
                self.transport.write(response)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Answering, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(serve())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the upstream exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit("the upstream did not start")


def _count(name: str, kind: str, upstream: str, n: int, keep: Path | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = (keep or Path(tmp)) / f"callgrind.{name}.{kind}.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=functools_reduce",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "benchmarks.instructions",
            "--inside",
            name,
            "--kind",
            kind,
            "--url",
            upstream,
            "--requests",
            str(n),
        ]
        # String hashes seeded alike in every run: dict probing, and so the count, repeats.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, cwd=_ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name}: valgrind failed:\n{done.stderr[-3000:]}")
        totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
        if totals is None:
            raise SystemExit(f"{name}: no totals in {out}")
        return int(totals.group(1)) // n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("--kind", choices=("json", "stream"), default="json")
    parser.add_argument("--requests", type=int, default=1000, help="measured, per target")
    parser.add_argument(
        "--targets", default="gateway,forwarder", help="comma-separated: gateway, forwarder"
    )
    parser.add_argument("--keep", type=Path, help="a folder for the callgrind files")
    parser.add_argument(
        "--upstream",
        choices=("starlette", "oneshot"),
        default="starlette",
        help="the proxy scenario's Starlette upstream, or one answering in one write",
    )
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        _measure(args.inside, args.kind, args.url, args.requests)
        return 0
    if args.serve:
        _oneshot(args.serve)
        return 0
    if args.upstream == "oneshot" and args.kind != "json":
        parser.error("--upstream oneshot answers JSON only")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    if args.upstream == "oneshot":
        serve = [sys.executable, "-m", "benchmarks.instructions", "--serve", str(port)]
    else:
        serve = [sys.executable, "-m", "benchmarks.servers.baseline", "--port", str(port)]
    proc = subprocess.Popen(serve, env=env, cwd=_ROOT)
    try:
        _wait_listening(port, proc)
        counts = {}
        for name in args.targets.split(","):
            counts[name] = _count(
                name, args.kind, f"http://127.0.0.1:{port}", args.requests, args.keep
            )
            print(f"{name} {args.kind}: {counts[name]:,} instructions a request", flush=True)
        if "gateway" in counts and "forwarder" in counts:
            print(f"forwarder/gateway: {counts['forwarder'] / counts['gateway']:.3f}")
    finally:
        proc.terminate()
        proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
