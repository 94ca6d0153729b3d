"""Sync handlers on worker threads: a true cap, a budget per model, no thread kept alive.

Python cannot stop a thread: a sync handler that hangs keeps its thread after its
caller gave up. These tests hang handlers on purpose against a real uvicorn server on
loopback (and the real CLI) and check that hung calls hold their slots, that other
models still get threads, that /metrics shows them, and that SIGTERM still ends the
process.
"""

from __future__ import annotations

import functools
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from test_cli import Server

import gateway
from gateway.app import create_app
from tests.fake_upstream import serve_in_thread


class Hung(gateway.CustomLLM):
    """A sync handler that blocks until released, counting the calls inside it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.inside = 0
        self.peak = 0

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
        try:
            self.release.wait(30)
        finally:
            with self.lock:
                self.inside -= 1
        return gateway.completion(model="x", mock_response="released")


class Quick(gateway.CustomLLM):
    def completion(self, *args: Any, **kwargs: Any) -> Any:
        return gateway.completion(model="x", mock_response="quick")


def config(hung: Hung, **settings: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": "hung", "litellm_params": {"model": "hung/m"}},
            {"model_name": "quick", "litellm_params": {"model": "quick/m"}},
        ],
        "litellm_settings": {
            "custom_provider_map": [
                {"provider": "hung", "custom_handler": hung},
                {"provider": "quick", "custom_handler": Quick()},
            ]
        },
        "gateway_settings": settings,
    }


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def gauges(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        name: float(value)
        for name, value in re.findall(r"^(gateway_sync_threads_\w+) (\S+)$", text, re.M)
    }


def wait_until(check: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


@pytest.fixture
def hung() -> Iterator[Hung]:
    handler = Hung()
    yield handler
    handler.release.set()


async def test_timed_out_calls_keep_their_slots_and_show_as_stuck(hung: Hung) -> None:
    app = create_app(config(hung, sync_worker_threads=4))
    with serve_in_thread(app) as server:
        before = threading.active_count()
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            for _ in range(3):  # 30 calls that each time out while their thread hangs
                replies = [
                    r
                    async for r in _gather(
                        client.post("/v1/chat/completions", json=chat("hung", timeout=0.2))
                        for _ in range(10)
                    )
                ]
                assert {r.status_code for r in replies} == {408}
        # The pool's size is a true cap: 4 threads in all, and this model may hold
        # half of them; its later calls waited for a slot instead of a new thread.
        assert hung.peak == 2
        assert threading.active_count() - before <= 2
        assert gauges(server.url) == {
            "gateway_sync_threads_busy": 2.0,
            "gateway_sync_threads_stuck": 2.0,
        }
        hung.release.set()
        wait_until(lambda: hung.inside == 0)
        wait_until(
            lambda: (
                gauges(server.url)
                == {"gateway_sync_threads_busy": 0.0, "gateway_sync_threads_stuck": 0.0}
            )
        )
        # The slots came back: the model answers again.
        r = httpx.post(f"{server.url}/v1/chat/completions", json=chat("hung"))
        assert r.json()["choices"][0]["message"]["content"] == "released"


async def _gather(requests: Iterator[Any]) -> Any:
    results: list[Any] = []

    async def one(request: Any) -> None:
        results.append(await request)

    async with anyio.create_task_group() as tg:
        for request in requests:
            tg.start_soon(one, request)
    for result in results:
        yield result


async def test_a_hung_model_leaves_threads_for_the_others(hung: Hung) -> None:
    app = create_app(config(hung, sync_worker_threads=4))
    with serve_in_thread(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            async with anyio.create_task_group() as tg:
                for _ in range(6):  # in flight, not timed out: they would take every thread
                    tg.start_soon(
                        functools.partial(
                            client.post, "/v1/chat/completions", json=chat("hung", timeout=20)
                        )
                    )
                with anyio.fail_after(5):
                    while hung.inside < 2:
                        await anyio.sleep(0.02)
                quick = await client.post("/v1/chat/completions", json=chat("quick", timeout=3))
                assert quick.status_code == 200, quick.text
                assert quick.json()["choices"][0]["message"]["content"] == "quick"
                assert hung.inside == 2
                hung.release.set()


def test_each_app_has_its_own_threads(hung: Hung) -> None:
    small = create_app(config(hung, sync_worker_threads=2))  # one thread per model
    create_app(config(Hung(), sync_worker_threads=64))  # a second app must not resize the first
    with serve_in_thread(small) as server:
        calls = [
            threading.Thread(
                target=httpx.post,
                args=(f"{server.url}/v1/chat/completions",),
                kwargs={"json": chat("hung", timeout=5), "timeout": 10},
            )
            for _ in range(4)
        ]
        for call in calls:
            call.start()
        wait_until(lambda: hung.inside == 1)
        time.sleep(0.3)
        assert hung.peak == 1
        hung.release.set()
        for call in calls:
            call.join()


def test_a_hung_sync_handler_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text(
        textwrap.dedent(
            """
            import time
            import gateway

            class Hangs(gateway.CustomLLM):
                def completion(self, *args, **kwargs):
                    time.sleep(3600)

            hangs = Hangs()
            """
        )
    )
    (tmp_path / "config.yaml").write_text(
        textwrap.dedent(
            """
            model_list:
              - model_name: hangs
                litellm_params: {model: hangs/m}
            litellm_settings:
              custom_provider_map:
                - {provider: hangs, custom_handler: handler.hangs}
            gateway_settings:
              graceful_timeout: 0.3
            """
        )
    )
    server = Server("--config", str(tmp_path / "config.yaml"), "--host", "127.0.0.1", "--port", "0")
    try:
        port = server.wait_for_line(r"listening on http://127.0.0.1:(\d+)").group(1)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        assert httpx.post(url, json=chat("hangs", timeout=0.3), timeout=10).status_code == 408
        # And one still in flight when the signal comes.
        caller = threading.Thread(
            target=lambda: httpx.post(url, json=chat("hangs"), timeout=30), daemon=True
        )
        caller.start()
        time.sleep(0.3)
        assert server.stop() == 0
    finally:
        server.kill()


def test_library_sync_calls_that_time_out_hold_their_slots(hung: Hung) -> None:
    gateway.register_provider("hung", hung)
    gateway.set_thread_limit(4)
    try:
        before = threading.active_count()
        # Three times the two slots a timed-out call may keep: without the cap, 6 inside.
        for _ in range(6):
            with pytest.raises(gateway.Timeout):
                gateway.completion("hung/m", [{"role": "user", "content": "hi"}], timeout=0.1)
        assert hung.peak == 2
        assert threading.active_count() - before <= 2
    finally:
        hung.release.set()
        wait_until(lambda: hung.inside == 0)
        gateway.set_thread_limit(gateway._threads.DEFAULT_THREAD_LIMIT)


def test_library_sync_streams_that_stall_hold_their_slots(hung: Hung) -> None:
    class StallingStream(gateway.CustomLLM):
        def streaming(self, *args: Any, **kwargs: Any) -> Iterator[str]:
            yield "first "
            hung.completion()  # hangs until released

    gateway.register_provider("stalls", StallingStream())
    gateway.set_thread_limit(4)
    try:
        before = threading.active_count()
        for _ in range(6):
            chunks = gateway.completion("stalls/m", [], stream=True, timeout=0.2)
            with pytest.raises(gateway.Timeout):
                for _chunk in chunks:
                    pass
        assert hung.peak == 2
        assert threading.active_count() - before <= 2
    finally:
        hung.release.set()
        wait_until(lambda: hung.inside == 0)
        gateway.set_thread_limit(gateway._threads.DEFAULT_THREAD_LIMIT)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_calls_given_up_before_they_start_give_their_slot_back() -> None:
    from gateway._threads import ThreadPool

    pool = ThreadPool(2, 2)
    ran: list[int] = []
    for i in range(20):  # cancelled at once: on trio before the thread starts
        with anyio.move_on_after(0):
            await pool.run(ran.append, i)
    with anyio.fail_after(5):
        while pool.busy:
            await anyio.sleep(0.01)
    assert pool.stuck == 0
    assert await pool.run(len, "ok") == 2  # every slot came back
