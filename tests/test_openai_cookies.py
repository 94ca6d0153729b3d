"""The shared upstream client keeps no cookies: one tenant's Set-Cookie never reaches another.

And it keeps its HTTP/1.1 connection alive between calls."""

from __future__ import annotations

import json
from typing import Any

import gateway
from tests.fake_upstream import serve_in_thread

ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "x",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class CookieUpstream:
    def __init__(self) -> None:
        self.cookies: list[str | None] = []
        self.peers: set[tuple[str, int]] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        self.peers.add(tuple(scope["client"]))
        self.cookies.append(headers.get(b"cookie", b"").decode() or None)
        while (await receive()).get("more_body"):
            pass
        body = json.dumps(ANSWER).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"set-cookie", b"session=tenant-a-secret; Path=/"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def test_upstream_cookies_are_not_kept() -> None:
    upstream = CookieUpstream()
    with serve_in_thread(upstream, lifespan="off") as handle:
        for _ in range(3):
            resp = await gateway.acompletion(
                "openai/x",
                [{"role": "user", "content": "hi"}],
                api_base=f"{handle.url}/v1",
                api_key="sk-test",
            )
            assert resp.choices[0].message.content == "ok"
    assert upstream.cookies == [None, None, None]
    assert len(upstream.peers) == 1  # three calls over one kept-alive connection
