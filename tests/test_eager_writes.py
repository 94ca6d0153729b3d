"""aiohttp's request writes started eagerly on Python 3.11 (``gateway._pool``).

The task factory on its own (a coroutine that finishes at once, one that waits, one
cancelled while it waits, one that fails, any other coroutine); aiohttp's real requests
on a loop that has it (the write done before ``send`` goes on, a body larger than the
socket's buffer finished by a task); and the ``gateway`` command's app, which sets it,
proxying JSON, streams and a large request to a real upstream, and a clean stop.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import msgspec
import pytest
from aiohttp.client_reqrep import ClientRequest

import gateway
from gateway._pool import eager_factory, eager_request_writes
from gateway.app import create_app
from tests.fake_upstream import FakeUpstream, run_fake_upstream, serve_in_thread

needs_311 = pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="from Python 3.12 aiohttp starts its writes eagerly"
)
var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outside")


async def _write(log: list[str], wait: asyncio.Future[str] | None = None) -> str:
    """What the factory runs eagerly in these tests (its code stands for write_bytes')."""
    log.append("started")
    var.set("inside")
    if wait is not None:
        try:
            log.append(await wait)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        finally:
            log.append("finally")
    log.append("done")
    return "result"


FACTORY = eager_factory(_write.__code__)


async def test_a_write_that_finishes_at_once_gets_a_done_future_and_no_task() -> None:
    loop = asyncio.get_running_loop()
    log: list[str] = []
    before = len(asyncio.all_tasks())
    future = FACTORY(loop, _write(log))
    # Run before the factory returned, in a context of its own.
    assert log == ["started", "done"] and var.get() == "outside"
    assert not isinstance(future, asyncio.Task) and future.done()
    assert future.result() == "result"
    assert len(asyncio.all_tasks()) == before


async def test_a_write_that_waits_goes_on_in_a_task() -> None:
    loop = asyncio.get_running_loop()
    log: list[str] = []
    wait: asyncio.Future[str] = loop.create_future()
    task = FACTORY(loop, _write(log, wait))
    assert log == ["started"]  # up to its first suspension, at once
    assert isinstance(task, asyncio.Task) and not task.done()
    await asyncio.sleep(0)
    assert not task.done()
    wait.set_result("woken")  # the value reaches the coroutine where it waits
    assert await task == "result"
    assert log == ["started", "woken", "finally", "done"]


async def test_a_write_cancelled_while_it_waits_sees_the_cancellation() -> None:
    loop = asyncio.get_running_loop()
    log: list[str] = []
    wait: asyncio.Future[str] = loop.create_future()
    task = FACTORY(loop, _write(log, wait))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled() and wait.cancelled()
    assert log == ["started", "cancelled", "finally"]


async def test_a_write_cancelled_before_its_task_ran_is_closed_at_once() -> None:
    loop = asyncio.get_running_loop()
    log: list[str] = []
    wait: asyncio.Future[str] = loop.create_future()
    task = FACTORY(loop, _write(log, wait))
    task.cancel()  # as aiohttp's terminate() may, before the loop ran the task
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["started", "finally"]  # its cleanup ran, not left to the collector


async def test_a_write_that_fails_at_once_gets_a_failed_future(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise ConnectionResetError("gone")

    loop = asyncio.get_running_loop()
    future = eager_factory(fails.__code__)(loop, fails())
    assert future.done() and isinstance(future.exception(), ConnectionResetError)
    del future
    import gc

    gc.collect()
    assert "never retrieved" not in caplog.text  # aiohttp drops a done writer


async def test_other_coroutines_get_the_loops_own_task_not_started_yet() -> None:
    loop = asyncio.get_running_loop()
    log: list[str] = []

    async def other() -> str:
        log.append(var.get())
        return "other"

    ctx = contextvars.copy_context()
    ctx.run(var.set, "given")
    task = FACTORY(loop, other(), context=ctx)
    assert type(task) is asyncio.Task and log == []
    assert await task == "other" and log == ["given"]  # in the context it was given


@needs_311
async def test_installed_only_where_the_loop_has_no_factory() -> None:
    loop = asyncio.get_running_loop()
    assert loop.get_task_factory() is None
    try:
        assert eager_request_writes(loop) is True
        installed = loop.get_task_factory()
        assert installed is not None
        assert eager_request_writes(loop) is False  # its own, or anyone else's: kept
        assert loop.get_task_factory() is installed
    finally:
        loop.set_task_factory(None)


class _Recording:
    """The eager factory, noting what each aiohttp write got."""

    def __init__(self) -> None:
        self.factory = eager_factory(ClientRequest.write_bytes.__code__)
        self.writes: list[asyncio.Future[Any]] = []

    def __call__(self, loop: Any, coro: Any, context: Any = None) -> asyncio.Future[Any]:
        made = self.factory(loop, coro, context)
        if getattr(coro, "cr_code", None) is ClientRequest.write_bytes.__code__:
            self.writes.append(made)
        return made


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with run_fake_upstream() as server:
        yield server


@needs_311
async def test_aiohttp_writes_a_request_before_send_goes_on(upstream: FakeUpstream) -> None:
    loop = asyncio.get_running_loop()
    recording = _Recording()
    loop.set_task_factory(recording)
    try:
        async with aiohttp.ClientSession() as session:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(f"{upstream.base_url}/chat/completions", json=body) as r:
                assert r.status == 200
                assert (await r.json())["choices"][0]["message"]["content"]
            # A body that waits while it is written (a file-like one is read in a worker
            # thread): a task finishes the write, and the upstream gets every byte.
            big = msgspec.json.encode(
                {**body, "messages": [{"role": "user", "content": "x" * (4 * 2**20)}]}
            )
            async with session.post(
                f"{upstream.base_url}/chat/completions",
                data=io.BytesIO(big),
                headers={"content-type": "application/json"},
            ) as r:
                assert r.status == 200
    finally:
        loop.set_task_factory(None)
    small, large = recording.writes
    # If aiohttp renamed write_bytes, nothing would be recorded (and the factory moot).
    assert not isinstance(small, asyncio.Task) and small.done() and small.result() is None
    assert isinstance(large, asyncio.Task) and large.done() and large.result() is None
    assert len(upstream.requests_seen[-1].body["messages"][0]["content"]) == 4 * 2**20


class _ViaHTTPClient(gateway.CustomLLM):
    """A handler calling its backend through ``gateway.http_client()`` (aiohttp)."""

    async def acompletion(self, model: str, messages: Any, api_base: str, **kwargs: Any) -> Any:
        answer = await gateway.http_client().post(
            f"{api_base}/chat/completions", json={"model": model, "messages": messages}
        )
        answer.raise_for_status()
        return gateway.ModelResponse(**answer.json())


def test_the_gateway_command_app_proxies_on_it(upstream: FakeUpstream) -> None:
    config = {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {
                    "model": "openai/m",
                    "api_base": upstream.base_url,
                    "api_key": "k",
                },
            },
            {
                "model_name": "h",
                "litellm_params": {"model": "via-client/m", "api_base": upstream.base_url},
            },
        ],
        "litellm_settings": {
            "custom_provider_map": [{"provider": "via-client", "custom_handler": _ViaHTTPClient()}]
        },
        # The collector of this test process is left alone.
        "gateway_settings": {"gc_tuning": False},
    }
    app = create_app(config)
    app.owns_process = True  # as the gateway command sets it
    messages = [{"role": "user", "content": "hi"}]
    with serve_in_thread(app, loop="uvloop", http="httptools") as handle:
        assert handle.loop is not None
        url = f"{handle.url}/v1/chat/completions"
        with httpx.Client(timeout=30) as client:
            # The built-in provider's client is not aiohttp: no factory for it.
            answer = client.post(url, json={"model": "m", "messages": messages})
            assert answer.status_code == 200, answer.text
            assert handle.loop.get_task_factory() is None
            answer = client.post(url, json={"model": "h", "messages": messages})
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"]
            factory = handle.loop.get_task_factory()
            assert (factory is not None) == (sys.version_info < (3, 12))
            # Under aiohttp's 1 MB (over it, it warns about bodies sent as bytes).
            big = [{"role": "user", "content": "x" * 900_000}]
            answer = client.post(url, json={"model": "h", "messages": big})
            assert answer.status_code == 200, answer.text
            assert len(upstream.requests_seen[-1].body["messages"][0]["content"]) == 900_000
    # A mounted app (the default) leaves the loop's factory alone; so does the command's
    # app on a loop no aiohttp session runs on (each task would pay for it).
    mock_only = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "mock/m"}}],
        "gateway_settings": {"gc_tuning": False},
    }
    command_app = create_app(mock_only)
    command_app.owns_process = True
    for app, model in ((create_app(config), "h"), (command_app, "m")):
        with serve_in_thread(app, loop="uvloop", http="httptools") as handle:
            answer = httpx.post(
                f"{handle.url}/v1/chat/completions",
                json={"model": model, "messages": messages},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            assert handle.loop is not None and handle.loop.get_task_factory() is None
