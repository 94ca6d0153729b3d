"""The baseline: a bare Starlette + uvicorn + msgspec app answering the same bytes.

Ordinary Starlette code (Request, Response, StreamingResponse): what a careful
hand-written endpoint costs. Also serves as the OpenAI-compatible upstream of the proxy
scenario. Run: ``python -m benchmarks.servers.baseline --port 8001``.
"""

from __future__ import annotations

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from benchmarks.payloads import chat_bytes
from benchmarks.servers._common import decode_chat, serve, stream_for

_ERROR = b'{"error":{"message":"bad request","type":"invalid_request_error"}}'


async def chat(request: Request) -> Response:
    try:
        body = decode_chat(await request.body())
    except msgspec.DecodeError:
        return Response(_ERROR, status_code=400, media_type="application/json")
    if body.stream:
        return StreamingResponse(
            stream_for(body.model),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    return Response(chat_bytes(body.model), media_type="application/json")


async def liveliness(request: Request) -> Response:
    return Response(b'"I\'m alive!"', media_type="application/json")


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
        Route("/health/liveliness", liveliness),
    ]
)

if __name__ == "__main__":
    serve(app, __doc__ or "")
