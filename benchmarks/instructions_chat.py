"""``python -m benchmarks.instructions_chat [variant ...]``: CPU instructions per chat request.

The gateway's ASGI app driven in-process (no server, no sockets: a scripted receive and
send, and the ``Disconnect`` its own server offers in each scope), one
``/v1/chat/completions`` request at a time, counted by valgrind's callgrind.
Each variant runs twice, with ``--small`` and ``--large`` requests after a warm-up; the
difference divided by the difference in requests is the cost of one request, without
start-up. Instruction counts barely move with the machine's load, unlike req/s: the way
to compare a request-path change on a shared machine. Variants are the chat scenario's
(``benchmarks.harness.GATEWAY_VARIANTS``): ``gw-off`` (metrics and request ids off),
``gateway`` (on, the defaults), ``gw-observed`` (on, and ``benchmarks.loggers.noop_logger``).
The collector is tuned as the ``gateway`` command tunes it in the process it serves.
Needs ``valgrind`` (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from typing import Any

from benchmarks.payloads import SEED_MODEL

VARIANTS = ("gw-off", "gateway", "gw-observed")
WARM_UP = 300


def _drive(variant: str, requests: int, model: str = "bench-chat") -> None:
    from benchmarks.harness import GATEWAY_VARIANTS, gateway_config
    from benchmarks.payloads import chat_body
    from gateway._aio import SCOPE_DISCONNECT, Disconnect
    from gateway.app import create_app

    config = gateway_config()
    if variant in GATEWAY_VARIANTS:
        GATEWAY_VARIANTS[variant](config)
    app = create_app(config)
    if getattr(app.runtime.settings, "gc_tuning", False):  # as the command does (if it does)
        from gateway._gc import tune

        tune()
    body = chat_body(model)
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]

    async def one() -> None:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
            # What the gateway command's server puts in every request's scope (its own
            # protocols, gateway/_server.py): the disconnect is told, not watched for.
            SCOPE_DISCONNECT: Disconnect(asyncio.get_running_loop()),
        }
        sent: list[Any] = []
        received = False

        async def receive() -> Any:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # never: the answer comes first

        async def send(message: Any) -> None:
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 200, sent

    async def main() -> None:
        for _ in range(WARM_UP + requests):
            await one()
        await asyncio.sleep(0.2)  # the callbacks' task runs what is queued

    asyncio.run(main())


def _count(variant: str, requests: int, model: str) -> int:
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    argv += ["-m", "benchmarks.instructions_chat", "--drive", variant, str(requests)]
    argv += ["--model", model]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or found is None:
        raise SystemExit(f"{variant}: callgrind failed:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions_chat")
    parser.add_argument("variants", nargs="*", default=list(VARIANTS), metavar="variant")
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1200)
    parser.add_argument(
        "--model",
        default="bench-chat",
        help=f"the chat scenario's bench-chat, or chat-seed's {SEED_MODEL}",
    )
    parser.add_argument("--drive", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        _drive(args.drive[0], int(args.drive[1]), args.model)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    per: dict[str, float] = {}
    for variant in args.variants:
        small, large = (
            _count(variant, args.small, args.model),
            _count(variant, args.large, args.model),
        )
        per[variant] = (large - small) / (args.large - args.small)
        print(f"{variant:12} {per[variant]:>10,.0f} instructions a request", flush=True)
    if "gw-off" in per:
        for variant, count in per.items():
            if variant != "gw-off":
                print(f"gw-off/{variant}: {per['gw-off'] / count:.3f}")


if __name__ == "__main__":
    main()
