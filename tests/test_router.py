"""The router as a library: strategies, retries, fallbacks, timeouts, cooldowns,
backpressure and hedging, driven by handlers that fail, hang or answer slowly on command.

Time that matters (backoff, cooldown expiry, latency averages, usage windows) comes from
an injected clock and sleep; only the few waits that are real (a timeout firing, a hedge
starting) use small real delays.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import msgspec
import pytest

import gateway
from gateway import CustomLLM, Router
from gateway.errors import (
    BadRequestError,
    ContextWindowExceededError,
    CustomLLMError,
    GatewayError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    Timeout,
)
from gateway.router import RouterConfigError, RouterState

MESSAGES = [{"role": "user", "content": "hello"}]


class Clock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sleeps:
    """An injected sleep: records each wait and moves the clock instead of waiting."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.waits: list[float] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)


def _chunk(text: str) -> dict[str, Any]:
    return {
        "text": text,
        "tool_use": None,
        "is_finished": False,
        "finish_reason": "",
        "usage": None,
        "index": 0,
    }


class Backend(CustomLLM):
    """A deployment that does what its script says, one step per call.

    Steps: "ok", "hang" (until cancelled), a number (seconds to sleep first, real or on
    the fake clock), an exception (raised), "fail-after-first" (streams: one chunk, then
    a 500), ("gate", event) (wait for the event), ("fail-later", seconds) (sleep, then 500).
    """

    def __init__(self, name: str, clock: Clock | None = None) -> None:
        self.name = name
        self.clock = clock
        self.script: list[Any] = []
        self.calls = 0
        self.finished = 0  # calls whose finally ran (cancelled ones included)
        self.cancelled = 0
        self.usage_tokens = 10

    def _next(self) -> Any:
        self.calls += 1
        return self.script.pop(0) if self.script else "ok"

    async def _before(self, step: Any) -> None:
        if isinstance(step, BaseException):
            raise step
        if step == "hang":
            await anyio.sleep_forever()
        if isinstance(step, tuple) and step[0] == "gate":
            await step[1].wait()
        if isinstance(step, tuple) and step[0] == "fail-later":
            await anyio.sleep(step[1])
            raise CustomLLMError(500, "failed after a while")
        if isinstance(step, int | float):
            if self.clock is not None:
                self.clock.advance(step)
            else:
                await anyio.sleep(step)

    async def acompletion(self, *args: Any, **kwargs: Any) -> gateway.ModelResponse:
        step = self._next()
        try:
            await self._before(step)
            n = self.usage_tokens
            return gateway.ModelResponse(
                choices=[{"message": {"role": "assistant", "content": self.name}}],
                usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": n},
            )
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.finished += 1

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        step = self._next()
        try:
            if step != "fail-after-first":
                await self._before(step)
            yield _chunk(self.name)
            if step == "fail-after-first":
                raise CustomLLMError(500, f"{self.name} broke mid-stream")
            yield _chunk(" done")
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.finished += 1

    async def aembedding(self, *args: Any, **kwargs: Any) -> Any:
        step = self._next()
        await self._before(step)
        return [[1.0, 2.0]]

    async def aimage_generation(self, *args: Any, **kwargs: Any) -> Any:
        step = self._next()
        await self._before(step)
        return {"data": [{"url": f"https://img/{self.name}"}]}


def make_router(
    groups: dict[str, list[dict[str, Any]]], **settings: Any
) -> tuple[Router, dict[str, Backend]]:
    """A router over groups of backends: {"g": [{"name": "a", ...litellm params}, ...]}."""
    backends: dict[str, Backend] = {}
    model_list = []
    clock = settings.get("clock")
    for group, deployments in groups.items():
        for entry in deployments:
            params = dict(entry)
            name = params.pop("name")
            backends[name] = Backend(name, clock if params.pop("fake_time", False) else None)
            model_list.append(
                {"model_name": group, "litellm_params": {"model": f"{name}/m", **params}}
            )
    router = Router(model_list, custom_providers=backends, **settings)
    return router, backends


def served_by(response: Any) -> str:
    return response.choices[0].message.content


def text_of(chunk: Any) -> str | None:
    """The content of a chunk as the HTTP app gets it (a dict, a Struct or msgspec.Raw)."""
    data = msgspec.json.decode(msgspec.json.encode(chunk))
    choices = data["choices"]
    return choices[0]["delta"].get("content") if choices else None


def first_call_does(backends: dict[str, Backend], *steps: Any) -> list[str]:
    """Whichever backend is called first takes steps[0], the next steps[1], ...; later
    calls answer at once. Returns the names in call order, as they are called."""
    order: list[str] = []
    for name, b in backends.items():

        def step(name: str = name, b: Backend = b) -> Any:
            b.calls += 1
            order.append(name)
            return steps[len(order) - 1] if len(order) <= len(steps) else "ok"

        b._next = step  # type: ignore[method-assign]
    return order


# -- strategies ----------------------------------------------------------------------------


async def test_simple_shuffle_follows_weights() -> None:
    router, _ = make_router({"g": [{"name": "heavy", "weight": 3}, {"name": "light", "weight": 1}]})
    counts = Counter([served_by(await router.acompletion("g", MESSAGES)) for _ in range(2000)])
    share = counts["heavy"] / 2000
    assert 0.70 <= share <= 0.80, counts


async def test_simple_shuffle_without_weights_is_even() -> None:
    router, _ = make_router({"g": [{"name": "a"}, {"name": "b"}]})
    counts = Counter([served_by(await router.acompletion("g", MESSAGES)) for _ in range(1000)])
    assert 0.42 <= counts["a"] / 1000 <= 0.58, counts


async def test_least_busy_picks_the_idle_deployment() -> None:
    router, backends = make_router(
        {"g": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, routing_strategy="least-busy"
    )
    gate = anyio.Event()
    for b in backends.values():
        b.script = [("gate", gate)]
    answers: list[str] = []

    async def call() -> None:
        answers.append(served_by(await router.acompletion("g", MESSAGES)))

    async with anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        busy = [n for n, b in backends.items() if b.calls]
        assert len(busy) == 2  # two different deployments took the two requests
        idle = next(n for n in backends if n not in busy)
        backends[idle].script = []
        # With two deployments busy, every new request goes to the idle one.
        for _ in range(5):
            assert served_by(await router.acompletion("g", MESSAGES)) == idle
        gate.set()
    assert sorted(answers) == sorted(busy)
    assert all(router.state.in_flight(f"g/{i}") == 0 for i in range(3))


async def test_latency_based_prefers_the_fast_deployment() -> None:
    clock = Clock()
    router, backends = make_router(
        {"g": [{"name": "slow", "fake_time": True}, {"name": "fast", "fake_time": True}]},
        routing_strategy="latency-based",
        clock=clock,
    )
    backends["slow"].script = [2.0] * 100
    backends["fast"].script = [0.1] * 100
    # Both are measured first, then the fast one serves.
    first_two = {served_by(await router.acompletion("g", MESSAGES)) for _ in range(2)}
    assert first_two == {"slow", "fast"}
    for _ in range(20):
        assert served_by(await router.acompletion("g", MESSAGES)) == "fast"
    assert router.state.latency("g/1") == pytest.approx(0.1)


async def test_latency_based_does_not_prefer_a_deployment_that_fails_fast() -> None:
    clock = Clock()
    router, backends = make_router(
        {"g": [{"name": "broken", "fake_time": True}, {"name": "ok", "fake_time": True}]},
        routing_strategy="latency-based",
        num_retries=1,
        disable_cooldowns=True,
        clock=clock,
    )
    backends["broken"].script = [CustomLLMError(500, "down")] * 20
    backends["ok"].script = [0.5] * 20
    for _ in range(10):
        assert served_by(await router.acompletion("g", MESSAGES)) == "ok"
    assert backends["broken"].calls == 1


async def test_latency_based_uses_time_to_first_token_for_streams() -> None:
    clock = Clock()
    router, _backends = make_router(
        {"g": [{"name": "a", "fake_time": True}, {"name": "b", "fake_time": True}]},
        routing_strategy="latency-based",
        clock=clock,
    )
    state = router.state
    # a answers whole requests fast but starts streams slowly; b the other way round.
    state.record_latency("g/0", 0.1)
    state.record_latency("g/0", 3.0, first_token=True)
    state.record_latency("g/1", 2.0)
    state.record_latency("g/1", 0.2, first_token=True)
    for _ in range(5):
        assert served_by(await router.acompletion("g", MESSAGES)) == "a"
        stream = await router.acompletion("g", MESSAGES, stream=True)
        chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.content == "b"


async def test_latency_based_records_time_to_first_chunk() -> None:
    clock = Clock()
    router, backends = make_router(
        {"g": [{"name": "a", "fake_time": True}]}, routing_strategy="latency-based", clock=clock
    )
    backends["a"].script = [0.7]
    stream = await router.acompletion("g", MESSAGES, stream=True)
    assert router.state.latency("g/0", first_token=True) == pytest.approx(0.7)
    await stream.aclose()


async def test_usage_based_spreads_by_rpm_headroom() -> None:
    clock = Clock()
    router, _ = make_router(
        {"g": [{"name": "small", "rpm": 10}, {"name": "big", "rpm": 100}]},
        routing_strategy="usage-based",
        clock=clock,
    )
    counts = Counter([served_by(await router.acompletion("g", MESSAGES)) for _ in range(55)])
    # The share of its limit used stays level: about 1 in 11 requests goes to "small".
    assert 4 <= counts["small"] <= 6, counts


async def test_usage_based_without_limits_picks_least_tokens() -> None:
    router, backends = make_router(
        {"g": [{"name": "a"}, {"name": "b"}]}, routing_strategy="usage-based"
    )
    backends["a"].usage_tokens = 1000
    backends["b"].usage_tokens = 1
    counts = Counter([served_by(await router.acompletion("g", MESSAGES)) for _ in range(30)])
    assert counts["a"] == 1, counts  # once measured as heavy, a gets nothing more


async def test_tpm_limit_skips_a_spent_deployment() -> None:
    clock = Clock()
    router, backends = make_router(
        {"g": [{"name": "a", "tpm": 25}, {"name": "b"}]}, clock=clock, queue_timeout=0
    )
    backends["a"].usage_tokens = 10
    for _ in range(60):
        await router.acompletion("g", MESSAGES)
    assert backends["a"].calls == 3  # 30 tokens >= 25: no more this minute
    clock.advance(61)
    served = Counter([served_by(await router.acompletion("g", MESSAGES)) for _ in range(40)])
    assert served["a"] >= 1


async def test_tpm_counts_streamed_tokens() -> None:
    class Talker(CustomLLM):
        async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
            yield _chunk("x")
            yield _chunk("y" * 400)  # after the first chunk: pre-encoded in the HTTP app

    clock = Clock()
    router = Router(
        [{"model_name": "g", "litellm_params": {"model": "talker/m", "tpm": 10_000}}],
        custom_providers={"talker": Talker()},
        clock=clock,
    )
    for raw_dicts in (True, False):  # the HTTP app's chunks, and the library's
        routed = await router.chat("g", MESSAGES, {}, stream=True, raw_dicts=raw_dicts)
        assert [text_of(c) async for c in routed.result][:2] == ["x", "y" * 400]
    # No usage reported: estimated from the characters, about 4 per token.
    requests, tokens = router.state.usage("g/0", clock())
    assert requests == 2
    assert tokens == 2 * ((5 + 1 + 400) // 4)


# -- retries -------------------------------------------------------------------------------


async def test_retries_back_off_exponentially_with_jitter() -> None:
    sleeps = Sleeps()
    router, backends = make_router(
        {"g": [{"name": "a"}]}, num_retries=3, retry_backoff=1.0, sleep=sleeps
    )
    backends["a"].script = [CustomLLMError(503, "busy")] * 3
    routed = await router.chat("g", MESSAGES, {})
    assert served_by(routed.result) == "a"
    assert routed.attempts == 4
    assert backends["a"].calls == 4
    assert len(sleeps.waits) == 3
    for n, wait in enumerate(sleeps.waits):
        cap = 1.0 * 2**n
        assert cap / 2 <= wait <= cap, sleeps.waits


async def test_retries_stop_after_num_retries() -> None:
    sleeps = Sleeps()
    router, backends = make_router({"g": [{"name": "a"}]}, num_retries=2, sleep=sleeps)
    backends["a"].script = [CustomLLMError(500, "down")] * 5
    with pytest.raises(GatewayError) as info:
        await router.acompletion("g", MESSAGES)
    assert info.value.status_code == 500
    assert backends["a"].calls == 3
    assert len(sleeps.waits) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_never_retried(status: int) -> None:
    sleeps = Sleeps()
    router, backends = make_router(
        {"g": [{"name": "a"}, {"name": "b"}]}, num_retries=3, sleep=sleeps
    )
    for b in backends.values():
        b.script = [CustomLLMError(status, "no")]
    with pytest.raises(GatewayError) as info:
        await router.acompletion("g", MESSAGES)
    assert info.value.status_code == status
    assert sum(b.calls for b in backends.values()) == 1
    assert sleeps.waits == []


async def test_timeouts_and_rate_limits_are_retried() -> None:
    sleeps = Sleeps()
    router, backends = make_router({"g": [{"name": "a"}]}, num_retries=2, sleep=sleeps)
    backends["a"].script = [CustomLLMError(408, "slow"), CustomLLMError(429, "later")]
    routed = await router.chat("g", MESSAGES, {})
    assert routed.attempts == 3


async def test_retry_honours_retry_after() -> None:
    sleeps = Sleeps()
    router, backends = make_router(
        {"g": [{"name": "a"}]}, num_retries=1, retry_backoff=0.1, sleep=sleeps
    )
    backends["a"].script = [RateLimitError("slow down", headers={"Retry-After": "3"})]
    routed = await router.chat("g", MESSAGES, {})
    assert routed.attempts == 2
    assert sleeps.waits == [3.0]


async def test_retry_after_longer_than_the_cap_is_not_waited_for() -> None:
    sleeps = Sleeps()
    router, backends = make_router(
        {"g": [{"name": "a"}]}, num_retries=3, retry_backoff_max=5, sleep=sleeps
    )
    backends["a"].script = [RateLimitError("come back later", headers={"retry-after": "120"})]
    with pytest.raises(RateLimitError) as info:
        await router.acompletion("g", MESSAGES)
    assert info.value.headers == {"retry-after": "120"}  # the caller learns when
    assert sleeps.waits == []
    assert backends["a"].calls == 1


async def test_retry_goes_to_another_deployment_at_once() -> None:
    sleeps = Sleeps()
    router, backends = make_router(
        {"g": [{"name": "a"}, {"name": "b"}]}, num_retries=1, sleep=sleeps
    )
    order = first_call_does(backends, CustomLLMError(500, "down"))
    routed = await router.chat("g", MESSAGES, {})
    assert routed.attempts == 2
    # The retry went to the other deployment, without a wait.
    assert len(set(order)) == 2
    assert served_by(routed.result) == order[1]
    assert routed.deployment == ("g/0", "g/1")[order[1] == "b"]
    assert sleeps.waits == []


async def test_stream_failing_before_its_first_chunk_is_retried() -> None:
    sleeps = Sleeps()
    router, backends = make_router({"g": [{"name": "a"}]}, num_retries=2, sleep=sleeps)
    backends["a"].script = [CustomLLMError(502, "upstream down")]
    routed = await router.chat("g", MESSAGES, {"stream": True}, stream=True)
    chunks = [c async for c in routed.result]
    assert routed.attempts == 2
    assert text_of(chunks[0]) == "a"
    assert backends["a"].calls == 2


async def test_stream_failing_after_its_first_chunk_is_not_retried() -> None:
    sleeps = Sleeps()
    router, backends = make_router(
        {"g": [{"name": "a"}, {"name": "b"}]}, num_retries=3, sleep=sleeps
    )
    for b in backends.values():
        b.script = ["fail-after-first"]
    routed = await router.chat("g", MESSAGES, {"stream": True}, stream=True)
    received = []
    with pytest.raises(GatewayError, match="broke mid-stream"):
        async for chunk in routed.result:
            received.append(chunk)
    assert len(received) == 1
    assert routed.attempts == 1
    assert sum(b.calls for b in backends.values()) == 1
    assert sum(router.state.in_flight(f"g/{i}") for i in range(2)) == 0


# -- fallbacks -----------------------------------------------------------------------------


async def test_fallbacks_are_tried_in_order() -> None:
    router, backends = make_router(
        {
            "a": [{"name": "a1"}],
            "b": [{"name": "b1"}],
            "c": [{"name": "c1"}],
            "d": [{"name": "d1"}],
        },
        fallbacks=[{"a": ["b", "c", "d"]}],
    )
    order: list[str] = []
    for name, b in backends.items():
        original = b._next

        def record(name: str = name, original: Any = original) -> Any:
            order.append(name)
            return original()

        b._next = record  # type: ignore[method-assign]
    backends["a1"].script = [CustomLLMError(500, "a down")]
    backends["b1"].script = [CustomLLMError(503, "b down")]
    routed = await router.chat("a", MESSAGES, {})
    assert order == ["a1", "b1", "c1"]
    assert routed.deployment == "c/2"
    assert routed.attempts == 3
    # The response is stamped with the model the client asked for.
    assert routed.result.model == "a"


async def test_fallbacks_exhausted_raise_the_original_error() -> None:
    router, backends = make_router(
        {"a": [{"name": "a1"}], "b": [{"name": "b1"}]}, fallbacks=[{"a": "b"}]
    )
    backends["a1"].script = [CustomLLMError(500, "a down")]
    backends["b1"].script = [CustomLLMError(503, "b down")]
    with pytest.raises(GatewayError, match="a down"):
        await router.acompletion("a", MESSAGES)


async def test_bad_requests_do_not_fall_back() -> None:
    router, backends = make_router(
        {"a": [{"name": "a1"}], "b": [{"name": "b1"}]}, fallbacks=[{"a": ["b"]}]
    )
    backends["a1"].script = [BadRequestError("bad temperature")]
    with pytest.raises(BadRequestError):
        await router.acompletion("a", MESSAGES)
    assert backends["b1"].calls == 0


async def test_context_window_errors_use_context_window_fallbacks() -> None:
    router, backends = make_router(
        {"small": [{"name": "s"}], "big": [{"name": "l"}], "other": [{"name": "o"}]},
        fallbacks=[{"small": ["other"]}],
        context_window_fallbacks=[{"small": ["big"]}],
    )
    backends["s"].script = [ContextWindowExceededError("too long"), CustomLLMError(500, "x")]
    assert served_by(await router.acompletion("small", MESSAGES)) == "l"
    # Other failures use the ordinary fallbacks.
    assert served_by(await router.acompletion("small", MESSAGES)) == "o"
    assert backends["l"].calls == 1


async def test_default_fallbacks_apply_to_every_group() -> None:
    router, backends = make_router(
        {"a": [{"name": "a1"}], "spare": [{"name": "s1"}]}, default_fallbacks=["spare"]
    )
    backends["a1"].script = [CustomLLMError(500, "down")]
    assert served_by(await router.acompletion("a", MESSAGES)) == "s1"


# -- cooldowns -----------------------------------------------------------------------------


async def test_cooldown_entry_and_expiry() -> None:
    clock = Clock()
    router, backends = make_router(
        {"main": [{"name": "m"}], "backup": [{"name": "b"}]},
        fallbacks=[{"main": ["backup"]}],
        allowed_fails=1,
        cooldown_time=30,
        clock=clock,
    )
    backends["m"].script = [CustomLLMError(500, "down")] * 2
    assert served_by(await router.acompletion("main", MESSAGES)) == "b"  # 1 failure: allowed
    assert served_by(await router.acompletion("main", MESSAGES)) == "b"  # 2: cooling now
    assert backends["m"].calls == 2
    clock.advance(29)
    assert served_by(await router.acompletion("main", MESSAGES)) == "b"
    assert backends["m"].calls == 2  # skipped while cooling: never called
    clock.advance(2)
    assert served_by(await router.acompletion("main", MESSAGES)) == "m"
    assert backends["m"].calls == 3


async def test_failures_older_than_a_minute_do_not_count() -> None:
    clock = Clock()
    router, _backends = make_router(
        {"g": [{"name": "a"}, {"name": "b"}]}, allowed_fails=1, clock=clock
    )
    state = router.state
    assert state.record_failure("g/0", clock()) == 1
    clock.advance(61)
    assert state.record_failure("g/0", clock()) == 1


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_never_cool_a_deployment_down(status: int) -> None:
    clock = Clock()
    router, backends = make_router(
        {"g": [{"name": "a"}, {"name": "b"}]}, allowed_fails=0, clock=clock
    )
    for b in backends.values():
        b.script = [CustomLLMError(status, "client error")] * 10
    for _ in range(10):
        with pytest.raises(GatewayError):
            await router.acompletion("g", MESSAGES)
    assert backends["a"].calls + backends["b"].calls == 10
    assert router.state.cooldown_remaining("g/0", clock()) == 0
    assert router.state.cooldown_remaining("g/1", clock()) == 0


async def test_all_cooling_answers_503_with_retry_after() -> None:
    clock = Clock()
    router, backends = make_router(
        {"g": [{"name": "a"}, {"name": "b"}]}, allowed_fails=0, cooldown_time=12, clock=clock
    )
    for b in backends.values():
        b.script = [CustomLLMError(500, "down")]
    for _ in range(2):
        with pytest.raises(GatewayError):
            await router.acompletion("g", MESSAGES)
    clock.advance(2)
    with pytest.raises(ServiceUnavailableError) as info:
        await router.acompletion("g", MESSAGES)
    assert info.value.status_code == 503
    assert info.value.headers == {"Retry-After": "10"}
    assert backends["a"].calls == backends["b"].calls == 1


async def test_a_retry_finding_everything_cooling_reports_the_real_error() -> None:
    clock = Clock()
    router, backends = make_router(
        {"g": [{"name": "a"}, {"name": "b"}]},
        allowed_fails=0,
        num_retries=3,
        clock=clock,
        sleep=Sleeps(),
    )
    for b in backends.values():
        b.script = [CustomLLMError(502, "bad upstream")]
    with pytest.raises(GatewayError) as info:
        await router.acompletion("g", MESSAGES)
    assert info.value.status_code == 502  # not the router's own 503
    assert backends["a"].calls == backends["b"].calls == 1


async def test_rate_limit_with_retry_after_cools_for_that_long() -> None:
    clock = Clock()
    router, backends = make_router({"g": [{"name": "a"}, {"name": "b"}]}, clock=clock)
    for b in backends.values():
        b.script = [RateLimitError("slow", headers={"Retry-After": "7"})]
    with pytest.raises(RateLimitError):
        await router.acompletion("g", MESSAGES)
    failed = "g/0" if backends["a"].calls else "g/1"
    assert router.state.cooldown_remaining(failed, clock()) == pytest.approx(7)


@pytest.mark.parametrize(
    ("header", "value", "settings", "cooled"),
    [
        ("Retry-After", "1e12", {}, 60.0),  # the default max_retry_after
        ("Retry-After", "inf", {}, 60.0),
        ("retry-after-ms", "1e15", {}, 60.0),
        ("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT", {}, 60.0),
        ("Retry-After", "1e12", {"max_retry_after": 5}, 5.0),
        ("Retry-After", "3", {"max_retry_after": 5}, 3.0),
    ],
)
async def test_retry_after_from_an_upstream_is_clamped(
    header: str, value: str, settings: dict[str, Any], cooled: float
) -> None:
    clock = Clock()
    router, backends = make_router({"g": [{"name": "a"}, {"name": "b"}]}, clock=clock, **settings)
    for b in backends.values():
        b.script = [RateLimitError("slow", headers={header: value})]
    with pytest.raises(RateLimitError):
        await router.acompletion("g", MESSAGES)
    failed = "g/0" if backends["a"].calls else "g/1"
    assert router.state.cooldown_remaining(failed, clock()) == pytest.approx(cooled)
    clock.advance(cooled + 0.001)
    assert router.state.cooldown_remaining(failed, clock()) == 0


async def test_retry_after_that_is_not_a_number_is_ignored() -> None:
    clock = Clock()
    router, backends = make_router(
        {"g": [{"name": "a"}, {"name": "b"}]}, clock=clock, allowed_fails=5
    )
    for b in backends.values():
        b.script = [RateLimitError("slow", headers={"Retry-After": "nan"})]
    with pytest.raises(RateLimitError):
        await router.acompletion("g", MESSAGES)
    # Counted as a plain failure (1 of 5 allowed), not a cooldown of NaN seconds.
    assert router.state.cooldown_remaining("g/0", clock()) == 0
    assert router.state.cooldown_remaining("g/1", clock()) == 0


async def test_clamped_retry_after_bounds_the_wait_before_a_retry() -> None:
    # A cap on waits (retry_backoff_max) above max_retry_after: the upstream's 1e12 s is
    # waited as max_retry_after, then the retry goes.
    clock = Clock()
    sleeps = Sleeps(clock)
    router, backends = make_router(
        {"g": [{"name": "a"}]},
        clock=clock,
        sleep=sleeps,
        num_retries=1,
        retry_backoff=0.1,
        retry_backoff_max=120,
        max_retry_after=30,
    )
    backends["a"].script = [RateLimitError("slow", headers={"Retry-After": "1e12"})]
    assert served_by(await router.acompletion("g", MESSAGES)) == "a"
    assert sleeps.waits == [30]


async def test_single_deployment_without_fallbacks_never_cools() -> None:
    clock = Clock()
    router, backends = make_router({"g": [{"name": "a"}]}, allowed_fails=0, clock=clock)
    backends["a"].script = [CustomLLMError(500, "down")] * 3
    for _ in range(3):
        with pytest.raises(GatewayError) as info:
            await router.acompletion("g", MESSAGES)
        assert info.value.status_code == 500
    assert served_by(await router.acompletion("g", MESSAGES)) == "a"


# -- timeouts ------------------------------------------------------------------------------


async def test_deployment_timeout_cancels_the_call() -> None:
    router, backends = make_router({"g": [{"name": "a", "timeout": 0.1}]})
    backends["a"].script = ["hang"]
    with pytest.raises(Timeout):
        await router.acompletion("g", MESSAGES)
    assert backends["a"].cancelled == 1
    assert backends["a"].finished == 1


async def test_request_timeout_bounds_the_whole_request() -> None:
    router, backends = make_router({"g": [{"name": "a"}]}, num_retries=5, timeout=30)
    backends["a"].script = ["hang"]
    with anyio.fail_after(5):
        with pytest.raises(Timeout):
            await router.acompletion("g", MESSAGES, timeout=0.1)
    assert backends["a"].calls == 1  # no time left to retry
    assert backends["a"].cancelled == 1


async def test_request_deadline_timeout_does_not_count_toward_cooldown() -> None:
    router, backends = make_router(
        {"g": [{"name": "a"}, {"name": "b"}]}, allowed_fails=0, timeout=30
    )
    for b in backends.values():
        b.script = ["hang"]
    with pytest.raises(Timeout):
        await router.acompletion("g", MESSAGES, timeout=0.05)
    now = router._clock()
    assert router.state.cooldown_remaining("g/0", now) == 0
    assert router.state.cooldown_remaining("g/1", now) == 0


async def test_stream_timeout_bounds_the_first_chunk_only() -> None:
    router, backends = make_router(
        {"g": [{"name": "a", "stream_timeout": 0.1, "timeout": 30}]}, num_retries=1
    )
    backends["a"].script = ["hang", 0.01]
    routed = await router.chat("g", MESSAGES, {}, stream=True)
    assert routed.attempts == 2  # the first attempt timed out waiting for its first chunk
    assert backends["a"].cancelled == 1
    assert [text_of(c) async for c in routed.result][:2] == ["a", " done"]


async def test_router_stream_timeout_setting() -> None:
    router, backends = make_router({"g": [{"name": "a"}]}, stream_timeout=0.1)
    backends["a"].script = ["hang"]
    with pytest.raises(Timeout, match="first chunk"):
        await router.acompletion("g", MESSAGES, stream=True)


# -- backpressure --------------------------------------------------------------------------


async def test_max_parallel_requests_queues_then_sheds_with_429() -> None:
    router, backends = make_router(
        {"g": [{"name": "a", "max_parallel_requests": 1}]}, max_queue=1, queue_timeout=0.2
    )
    gate = anyio.Event()
    backends["a"].script = [("gate", gate)]
    results: dict[str, Any] = {}

    async def call(key: str) -> None:
        try:
            results[key] = served_by(await router.acompletion("g", MESSAGES))
        except GatewayError as exc:
            results[key] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "running")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(call, "queued")
        await anyio.wait_all_tasks_blocked()
        # The queue (size 1) is full: the next request is shed at once.
        with pytest.raises(RateLimitError) as info:
            await router.acompletion("g", MESSAGES)
        assert info.value.headers["Retry-After"] == "1"
        assert "queue is full" in info.value.message
        await anyio.sleep(0.4)  # the queued one gives up after queue_timeout
        gate.set()
    assert results["running"] == "a"
    assert isinstance(results["queued"], RateLimitError)
    assert results["queued"].status_code == 429
    assert "Retry-After" in results["queued"].headers
    assert backends["a"].calls == 1


async def test_a_queued_request_runs_when_a_slot_frees() -> None:
    router, backends = make_router(
        {"g": [{"name": "a", "max_parallel_requests": 1}]}, queue_timeout=5
    )
    gate = anyio.Event()
    backends["a"].script = [("gate", gate)]
    answers: list[str] = []

    async def call() -> None:
        answers.append(served_by(await router.acompletion("g", MESSAGES)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        assert backends["a"].calls == 1
        gate.set()
    assert answers == ["a", "a"]
    assert backends["a"].calls == 2


async def test_max_in_flight_is_global() -> None:
    router, backends = make_router(
        {"x": [{"name": "a"}], "y": [{"name": "b"}]}, max_in_flight=1, queue_timeout=0.05
    )
    gate = anyio.Event()
    backends["a"].script = [("gate", gate)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(router.acompletion, "x", MESSAGES)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(RateLimitError) as info:
            await router.acompletion("y", MESSAGES)
        assert info.value.headers == {"Retry-After": "1"}
        gate.set()
    assert router.state.total_in_flight == 0
    assert served_by(await router.acompletion("y", MESSAGES)) == "b"


async def test_stream_holds_its_slot_until_it_ends() -> None:
    router, _ = make_router(
        {"g": [{"name": "a", "max_parallel_requests": 1}]}, max_in_flight=1, queue_timeout=0
    )
    stream = await router.acompletion("g", MESSAGES, stream=True)
    assert router.state.in_flight("g/0") == 1
    assert router.state.total_in_flight == 1
    with pytest.raises(RateLimitError):
        await router.acompletion("g", MESSAGES)
    assert not stream.finished  # the endpoints close it: it holds the slot
    await stream.aclose()  # closed before being read at all
    assert router.state.in_flight("g/0") == 0
    assert router.state.total_in_flight == 0


async def test_a_stream_read_to_its_end_is_finished_and_has_nothing_to_close() -> None:
    # The endpoints skip the close (and its shielded cancel scope) of a finished stream:
    # by then it must have let go of everything.
    router, _ = make_router({"g": [{"name": "a", "max_parallel_requests": 1}]}, max_in_flight=1)
    stream = await router.acompletion("g", MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks and stream.finished
    assert router.state.in_flight("g/0") == 0
    assert router.state.total_in_flight == 0


async def test_rpm_limit_sheds_with_retry_after_until_the_window_moves() -> None:
    clock = Clock()
    router, _ = make_router({"g": [{"name": "a", "rpm": 2}]}, clock=clock, queue_timeout=0.05)
    await router.acompletion("g", MESSAGES)
    clock.advance(10)
    await router.acompletion("g", MESSAGES)
    with pytest.raises(RateLimitError) as info:
        await router.acompletion("g", MESSAGES)
    assert info.value.headers == {"Retry-After": "50"}
    clock.advance(51)
    assert served_by(await router.acompletion("g", MESSAGES)) == "a"


# -- hedging -------------------------------------------------------------------------------


async def test_hedged_request_wins_on_the_fast_deployment() -> None:
    router, backends = make_router({"g": [{"name": "a"}, {"name": "b"}]}, hedge_after_ms={"g": 50})
    # Whichever deployment is asked first hangs; the other answers at once.
    first_asked = first_call_does(backends, "hang")
    with anyio.fail_after(5):
        routed = await router.chat("g", MESSAGES, {})
    slow, fast = first_asked
    assert served_by(routed.result) == fast
    assert routed.attempts == 2
    assert backends[slow].cancelled == 1 and backends[slow].finished == 1
    assert router.state.in_flight("g/0") == router.state.in_flight("g/1") == 0


async def test_hedge_is_not_started_when_the_first_answers_in_time() -> None:
    router, backends = make_router({"g": [{"name": "a"}, {"name": "b"}]}, hedge_after_ms=2000)
    routed = await router.chat("g", MESSAGES, {})
    assert routed.attempts == 1
    assert backends["a"].calls + backends["b"].calls == 1


async def test_hedged_stream_keeps_the_first_to_send_a_chunk() -> None:
    router, backends = make_router({"g": [{"name": "a"}, {"name": "b"}]}, hedge_after_ms=30)
    calls = first_call_does(backends, "hang")
    with anyio.fail_after(5):
        routed = await router.chat("g", MESSAGES, {}, stream=True)
        chunks = [c async for c in routed.result]
    slow, fast = calls
    assert text_of(chunks[0]) == fast
    assert backends[slow].cancelled == 1


async def test_hedge_failure_of_one_waits_for_the_other() -> None:
    router, backends = make_router({"g": [{"name": "a"}, {"name": "b"}]}, hedge_after_ms=20)
    # The first is slow and then fails; the hedge answers a little later.
    calls = first_call_does(backends, ("fail-later", 0.1), 0.3)
    with anyio.fail_after(5):
        routed = await router.chat("g", MESSAGES, {})
    assert served_by(routed.result) == calls[1]
    assert routed.attempts == 2


# -- library API and settings --------------------------------------------------------------


def test_sync_library_api() -> None:
    router, _backends = make_router({"g": [{"name": "a"}]})
    assert served_by(router.completion("g", MESSAGES)) == "a"
    chunks = list(router.completion("g", MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a done"
    assert router.embedding("g", ["x"]).data[0].embedding == [1.0, 2.0]
    assert router.image_generation("a cat", "g").data[0].url == "https://img/a"
    assert router.state.in_flight("g/0") == 0


async def test_async_library_api_and_gateway_router_export() -> None:
    assert gateway.Router is Router and "Router" in gateway.__all__
    router, _ = make_router({"g": [{"name": "a"}]})
    response = await router.acompletion("g", MESSAGES, temperature=0.2)
    assert response.model == "g"
    embedding = await router.aembedding("g", "text")
    assert embedding.model == "g"
    image = await router.aimage_generation("a cat", model="g")
    assert image.data[0].url == "https://img/a"
    with pytest.raises(NotFoundError) as info:
        await router.acompletion("nope", MESSAGES)
    assert info.value.code == "model_not_found"


async def test_handler_sees_request_params_and_deployment_params() -> None:
    seen: dict[str, Any] = {}

    class Recorder(CustomLLM):
        async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
            seen.update(kwargs)
            return "ok"

    router = Router(
        [{"model_name": "g", "litellm_params": {"model": "rec/m", "weight": 2, "custom": 1}}],
        custom_providers={"rec": Recorder()},
    )
    await router.acompletion("g", MESSAGES, temperature=0.5, extra_headers={"x-a": "1"})
    assert seen["optional_params"] == {"temperature": 0.5}
    assert seen["litellm_params"]["custom"] == 1
    assert seen["headers"] == {"x-a": "1"}


@pytest.mark.parametrize(
    ("settings", "key", "problem"),
    [
        ({"num_retries": -1}, "router_settings.num_retries", ">= 0"),
        ({"num_retriez": 1}, "router_settings.num_retriez", "did you mean 'num_retries'"),
        ({"routing_strategy": "fastest"}, "router_settings.routing_strategy", "least-busy"),
        ({"fallbacks": [{"g": ["missing"]}]}, "router_settings.fallbacks", "'missing'"),
        ({"hedge_after_ms": {"nope": 10}}, "router_settings.hedge_after_ms", "'nope'"),
        ({"max_in_flight": 0}, "router_settings.max_in_flight", ">= 1"),
        ({"cooldown_time": "soon"}, "router_settings.cooldown_time", "number"),
    ],
)
def test_bad_settings_are_clear_errors(settings: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(RouterConfigError) as info:
        make_router({"g": [{"name": "a"}]}, **settings)
    assert info.value.config_key == key
    assert problem in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("param", "value"),
    [("rpm", 0), ("tpm", "lots"), ("weight", -1), ("max_parallel_requests", 1.5)],
)
def test_bad_deployment_limits_are_clear_errors(param: str, value: Any) -> None:
    with pytest.raises(RouterConfigError) as info:
        make_router({"g": [{"name": "a"}, {"name": "b", param: value}]})
    assert info.value.config_key == f"model_list[1].litellm_params.{param}"


def test_litellm_settings_are_accepted() -> None:
    router, _ = make_router(
        {"g": [{"name": "a"}]},
        routing_strategy="usage-based-routing-v2",
        redis_host="localhost",
        retry_after=2,
        routing_strategy_args={"lowest_latency_buffer": 0.5},
    )
    assert router.settings.routing_strategy == "usage-based"
    assert router.settings.retry_backoff == 2
    assert router.settings.latency_buffer == 0.5


def test_settings_from_environment_strings() -> None:
    router, _ = make_router({"g": [{"name": "a", "rpm": "100"}]}, num_retries="2")
    assert router.settings.num_retries == 2


def test_state_is_replaceable() -> None:
    # The router counts in the state it is given (where a shared store could stand in).
    clock = Clock()
    state = RouterState()
    router, _ = make_router(
        {"g": [{"name": "a", "rpm": 100}, {"name": "b", "rpm": 100}]}, state=state, clock=clock
    )
    router.completion("g", MESSAGES)
    assert router.state is state
    # One request and its 10 tokens, counted for the deployment that served it.
    assert sorted(state.usage(f"g/{i}", clock()) for i in (0, 1)) == [(0, 0), (1, 10)]
    assert state.total_in_flight == 0 and state.in_flight("g/0") == state.in_flight("g/1") == 0
