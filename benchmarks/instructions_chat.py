"""``python -m benchmarks.instructions_chat [variant ...]``: CPU instructions per chat request.

The whole server's work for one ``/v1/chat/completions`` request, in one process: the
HTTP protocol the target serves with (the gateway command's own over httptools; uvicorn's
for the baseline, as the benchmarks serve it) and the app behind it, fed the request's
bytes on a keep-alive connection whose transport is memory (no sockets, no system calls),
one request at a time, counted by valgrind's callgrind. Each variant runs twice, with
``--small`` and ``--large`` requests after a warm-up; the difference divided by the
difference in requests is the cost of one request, without start-up. Instruction counts
barely move with the machine's load, unlike req/s: the way to compare a request-path
change on a shared machine. Variants: ``baseline`` (the chat scenario's bare Starlette
app on uvicorn), and the chat scenario's gateways (``benchmarks.harness.GATEWAY_VARIANTS``):
``gw-off`` (metrics and request ids off), ``gateway`` (on, the defaults),
``gw-observed`` (on, and ``benchmarks.loggers.noop_logger``). The collector is tuned as
the ``gateway`` command tunes it in the process it serves. What this leaves out is the
kernel's share (socket reads and writes, the same for every target), so the ratio on the
wire is closer to 1 than the ratio here. Needs ``valgrind`` (``apt-get install valgrind``).
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

VARIANTS = ("baseline", "gw-off", "gateway", "gw-observed")
WARM_UP = 300


class _Transport(asyncio.Transport):
    """A connection's transport in memory: what the server writes is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def is_closing(self) -> bool:
        return False


def _server(variant: str) -> tuple[Any, Any]:
    """The uvicorn config (the app and its protocol) and the app's startup, if any."""
    import uvicorn

    if variant == "baseline":
        from benchmarks.servers.baseline import app

        config = uvicorn.Config(app, http="httptools", log_level="warning", lifespan="off")
        config.load()
        return config, None
    from benchmarks.harness import GATEWAY_VARIANTS, gateway_config
    from gateway._server import Limits, protocol_factory
    from gateway.app import create_app

    settings = gateway_config()
    GATEWAY_VARIANTS.get(variant, lambda _: None)(settings)
    gateway = create_app(settings)
    gateway.own_process()  # as the command does
    if getattr(gateway.runtime.settings, "gc_tuning", False):  # as the command does
        from gateway._gc import tune

        tune()
    http = protocol_factory("httptools", Limits())
    config = uvicorn.Config(gateway, http=http, log_level="warning", lifespan="off")
    config.load()
    return config, gateway.runtime.startup


def _drive(variant: str, requests: int, model: str = "bench-chat") -> None:
    from uvicorn.server import ServerState

    from benchmarks.payloads import chat_body

    config, startup = _server(variant)
    body = chat_body(model)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )

    async def main() -> None:
        if startup is not None:
            await startup()
        protocol = config.http_protocol_class(
            config=config, server_state=ServerState(), app_state={}
        )
        transport = _Transport()
        protocol.connection_made(transport)
        for _ in range(WARM_UP + requests):
            transport.written.clear()
            protocol.data_received(request)
            # Answered when its last bytes are out: a JSON body ends the answer.
            while not (transport.written and transport.written[-1].endswith(b"}")):
                await asyncio.sleep(0)
            assert transport.written[0].startswith(b"HTTP/1.1 200 "), transport.written
        await asyncio.sleep(0.2)  # the callbacks' task runs what is queued

    import uvloop

    uvloop.run(main())


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
    for reference in ("baseline", "gw-off"):
        if reference in per:
            for variant, count in per.items():
                if variant not in ("baseline", reference):
                    print(f"{reference}/{variant}: {per[reference] / count:.3f}")


if __name__ == "__main__":
    main()
