"""Virtual keys apply on every front door as on chat completions: the model check, and
spend charged from the chat answer behind the translated one."""

from __future__ import annotations

import httpx
import pytest

from tests.keys_fixtures import MOCK_COST, bearer, flush, generate, serve_keys

FRONT_DOORS = [
    ("/v1/responses", {"model": "gpt-a", "input": "hi"}),
    (
        "/v1/messages",
        {"model": "gpt-a", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("/v1/completions", {"model": "gpt-a", "prompt": "hi"}),
]


@pytest.mark.parametrize(("path", "body"), FRONT_DOORS)
async def test_a_key_is_charged_and_limited_on_every_front_door(
    tmp_path: object, path: str, body: dict[str, object]
) -> None:
    with serve_keys(f"sqlite:///{tmp_path}/gateway.db") as (handle, app):
        async with httpx.AsyncClient(base_url=handle.url) as client:
            key = (await generate(client, models=["gpt-a"], key_alias="fd"))["key"]
            answered = await client.post(path, json=body, headers=bearer(key))
            assert answered.status_code == 200, answered.text
            other = await client.post(path, json={**body, "model": "gpt-b"}, headers=bearer(key))
            assert other.status_code == 403, other.text
            assert "gpt-b" in other.text
            flush(handle, app)
            info = await client.get("/key/info", params={"key": key}, headers=bearer(key))
            if info.status_code == 403:  # key info may be master-only
                from tests.keys_fixtures import ADMIN

                info = await client.get("/key/info", params={"key": key}, headers=ADMIN)
            assert info.status_code == 200, info.text
            data = info.json()
            spend = data.get("info", data).get("spend")
            assert spend == pytest.approx(MOCK_COST)


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
async def test_a_streamed_front_door_is_charged(tmp_path: object, path: str) -> None:
    body: dict[str, object] = {"model": "streamer", "stream": True}
    if path == "/v1/responses":
        body["input"] = "hello"
    else:
        body.update(max_tokens=16, messages=[{"role": "user", "content": "hello"}])
    with serve_keys(f"sqlite:///{tmp_path}/gateway.db") as (handle, app):
        async with httpx.AsyncClient(base_url=handle.url) as client:
            key = (await generate(client, models=["streamer"]))["key"]
            streamed = await client.post(path, json=body, headers=bearer(key))
            assert streamed.status_code == 200, streamed.text
            flush(handle, app)
            from tests.keys_fixtures import ADMIN

            logs = await client.get("/spend/logs", headers=ADMIN)
            assert logs.status_code == 200, logs.text
            rows = logs.json()
            rows = rows.get("data", rows) if isinstance(rows, dict) else rows
            assert len(rows) == 1, rows
            assert rows[0]["completion_tokens"] == 3, rows[0]  # 12 characters, estimated
