"""The forwarder: a bare Starlette endpoint relaying chat requests to an upstream.

One ``aiohttp.ClientSession`` shared by every request, JSON answers read whole and sent
on, SSE relayed chunk by chunk as it arrives: the least a Python proxy on this server stack
does, so the proxy scenario's "limit of a Python proxy here". Its pool mirrors the
gateway's upstream defaults (1,000 connections, keep-alive 30 s). Run:
``python -m benchmarks.servers.forwarder --port 8003 --upstream http://127.0.0.1:8001/v1``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from benchmarks.servers._common import options, run

_HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer bench-key"}
MAX_CONNECTIONS = 1000
KEEPALIVE_S = 30.0


async def _relay(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
    finally:
        # A stream the client left half-read cannot go back to the pool: close it now,
        # so the upstream stops generating for nobody.
        if upstream.content.at_eof():
            upstream.release()
        else:
            upstream.close()


def create_app(upstream_url: str) -> Starlette:
    url = upstream_url.rstrip("/") + "/chat/completions"
    session: aiohttp.ClientSession | None = None

    async def chat(request: Request) -> Response:
        assert session is not None
        upstream = await session.post(url, data=await request.body(), headers=_HEADERS)
        media_type = upstream.headers.get("Content-Type", "application/json")
        if not media_type.startswith("text/event-stream"):
            try:
                payload = await upstream.read()
            finally:
                upstream.release()
            return Response(payload, status_code=upstream.status, media_type=media_type)
        return StreamingResponse(
            _relay(upstream),
            status_code=upstream.status,
            media_type=media_type,
            headers={"cache-control": "no-cache"},
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal session
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S)
        async with aiohttp.ClientSession(connector=connector) as session:
            yield

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/chat/completions", chat, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


if __name__ == "__main__":
    parser = options(__doc__ or "")
    parser.add_argument("--upstream", required=True, help="the upstream's base URL (.../v1)")
    args = parser.parse_args()
    run(create_app(args.upstream), args.host, args.port, lifespan="on")
