"""The admin API (LiteLLM's paths and fields) and keys at the edge, over real HTTP."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.keys import hash_key
from tests.keys_fixtures import ADMIN, CHAT, MOCK_COST, bearer, flush, generate, serve_keys


async def test_generate_answers_the_key_once_and_stores_only_its_hash(database_url: str) -> None:
    with serve_keys(database_url) as (handle, app):
        async with httpx.AsyncClient(base_url=handle.url) as client:
            made = await generate(
                client,
                models=["gpt-a"],
                key_alias="team-a",
                max_budget=5,
                budget_duration="30d",
                duration="7d",
                rpm_limit=100,
                tpm_limit=10000,
                max_parallel_requests=4,
                metadata={"owner": "a"},
                user_id="u1",
                team_id="t1",
            )
            key = made["key"]
            assert key.startswith("sk-") and len(key) >= 3 + 43  # 256 random bits
            assert made["token"] == hash_key(key)
            assert made["key_name"] == f"sk-...{key[-4:]}"
            for field, value in {
                "models": ["gpt-a"],
                "key_alias": "team-a",
                "max_budget": 5.0,
                "budget_duration": "30d",
                "rpm_limit": 100,
                "tpm_limit": 10000,
                "max_parallel_requests": 4,
                "metadata": {"owner": "a"},
                "user_id": "u1",
                "team_id": "t1",
                "spend": 0.0,
            }.items():
                assert made[field] == value, field
            assert made["expires"] and made["budget_reset_at"]

            info = await client.get("/key/info", params={"key": key}, headers=ADMIN)
            assert info.status_code == 200
            assert "key" not in info.json()["info"]  # never shown again
            by_token = await client.get("/key/info", params={"key": made["token"]}, headers=ADMIN)
            assert by_token.json()["info"] == info.json()["info"]
    # The database holds the hash, never the key.
    store = app.runtime.keys.store
    await store.open()
    try:
        rows = await store._fetch("SELECT * FROM gateway_keys")
        assert [r["token"] for r in rows] == [hash_key(key)]
        assert all(key not in str(v) for r in rows for v in r.values())
    finally:
        await store.close()


async def test_a_generated_key_works_every_way_the_master_key_does(database_url: str) -> None:
    with serve_keys(database_url) as (handle, _):
        async with httpx.AsyncClient(base_url=handle.url) as client:
            key = (await generate(client))["key"]
            for headers in (bearer(key), {"api-key": key}, {"x-api-key": key}):
                response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
                assert response.status_code == 200, response.text
                assert response.json()["choices"][0]["message"]["content"] == "hello there"
            wrong = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key + "x"))
            assert wrong.status_code == 401
            assert wrong.json()["error"]["code"] == "invalid_api_key"
            anon = await client.post("/v1/chat/completions", json=CHAT)
            assert anon.status_code == 401


async def test_the_admin_api_needs_the_master_key(database_url: str) -> None:
    with serve_keys(database_url) as (handle, _):
        async with httpx.AsyncClient(base_url=handle.url) as client:
            key = (await generate(client))["key"]
            calls = [
                ("POST", "/key/generate", {}),
                ("POST", "/key/update", {"key": key}),
                ("POST", "/key/delete", {"keys": [key]}),
                ("GET", "/key/info", None),
                ("GET", "/key/list", None),
                ("GET", "/spend/logs", None),
                ("GET", "/spend/report", None),
            ]
            for method, path, body in calls:
                anon = await client.request(method, path, json=body)
                assert anon.status_code == 401, path
                other = await client.request(method, path, json=body, headers=bearer(key))
                assert other.status_code == 403, path
                assert other.json()["error"]["type"] == "permission_error"
                assert other.json()["error"]["code"] == "master_key_required"


async def test_bad_admin_requests_name_the_field(database_url: str) -> None:
    with serve_keys(database_url) as (handle, _):
        async with httpx.AsyncClient(base_url=handle.url, headers=ADMIN) as client:
            cases = [
                ({"models": ["nope"]}, "models", "Unknown model `nope`"),
                ({"duration": "soon"}, "duration", "not a duration"),
                ({"budget_duration": "0d"}, "budget_duration", "not a duration"),
                ({"max_budget": -1}, "max_budget", ">= 0"),
                ({"rpm_limit": 0}, "rpm_limit", ">= 1"),
                ({"tags": ["x"]}, "tags", "unknown field"),
                ({"key": "sk-mine"}, "key", "unknown field"),  # clients never choose keys
            ]
            for body, param, text in cases:
                response = await client.post("/key/generate", json=body)
                assert response.status_code == 400, body
                error = response.json()["error"]
                assert error["param"] == param and text in error["message"], error
            bad = await client.post("/key/generate", content=b"{nope")
            assert bad.status_code == 400
            assert (await client.get("/key/info")).status_code == 400
            assert (await client.get("/key/info", params={"key": "zzz"})).status_code == 400
            missing = await client.get("/key/info", params={"key": "sk-" + "a" * 43})
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "key_not_found"
            gone = await client.post("/key/update", json={"key": "sk-none", "rpm_limit": 1})
            assert gone.status_code == 404
            assert (await client.post("/key/delete", json={"keys": ["sk-none"]})).status_code == 404
            assert (await client.post("/key/delete", json={})).status_code == 400
            assert (await client.get("/key/list", params={"size": "0"})).status_code == 400
            assert (await client.get("/key/generate")).status_code == 405


async def test_update_applies_at_once_and_delete_revokes_at_once(database_url: str) -> None:
    with serve_keys(database_url) as (handle, _):
        async with httpx.AsyncClient(base_url=handle.url) as client:
            made = await generate(client, models=["gpt-a"])
            key = made["key"]
            chat_b = {**CHAT, "model": "gpt-b"}
            denied = await client.post("/v1/chat/completions", json=chat_b, headers=bearer(key))
            assert denied.status_code == 403
            error = denied.json()["error"]
            assert error["type"] == "permission_error" and "`gpt-b`" in error["message"]
            assert error["param"] == "model"
            models = await client.get("/v1/models", headers=bearer(key))
            assert [m["id"] for m in models.json()["data"]] == ["gpt-a"]

            updated = await client.post(
                "/key/update",
                json={"key": key, "models": ["gpt-a", "gpt-b"], "key_alias": "renamed"},
                headers=ADMIN,
            )
            assert updated.status_code == 200
            assert updated.json()["models"] == ["gpt-a", "gpt-b"]
            assert updated.json()["key_alias"] == "renamed"
            allowed = await client.post("/v1/chat/completions", json=chat_b, headers=bearer(key))
            assert allowed.status_code == 200  # cached entry replaced, no TTL wait
            models = await client.get("/v1/models", headers=bearer(key))
            assert [m["id"] for m in models.json()["data"]] == ["gpt-a", "gpt-b"]

            deleted = await client.post("/key/delete", json={"keys": [key]}, headers=ADMIN)
            assert deleted.json() == {"deleted_keys": [key]}
            revoked = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
            assert revoked.status_code == 401
            assert revoked.json()["error"]["code"] == "invalid_api_key"


async def test_delete_by_alias_and_list_pages(database_url: str) -> None:
    with serve_keys(database_url) as (handle, _):
        async with httpx.AsyncClient(base_url=handle.url, headers=ADMIN) as client:
            made = [await generate(client, key_alias=f"k{i}", team_id="t") for i in range(5)]
            listed = (await client.get("/key/list", params={"size": 2, "page": 2})).json()
            assert listed["total_count"] == 5 and listed["total_pages"] == 3
            assert listed["current_page"] == 2 and len(listed["keys"]) == 2
            assert all(len(token) == 64 for token in listed["keys"])
            full = await client.get(
                "/key/list", params={"return_full_object": "true", "key_alias": "k3"}
            )
            assert [k["key_alias"] for k in full.json()["keys"]] == ["k3"]
            assert "key" not in full.json()["keys"][0]
            deleted = await client.post("/key/delete", json={"key_aliases": ["k1", "k2"]})
            assert sorted(deleted.json()["deleted_keys"]) == sorted(
                [made[1]["token"], made[2]["token"]]
            )
            assert (await client.get("/key/list")).json()["total_count"] == 3


async def test_keys_and_their_spend_survive_a_restart(database_url: str) -> None:
    with serve_keys(database_url) as (handle, app):
        async with httpx.AsyncClient(base_url=handle.url) as client:
            key = (await generate(client, key_alias="durable"))["key"]
            for _ in range(3):
                ok = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
                assert ok.status_code == 200
    # The app stopped: its lifespan wrote what was buffered.
    with serve_keys(database_url) as (handle, app):
        async with httpx.AsyncClient(base_url=handle.url) as client:
            ok = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
            assert ok.status_code == 200
            flush(handle, app)
            info = await client.get("/key/info", params={"key": key}, headers=ADMIN)
            assert info.json()["info"]["key_alias"] == "durable"
            assert info.json()["info"]["spend"] == pytest.approx(4 * MOCK_COST)


async def test_keys_work_mounted_without_a_lifespan(tmp_path: object) -> None:
    from keys_fixtures import keys_config
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from gateway.app import create_app
    from tests.fake_upstream import serve_in_thread

    host = Starlette(
        routes=[Mount("/llm", app=create_app(keys_config(f"sqlite:///{tmp_path}/k.db")))]
    )
    with serve_in_thread(host) as handle:
        async with httpx.AsyncClient(base_url=handle.url + "/llm") as client:
            # The first request opens the database; the master key's calls are logged too.
            ok = await client.post("/v1/chat/completions", json=CHAT, headers=ADMIN)
            assert ok.status_code == 200
            key = (await generate(client))["key"]
            assert (
                await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
            ).is_success


async def test_another_worker_sees_a_deletion_within_the_ttl(database_url: str) -> None:
    with serve_keys(database_url) as (one, _), serve_keys(database_url) as (two, app_two):
        app_two.runtime.keys.ttl = 0.3
        async with (
            httpx.AsyncClient(base_url=one.url) as a,
            httpx.AsyncClient(base_url=two.url) as b,
        ):
            key = (await generate(a, models=["gpt-a"]))["key"]
            assert (await b.post("/v1/chat/completions", json=CHAT, headers=bearer(key))).is_success
            await a.post("/key/delete", json={"keys": [key]}, headers=ADMIN)
            assert (
                await a.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
            ).status_code == 401
            # The other worker's cache has it for up to ttl; then it is gone there too.
            deadline = asyncio.get_running_loop().time() + 5
            status = 200
            while status == 200 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
                response = await b.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
                status = response.status_code
            assert status == 401
