"""Every front door takes the chat call path: the router's fallbacks and retries, an
OpenAI-compatible upstream called on /chat/completions, and the metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gateway import CustomLLM, CustomLLMError
from gateway.app import create_app
from tests.fake_upstream import FakeUpstream, ServerHandle, run_fake_upstream, serve_in_thread
from tests.frontdoor_handlers import DOWN, HANDLERS, MASTER_KEY, SLOW, config

if TYPE_CHECKING:
    import anthropic
    import openai
else:  # imported on first use (tests/lazy_import.py says why)
    from tests.lazy_import import anthropic, openai


class FailsOnce(CustomLLM):
    """Fails the call after ``fail_next`` is set, then answers again."""

    def __init__(self) -> None:
        self.fail_next = False

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail_next:
            self.fail_next = False
            raise CustomLLMError(503, "warming up")
        return await HANDLERS["echo"].acompletion(*args, **kwargs)


FLAKY = FailsOnce()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with run_fake_upstream() as up:
        yield up


@pytest.fixture(scope="module")
def server(upstream: FakeUpstream) -> Iterator[ServerHandle]:
    data = config()
    data["model_list"].append(
        {
            "model_name": "upstream",
            "litellm_params": {
                "model": "openai/up-model",
                "api_base": upstream.base_url,
                "api_key": "sk-up",
            },
        }
    )
    data["model_list"].append({"model_name": "flaky", "litellm_params": {"model": "flaky/m"}})
    data["litellm_settings"]["custom_provider_map"].append(
        {"provider": "flaky", "custom_handler": FLAKY}
    )
    data["router_settings"].update(num_retries=1, retry_after=0, disable_cooldowns=True)
    with serve_in_thread(create_app(data), loop="uvloop", http="httptools") as handle:
        yield handle


@pytest.fixture
def oai(server: ServerHandle) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=MASTER_KEY, max_retries=0) as c:
        yield c


@pytest.fixture
def claude(server: ServerHandle) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key=MASTER_KEY, max_retries=0) as c:
        yield c


def _text(door: str, oai: openai.OpenAI, claude: anthropic.Anthropic, model: str) -> Any:
    """Ask ``model`` through one front door; (text, raw HTTP response)."""
    if door == "responses":
        raw = oai.responses.with_raw_response.create(model=model, input="hi")
        return raw.parse().output_text, raw
    if door == "messages":
        raw = claude.messages.with_raw_response.create(
            model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        return raw.parse().content[0].text, raw
    raw = oai.completions.with_raw_response.create(model=model, prompt="hi")
    return raw.parse().choices[0].text, raw


DOORS = ["responses", "messages", "completions"]


@pytest.mark.parametrize("door", DOORS)
def test_fallbacks_and_retries_apply(
    door: str, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    before = DOWN.calls
    text, raw = _text(door, oai, claude, "primary")  # always down; falls back to "echo"
    assert text == "echo: hi"
    assert raw.headers["x-gateway-deployment"] == "echo/0"
    assert DOWN.calls > before
    FLAKY.fail_next = True
    text, raw = _text(door, oai, claude, "flaky")
    assert text == "echo: hi"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert not FLAKY.fail_next


@pytest.mark.parametrize("door", DOORS)
def test_an_openai_upstream_is_called_on_chat_completions(
    door: str, oai: openai.OpenAI, claude: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    upstream.reset()
    text, _ = _text(door, oai, claude, "upstream")
    assert text == "Hello from the fake upstream"
    [seen] = upstream.requests_seen
    assert seen.path == "/v1/chat/completions"
    assert seen.body["model"] == "up-model"
    assert seen.body["messages"][-1] == {"role": "user", "content": "hi"}


def test_streams_from_an_openai_upstream(
    oai: openai.OpenAI, claude: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    upstream.reset()
    with oai.responses.stream(
        model="upstream", input="hi", extra_body={"fake": {"tools": True}}
    ) as stream:
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert calls[0].arguments == '{"city": "Paris", "unit": "c"}'
    with claude.messages.stream(
        model="upstream", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        message = stream.get_final_message()
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from the fake upstream"
    assert [s.path for s in upstream.requests_seen] == ["/v1/chat/completions"] * 2
    assert all(s.body["stream"] is True for s in upstream.requests_seen)


def test_metrics_count_each_front_door(
    server: ServerHandle, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    for door in DOORS:
        _text(door, oai, claude, "echo")
    text = httpx.get(f"{server.url}/metrics").text
    for route in DOORS:
        assert f'route="{route}",status="200"' in text


def test_timeouts_apply(server: ServerHandle) -> None:
    headers = {"x-api-key": MASTER_KEY, "x-gateway-timeout": "0.3"}
    SLOW.stopped.clear()
    r = httpx.post(
        f"{server.url}/v1/messages",
        headers=headers,
        json={"model": "slow", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 408
    assert r.json()["error"]["type"] == "timeout_error"
    assert SLOW.stopped.wait(5)
    SLOW.stopped.clear()
    r = httpx.post(
        f"{server.url}/v1/responses",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json={"model": "slow", "input": "x", "timeout": 0.3},
    )
    assert r.status_code == 408 and r.json()["error"]["type"] == "timeout_error"
    assert SLOW.stopped.wait(5)


@pytest.mark.parametrize("door", DOORS)
def test_disconnect_mid_stream_stops_the_handler(
    door: str, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    SLOW.stopped.clear()
    if door == "responses":
        stream: Any = oai.responses.create(model="slow", input="x", stream=True)
    elif door == "messages":
        stream = claude.messages.create(
            model="slow", max_tokens=5, messages=[{"role": "user", "content": "x"}], stream=True
        )
    else:
        stream = oai.completions.create(model="slow", prompt="x", stream=True)
    events = iter(stream)
    for _ in range(3):
        next(events)
    stream.close()
    assert SLOW.stopped.wait(5)


@pytest.mark.parametrize("door", DOORS)
def test_request_timeout_bounds_the_whole_stream(door: str, server: ServerHandle) -> None:
    # The slow handler ticks every 50 ms for 15 s: no wait between chunks is long, the
    # request's 0.5 s bounds the whole stream, which ends with the API's error event.
    SLOW.stopped.clear()
    path, body = {
        "responses": ("/v1/responses", {"model": "slow", "input": "x"}),
        "messages": (
            "/v1/messages",
            {"model": "slow", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        ),
        "completions": ("/v1/completions", {"model": "slow", "prompt": "x"}),
    }[door]
    r = httpx.post(
        f"{server.url}{path}",
        headers={"x-api-key": MASTER_KEY, "x-gateway-timeout": "0.5"},
        json={**body, "stream": True},
        timeout=30,
    )
    assert r.status_code == 200
    assert "tick 0" in r.text
    assert "Request timed out after 0.5 s" in r.text  # in each API's own error event
    assert "tick 299" not in r.text
    assert SLOW.stopped.wait(5)
