"""One error hierarchy: status codes, OpenAI types, handler errors, unknown providers, timeouts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

import gateway
from gateway import errors


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The library runs on either anyio backend."""
    return request.param


USER = [{"role": "user", "content": "hi"}]


def register(name: str, handler: Any) -> None:
    gateway.custom_provider_map = [{"provider": name, "custom_handler": handler}]


# The hierarchy


@pytest.mark.parametrize(
    ("cls", "status", "type_"),
    [
        (gateway.BadRequestError, 400, "invalid_request_error"),
        (gateway.ContextWindowExceededError, 400, "invalid_request_error"),
        (gateway.AuthenticationError, 401, "authentication_error"),
        (gateway.PermissionDeniedError, 403, "permission_error"),
        (gateway.NotFoundError, 404, "invalid_request_error"),
        (gateway.Timeout, 408, "timeout_error"),
        (gateway.UnprocessableEntityError, 422, "invalid_request_error"),
        (gateway.RateLimitError, 429, "rate_limit_error"),
        (gateway.InternalServerError, 500, "internal_server_error"),
        (gateway.BadGatewayError, 502, "upstream_error"),
        (gateway.APIConnectionError, 502, "api_connection_error"),
        (gateway.ServiceUnavailableError, 503, "service_unavailable_error"),
        (gateway.GatewayTimeoutError, 504, "timeout_error"),
    ],
)
def test_hierarchy(cls: type[gateway.GatewayError], status: int, type_: str) -> None:
    error = cls("bad thing")
    assert isinstance(error, gateway.GatewayError)
    assert isinstance(error, Exception)
    assert (error.status_code, error.type, error.message, str(error)) == (
        status,
        type_,
        "bad thing",
        "bad thing",
    )
    body = error.to_dict()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == "bad thing"
    assert body["error"]["type"] == type_
    assert errors.error_for_status(status, "x").status_code == status


def test_retryable_classification() -> None:
    for cls in (gateway.RateLimitError, gateway.Timeout, gateway.InternalServerError,
                gateway.BadGatewayError, gateway.ServiceUnavailableError):  # fmt: skip
        assert cls("x").retryable
    for cls in (gateway.BadRequestError, gateway.AuthenticationError, gateway.NotFoundError):
        assert not cls("x").retryable
    assert gateway.ContextWindowExceededError("x").code == "context_length_exceeded"


@pytest.mark.parametrize(
    ("status", "type_", "retryable"),
    [
        (429, "rate_limit_error", True),
        (401, "authentication_error", False),
        (404, "invalid_request_error", False),
        (418, "invalid_request_error", False),
        (500, "internal_server_error", True),
        (503, "service_unavailable_error", True),
        (599, "internal_server_error", True),
    ],
)
def test_custom_llm_error_keeps_its_status(status: int, type_: str, retryable: bool) -> None:
    error = gateway.CustomLLMError(status_code=status, message="nope")
    assert isinstance(error, gateway.GatewayError)
    assert (error.status_code, error.type, error.retryable) == (status, type_, retryable)
    assert error.message == "nope"
    assert error.to_dict()["error"]["code"] == str(status)
    # Positional, as the seed's spec defines it.
    assert gateway.CustomLLMError(status, "nope").status_code == status


async def test_custom_llm_error_from_a_handler_keeps_429() -> None:
    class Limited(gateway.CustomLLM):
        async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
            raise gateway.CustomLLMError(status_code=429, message="slow down")

    register("limited", Limited())
    for call in (
        lambda: gateway.completion("limited/m", USER),
        lambda: anyio.from_thread.run(gateway.acompletion, "limited/m", USER),
    ):
        with pytest.raises(gateway.CustomLLMError) as info:
            await anyio.to_thread.run_sync(call)
        assert info.value.status_code == 429
        assert info.value.type == "rate_limit_error"


def test_foreign_exceptions_are_mapped() -> None:
    class WithStatus(Exception):
        status_code = 401

    assert errors.as_gateway_error(WithStatus("who?")).status_code == 401
    assert isinstance(errors.as_gateway_error(WithStatus()), gateway.AuthenticationError)
    mapped = errors.as_gateway_error(ValueError("broken"))
    assert (mapped.status_code, mapped.message) == (500, "broken")
    assert errors.as_gateway_error(TimeoutError()).status_code == 408
    error = gateway.RateLimitError("x")
    assert errors.as_gateway_error(error) is error


def test_handler_exception_becomes_a_500_with_its_cause() -> None:
    original = KeyError("missing")

    class Broken(gateway.CustomLLM):
        def completion(self, *args: Any, **kwargs: Any) -> Any:
            raise original

    register("broken", Broken())
    with pytest.raises(gateway.InternalServerError) as info:
        gateway.completion("broken/m", USER)
    assert info.value.__cause__ is original


def test_invalid_handler_result_is_a_bad_gateway_error() -> None:
    class Odd(gateway.CustomLLM):
        def completion(self, *args: Any, **kwargs: Any) -> Any:
            return 42

        def embedding(self, *args: Any, **kwargs: Any) -> Any:
            return {"data": "not a list"}

    register("odd", Odd())
    with pytest.raises(gateway.BadGatewayError, match="int"):
        gateway.completion("odd/m", USER)
    with pytest.raises(gateway.BadGatewayError, match="invalid embedding"):
        gateway.embedding("odd/m", "x")


# Unknown providers and bad model strings


def test_unknown_provider_names_the_registered_ones() -> None:
    class H(gateway.CustomLLM):
        def completion(self, *args: Any, **kwargs: Any) -> Any:
            return "x"

    register("my-custom-llm", H())
    gateway.register_provider("plugged-in", H())
    for call in (
        lambda: gateway.completion("nope/model", USER),
        lambda: gateway.get_llm_provider("nope/model"),
        lambda: gateway.embedding("nope/model", "x"),
    ):
        with pytest.raises(gateway.BadRequestError) as info:
            call()
        message = info.value.message
        assert "'nope'" in message
        for name in ("my-custom-llm", "plugged-in", "mock"):
            assert name in message
        assert info.value.status_code == 400
        assert info.value.param == "model"


async def test_model_without_provider_prefix_is_a_clear_error() -> None:
    with pytest.raises(gateway.BadRequestError, match="<provider>/<model>"):
        await gateway.acompletion("gpt-4o", USER)
    with pytest.raises(gateway.BadRequestError, match="model is required"):
        gateway.image_generation("a prompt")


# Timeouts


async def test_timeout_cancels_an_async_handler() -> None:
    state: list[str] = []

    class Stuck(gateway.CustomLLM):
        async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
            try:
                await anyio.sleep(30)
            finally:
                state.append("finally")
            return "late"

    register("stuck", Stuck())
    start = time.monotonic()
    with pytest.raises(gateway.Timeout) as info:
        await gateway.acompletion("stuck/m", USER, timeout=0.2)
    assert time.monotonic() - start < 5
    assert info.value.status_code == 408
    assert info.value.type == "timeout_error"
    assert state == ["finally"]


async def test_timeout_cancels_a_stalled_async_stream() -> None:
    state: list[str] = []

    class Stalls(gateway.CustomLLM):
        async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
            try:
                yield "first"
                await anyio.sleep(30)
                yield "never"
            finally:
                state.append("finally")

    register("stalls", Stalls())
    got: list[Any] = []
    with pytest.raises(gateway.Timeout):
        async for chunk in await gateway.acompletion("stalls/m", USER, stream=True, timeout=0.2):
            got.append(chunk)
    assert gateway.stream_chunk_builder(got).choices[0].message.content == "first"
    assert state == ["finally"]


async def test_timeout_bounds_each_wait_not_the_whole_stream() -> None:
    class Steady(gateway.CustomLLM):
        async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
            for i in range(8):
                await anyio.sleep(0.05)
                yield str(i)

    register("steady", Steady())
    stream = await gateway.acompletion("steady/m", USER, stream=True, timeout=0.3)
    chunks = [c async for c in stream]
    assert gateway.stream_chunk_builder(chunks).choices[0].message.content == "01234567"


class Blocking(gateway.CustomLLM):
    """A sync handler stuck in blocking code until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        self.release.wait(10)
        return "late"

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        yield "first"
        self.release.wait(10)
        yield "late"

    def embedding(self, *args: Any, **kwargs: Any) -> Any:
        self.release.wait(10)
        return [[0.0]]


@pytest.fixture
def blocking() -> Iterator[Blocking]:
    handler = Blocking()
    register("blocking", handler)
    yield handler
    handler.release.set()  # let the abandoned threads finish


async def test_sync_handler_is_abandoned_by_acompletion(blocking: Blocking) -> None:
    start = time.monotonic()
    with pytest.raises(gateway.Timeout) as info:
        await gateway.acompletion("blocking/m", USER, timeout=0.2)
    assert info.value.status_code == 408
    assert time.monotonic() - start < 5


def test_sync_handler_is_abandoned_by_completion(blocking: Blocking) -> None:
    start = time.monotonic()
    with pytest.raises(gateway.Timeout):
        gateway.completion("blocking/m", USER, timeout=0.2)
    with pytest.raises(gateway.Timeout):
        gateway.embedding("blocking/m", "x", timeout=0.2)
    assert time.monotonic() - start < 5


async def test_stalled_sync_stream_is_abandoned(blocking: Blocking) -> None:
    start = time.monotonic()
    got: list[Any] = []
    with pytest.raises(gateway.Timeout):
        async for chunk in await gateway.acompletion("blocking/m", USER, stream=True, timeout=0.2):
            got.append(chunk)
    assert gateway.stream_chunk_builder(got).choices[0].message.content == "first"

    got.clear()
    with pytest.raises(gateway.Timeout):
        for chunk in gateway.completion("blocking/m", USER, stream=True, timeout=0.2):
            got.append(chunk)
    assert gateway.stream_chunk_builder(got).choices[0].message.content == "first"
    assert time.monotonic() - start < 8


def test_sync_call_cancels_an_async_only_handler() -> None:
    finished = threading.Event()

    class Stuck(gateway.CustomLLM):
        async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
            try:
                await anyio.sleep(30)
            finally:
                finished.set()

        async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
            try:
                yield "first"
                await anyio.sleep(30)
            finally:
                finished.set()

    register("stuck", Stuck())
    start = time.monotonic()
    with pytest.raises(gateway.Timeout):
        gateway.completion("stuck/m", USER, timeout=0.2)
    assert finished.wait(5), "the async handler was not cancelled"

    finished.clear()
    with pytest.raises(gateway.Timeout):
        list(gateway.completion("stuck/m", USER, stream=True, timeout=0.2))
    assert finished.wait(5), "the async stream was not cancelled"
    assert time.monotonic() - start < 10


async def test_image_timeout() -> None:
    class SlowImages(gateway.CustomLLM):
        async def aimage_generation(self, *args: Any, **kwargs: Any) -> Any:
            await anyio.sleep(30)

    register("img", SlowImages())
    with pytest.raises(gateway.Timeout):
        await gateway.aimage_generation("p", model="img/m", timeout=0.2)


@pytest.mark.parametrize("bad", ["soon", -1, 0, float("nan"), float("inf"), [1]])
async def test_bad_timeout_is_a_400(bad: Any) -> None:
    register("p", Blocking())
    for call in (
        lambda: gateway.completion("p/m", USER, timeout=bad),
        lambda: gateway.embedding("p/m", "x", timeout=bad),
        lambda: gateway.completion("p/m", USER, mock_response="x", timeout=bad),
    ):
        with pytest.raises(gateway.BadRequestError, match="timeout") as info:
            call()
        assert info.value.param == "timeout"
    with pytest.raises(gateway.BadRequestError, match="timeout"):
        await gateway.acompletion("p/m", USER, timeout=bad, stream=True)


def test_timeout_forms_reach_the_handler_as_seconds() -> None:
    seen: list[Any] = []

    class Records(gateway.CustomLLM):
        def completion(self, *args: Any, **kwargs: Any) -> Any:
            seen.append(kwargs["timeout"])
            return "ok"

    register("p", Records())
    gateway.completion("p/m", USER, timeout="30")
    gateway.completion("p/m", USER, timeout=httpx.Timeout(20.0, connect=5.0))
    gateway.completion("p/m", USER, timeout=7)
    assert seen == [30.0, 20.0, 7.0]
    assert all(type(t) is float for t in seen)


def test_messages_must_be_a_list() -> None:
    register("p", Blocking())
    with pytest.raises(gateway.BadRequestError, match="messages must be a list") as info:
        gateway.completion("p/m", "hello")  # type: ignore[arg-type]
    assert info.value.param == "messages"
