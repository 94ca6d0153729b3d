"""The raw limit: the same answers from a bare ASGI callable on uvicorn (no framework).

What this server stack can do at most. Run: ``python -m benchmarks.servers.raw --port 8002``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from benchmarks.payloads import DONE, chat_bytes
from benchmarks.servers._common import decode_chat, serve, stream_for

_JSON = (b"content-type", b"application/json")
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_ALIVE = b'"I\'m alive!"'


async def _body(receive: Any) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body"):
        message = await receive()
        body += message.get("body", b"")
    return body


async def _json(send: Any, status: int, payload: bytes) -> None:
    headers = [_JSON, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/health/liveliness":
        await _json(send, 200, _ALIVE)
        return
    if path not in ("/v1/chat/completions", "/chat/completions") or scope["method"] != "POST":
        await _json(send, 404, b'{"error":{"message":"not found"}}')
        return
    try:
        body = decode_chat(await _body(receive))
    except msgspec.DecodeError:
        await _json(send, 400, b'{"error":{"message":"bad request"}}')
        return
    if not body.stream:
        await _json(send, 200, chat_bytes(body.model))
        return
    await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    async for event in stream_for(body.model):
        more = event is not DONE  # [DONE] ends the body, as the gateway sends it
        await send({"type": "http.response.body", "body": event, "more_body": more})


if __name__ == "__main__":
    serve(app, __doc__ or "")
