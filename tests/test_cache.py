"""The response cache: its key, per-request control, scoping by key and model, streams
replayed, errors never stored, hits free of spend (local LRU, in process)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import anyio
import httpx
import pytest

from gateway.app import create_app
from gateway.cache import ResponseCache
from gateway.config import CacheSettings, ConfigError, parse_config
from gateway.errors import BadRequestError
from gateway.shared import SharedRedis
from tests.fake_upstream import serve_in_thread
from tests.keys_fixtures import ADMIN, MOCK_COST, bearer, flush, keys_config
from tests.redis_server import RedisServer
from tests.test_scaleout import HANDSHAKE, Monitor

MESSAGES = [{"role": "user", "content": "hi"}]


def key_of(cache: ResponseCache, **kw: Any) -> str | None:
    args = {"model": "m", "messages": MESSAGES, "optional": {}, "stream": False, "control": None}
    args.update(kw)
    lookup = cache.lookup(**args)
    return None if lookup is None else lookup.key


def test_the_key_covers_what_changes_an_answer_and_nothing_else() -> None:
    cache = ResponseCache(CacheSettings(namespace="ns"))
    base = key_of(cache)
    assert base is not None and base.startswith("ns:")
    assert key_of(cache, model="other") != base
    assert key_of(cache, stream=True) != base
    assert key_of(cache, messages=[{"role": "user", "content": "hi!"}]) != base
    assert key_of(cache, optional={"temperature": 0.5}) != base
    assert key_of(cache, optional={"tools": [{"type": "function"}]}) != base
    # Order of keys does not matter; who asks and their timeout do not either.
    a = key_of(cache, optional={"temperature": 0.5, "top_p": 1})
    assert a == key_of(cache, optional={"top_p": 1, "temperature": 0.5})
    assert key_of(cache, optional={"user": "u1", "timeout": 3, "metadata": {"x": 1}}) == base
    assert (
        ResponseCache(CacheSettings(namespace="other")).lookup("m", MESSAGES, {}, False, None).key
        != base
    )  # type: ignore[union-attr]


def test_per_request_control() -> None:
    cache = ResponseCache(CacheSettings(ttl=60))
    lookup = cache.lookup("m", MESSAGES, {}, False, {"no-cache": True})
    assert lookup is not None and not lookup.read and lookup.store
    lookup = cache.lookup("m", MESSAGES, {}, False, {"no-store": True})
    assert lookup is not None and lookup.read and not lookup.store
    assert cache.lookup("m", MESSAGES, {}, False, {"no-cache": True, "no-store": True}) is None
    assert cache.lookup("m", MESSAGES, {}, False, {"ttl": 5}).ttl == 5  # type: ignore[union-attr]
    # A client cannot keep answers longer than the operator allows.
    assert cache.lookup("m", MESSAGES, {}, False, {"ttl": 1e9}).ttl == 60  # type: ignore[union-attr]
    for bad in ({"ttl": -1}, {"no-cache": "yes"}, "always"):
        with pytest.raises(BadRequestError):
            cache.lookup("m", MESSAGES, {}, False, bad)


async def test_local_lru_is_capped_and_expires() -> None:
    cache = ResponseCache(CacheSettings(max_size=2, ttl=60))
    lookups = [
        cache.lookup("m", [{"role": "user", "content": str(i)}], {}, False, None) for i in range(3)
    ]
    for i, lookup in enumerate(lookups):
        assert lookup is not None
        cache.put(lookup, f"{i}".encode())
    assert [await cache.get(x) for x in lookups] == [None, b"1", b"2"]  # type: ignore[arg-type]
    short = cache.lookup("m", MESSAGES, {}, False, {"ttl": 1e-6})
    assert short is not None
    cache.put(short, b"x")
    assert await cache.get(short) is None


def test_config() -> None:
    config = parse_config({"litellm_settings": {"cache": True}})
    assert config.cache == CacheSettings()
    config = parse_config(
        {"litellm_settings": {"cache": True, "cache_params": {"type": "local", "max_size": 5}}}
    )
    assert config.cache is not None and config.cache.max_size == 5
    assert parse_config({"litellm_settings": {"cache_params": {"type": "local"}}}).cache is None
    with pytest.raises(ConfigError, match=r"router_settings\.redis_url"):
        parse_config({"litellm_settings": {"cache": True, "cache_params": {"type": "redis"}}})
    with pytest.raises(ConfigError, match="type"):
        parse_config({"litellm_settings": {"cache": True, "cache_params": {"type": "s3"}}})


class Counting:
    """A handler that counts its calls and can fail."""

    calls = 0

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        import gateway

        Counting.calls += 1
        if kwargs["messages"][0]["content"] == "fail":
            raise gateway.BadRequestError("no")
        return gateway.completion(model="x", mock_response=f"answer {Counting.calls}")

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        Counting.calls += 1
        for word in ["a", "b", f"{Counting.calls}"]:
            yield {
                "text": word,
                "is_finished": False,
                "finish_reason": "",
                "index": 0,
                "tool_use": None,
                "usage": None,
            }


def cached_app(**extra: Any) -> Any:
    return create_app(
        {
            "model_list": [{"model_name": "m", "litellm_params": {"model": "counting/m"}}],
            "litellm_settings": {
                "cache": True,
                "custom_provider_map": [{"provider": "counting", "custom_handler": Counting()}],
            },
            **extra,
        }
    )


def ask(client: httpx.Client, content: str = "hi", **body: Any) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": content}], **body},
    )


def test_hits_misses_streams_and_errors_over_http() -> None:
    Counting.calls = 0
    with serve_in_thread(cached_app()) as handle, httpx.Client(base_url=handle.url) as client:
        first = ask(client)
        assert first.headers["x-gateway-cache-hit"] == "false"
        again = ask(client)
        assert again.headers["x-gateway-cache-hit"] == "true"
        assert again.json() == first.json() and Counting.calls == 1
        assert ask(client, temperature=0.1).headers["x-gateway-cache-hit"] == "false"
        fresh = ask(client, cache={"no-cache": True})
        assert fresh.headers["x-gateway-cache-hit"] == "false" and Counting.calls == 3
        assert ask(client).json() == fresh.json()  # no-cache still stored its answer
        ask(client, "other", cache={"no-store": True})
        assert ask(client, "other").headers["x-gateway-cache-hit"] == "false"

        # Errors are never stored.
        assert ask(client, "fail").status_code == 400
        assert ask(client, "fail").status_code == 400 and Counting.calls == 7

        # A stream is replayed as the same stream.
        streamed = ask(client, "s", stream=True)
        assert streamed.headers["x-gateway-cache-hit"] == "false"
        replay = ask(client, "s", stream=True)
        assert replay.headers["x-gateway-cache-hit"] == "true"
        assert replay.headers["content-type"].startswith("text/event-stream")
        assert replay.text == streamed.text and replay.text.endswith("data: [DONE]\n\n")
        assert Counting.calls == 8
        metrics = client.get("/metrics").text
        assert "gateway_cache_hits_total 3.0" in metrics


def test_bad_cache_control_is_a_400() -> None:
    with serve_in_thread(cached_app()) as handle, httpx.Client(base_url=handle.url) as client:
        answer = ask(client, cache={"ttl": "long"})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "cache"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_scoped_by_model_access_and_free_of_spend(database_url: str) -> None:
    config = keys_config(database_url)
    config["litellm_settings"]["cache"] = True
    app = create_app(config)
    with serve_in_thread(app) as handle, httpx.Client(base_url=handle.url) as client:

        def key(**fields: Any) -> str:
            return str(client.post("/key/generate", json=fields, headers=ADMIN).json()["key"])

        both, only_b = key(models=["gpt-a", "gpt-b"]), key(models=["gpt-b"])
        body = {"model": "gpt-a", "messages": MESSAGES}
        first = client.post("/v1/chat/completions", json=body, headers=bearer(both))
        assert first.headers["x-gateway-cache-hit"] == "false"
        refused = client.post("/v1/chat/completions", json=body, headers=bearer(only_b))
        assert refused.status_code == 403  # never the cached answer
        hit = client.post("/v1/chat/completions", json=body, headers=bearer(both))
        assert hit.headers["x-gateway-cache-hit"] == "true"
        flush(handle, app)
        info = client.get("/key/info", params={"key": both}, headers=ADMIN).json()
        logs = client.get("/spend/logs", params={"api_key": both}, headers=ADMIN).json()["data"]
    # The hit is logged, with no tokens and no cost.
    assert sorted(row["total_tokens"] for row in logs) == [0, 30]
    assert sorted(row["spend"] for row in logs) == [0, pytest.approx(MOCK_COST)]
    assert info["info"]["spend"] == pytest.approx(MOCK_COST)


RECORDER = """
from gateway.integrations.custom_logger import CustomLogger


class Recorder(CustomLogger):
    def __init__(self):
        super().__init__()
        self.events = []

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.events.append((kwargs, response_obj))


recorder = Recorder()
"""


def test_a_hit_is_a_success_event_with_cache_hit_and_no_cost(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cache_recorder.py").write_text(RECORDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    priced = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}
    app = create_app(
        {
            "model_list": [
                {
                    "model_name": "m",
                    "litellm_params": {"model": "mock/m", "mock_response": "cached words"},
                    "model_info": priced,
                },
                {"model_name": "e", "litellm_params": {"model": "mock/e"}},
            ],
            "litellm_settings": {"cache": True, "callbacks": ["cache_recorder.recorder"]},
        }
    )
    events = app.runtime.callbacks.callbacks[0].events

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 5
        while len(events) < n:
            assert time.monotonic() < deadline, events
            time.sleep(0.01)

    with serve_in_thread(app) as handle, httpx.Client(base_url=handle.url) as client:
        first, hit = ask(client), ask(client)
        assert hit.headers["x-gateway-cache-hit"] == "true"
        wait_for(2)
        (miss_kwargs, _), (kwargs, response) = events
        assert miss_kwargs["cache_hit"] is False
        assert miss_kwargs["standard_logging_object"]["cache_hit"] is False
        cost = miss_kwargs["response_cost"]
        assert cost > 0
        slo = kwargs["standard_logging_object"]
        assert kwargs["cache_hit"] is True and slo["cache_hit"] is True
        assert kwargs["response_cost"] == slo["response_cost"] == 0
        assert slo["saved_cache_cost"] == pytest.approx(cost)
        assert slo["status"] == "success" and slo["model_group"] == "m"
        assert response.choices[0].message.content == "cached words"
        assert slo["total_tokens"] == first.json()["usage"]["total_tokens"]

        # A stream replayed from the cache: its answer rebuilt from the cached events.
        for _ in range(2):
            streamed = ask(client, "s", stream=True)
        assert streamed.headers["x-gateway-cache-hit"] == "true"
        wait_for(4)
        kwargs, response = events[3]
        assert kwargs["cache_hit"] is True and kwargs["stream"] is True
        assert response.choices[0].message.content == "cached words"

        # Embeddings are cached too, per input and parameters.
        def embed(**body: Any) -> httpx.Response:
            return client.post("/v1/embeddings", json={"model": "e", "input": "x", **body})

        a, b = embed(), embed()
        assert a.headers["x-gateway-cache-hit"] == "false"
        assert b.headers["x-gateway-cache-hit"] == "true" and b.json() == a.json()
        assert embed(dimensions=8).headers["x-gateway-cache-hit"] == "false"
        assert embed(cache={"no-cache": True}).headers["x-gateway-cache-hit"] == "false"
        wait_for(8)
        kwargs, response = events[5]
        assert kwargs["cache_hit"] is True and kwargs["call_type"] == "embeddings"
        assert response.data[0].embedding == a.json()["data"][0]["embedding"]

        metrics = client.get("/metrics").text
    assert "gateway_cache_hits_total 3.0" in metrics
    # Hits are requests too, counted without a deployment (none was called).
    counted = re.findall(
        r'gateway_requests_total\{([^}]*route="chat_completions"[^}]*)\} (\S+)', metrics
    )
    by_deployment = {
        re.search(r'deployment="([^"]*)"', labels)[1]: float(n) for labels, n in counted
    }  # type: ignore[index]
    assert by_deployment == {"": 2, "m/0": 2}, counted


async def test_concurrent_redis_lookups_share_one_mget(redis_server: RedisServer) -> None:
    shared = SharedRedis(redis_server.url, timeout=1.0)
    cache = ResponseCache(CacheSettings(type="redis", namespace="b"), shared)
    lookups = [
        cache.lookup("m", [{"role": "user", "content": str(i)}], {}, False, None) for i in range(20)
    ]
    assert all(lookups)
    for i, lookup in enumerate(lookups[:10]):
        assert lookup is not None
        cache.put(lookup, f"answer {i}".encode())
    deadline = time.monotonic() + 10  # the SETs are sent by tasks of their own
    while await shared.call(lambda client: client.exists(*(lk.key for lk in lookups))) != 10:
        assert time.monotonic() < deadline
        await anyio.sleep(0.02)
    monitor = Monitor(redis_server.port)
    try:
        monitor.commands()
        found = await asyncio.gather(*(cache.get(lookup) for lookup in lookups if lookup))
        assert found == [f"answer {i}".encode() for i in range(10)] + [None] * 10
        sent = [cmd[0].upper() for cmd in monitor.commands()]
        assert [cmd for cmd in sent if cmd not in HANDSHAKE] == ["MGET"], sent
        assert cache.hits == 10 and cache.misses == 10
    finally:
        monitor.close()

    # Redis gone: every waiting look-up is a miss, none hangs.
    redis_server.kill()
    with anyio.fail_after(5):
        found = await asyncio.gather(*(cache.get(lookup) for lookup in lookups if lookup))
    assert found == [None] * 20
    await shared.aclose()
