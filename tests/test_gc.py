"""The ``gateway`` command tunes the garbage collector of the process it owns, and only
that one (gateway/_gc.py): real subprocesses, one worker and two."""

from __future__ import annotations

import asyncio
import gc
import textwrap
from pathlib import Path

import anyio
import httpx
import msgspec

from gateway import create_app
from gateway._gc import YOUNG_THRESHOLD
from tests.test_cli import start, start_workers  # noqa: F401 (fixture)

# The handler answers with what its process's collector looks like.
HANDLER = """
import gc

from gateway import CustomLLM, completion


class GcState(CustomLLM):
    async def acompletion(self, model, messages, **kwargs):
        state = f"{gc.get_freeze_count()} {gc.get_threshold()[0]}"
        return completion(model=model, messages=messages, mock_response=state)


gc_state = GcState()
"""


def _config(folder: Path, tuning: bool | None) -> Path:
    (folder / "gc_state_handler.py").write_text(textwrap.dedent(HANDLER))
    settings = "" if tuning is None else f"gateway_settings: {{gc_tuning: {str(tuning).lower()}}}\n"
    path = folder / "config.yaml"
    path.write_text(
        "model_list:\n"
        "  - {model_name: gc, litellm_params: {model: gc/state}}\n"
        "litellm_settings:\n"
        "  custom_provider_map: [{provider: gc, custom_handler: gc_state_handler.gc_state}]\n"
        + settings
    )
    return path


def _state(base_url: str) -> tuple[int, int]:
    body = {"model": "gc", "messages": [{"role": "user", "content": "gc?"}]}
    answer = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=10).json()
    frozen, threshold = answer["choices"][0]["message"]["content"].split()
    return int(frozen), int(threshold)


def _one_worker(start, config: Path) -> str:  # noqa: F811
    server = start("--config", str(config), "--host", "127.0.0.1", "--port", "0")
    port = server.wait_for_line(r"^gateway: listening on http://127\.0\.0\.1:(\d+) ")[1]
    base_url = f"http://127.0.0.1:{port}"
    server.wait_until_live(base_url)
    return base_url


def test_the_command_freezes_startup_and_raises_the_young_threshold(start, tmp_path: Path) -> None:  # noqa: F811
    frozen, threshold = _state(_one_worker(start, _config(tmp_path, None)))
    # Everything imported and built at startup: tens of thousands of objects.
    assert frozen > 10_000
    assert threshold == YOUNG_THRESHOLD


def test_every_worker_is_tuned(start, tmp_path: Path) -> None:  # noqa: F811
    server, base_url = start_workers(
        start, "--config", str(_config(tmp_path, None)), "--workers", "2"
    )
    for _ in range(6):  # whichever worker answers
        frozen, threshold = _state(base_url)
        assert frozen > 10_000
        assert threshold == YOUNG_THRESHOLD
    assert server.stop() == 0  # the workers too, which a kill of the parent would leave


def test_gc_tuning_false_keeps_pythons_defaults(start, tmp_path: Path) -> None:  # noqa: F811
    frozen, threshold = _state(_one_worker(start, _config(tmp_path, False)))
    assert frozen == 0
    assert threshold == 700


async def test_a_mounted_app_leaves_the_hosts_collector_alone(tmp_path: Path) -> None:
    before = gc.get_threshold()
    app = create_app(_config(tmp_path, True))
    async with app.lifespan_context(app):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before


HELD = """
import asyncio
import gc

from gateway import CustomLLM, completion


class Held(CustomLLM):
    async def acompletion(self, model, messages, **kwargs):
        if model == "collections":  # young collections so far
            answer = str(gc.get_stats()[0]["collections"])
        else:
            await asyncio.sleep(0.5)  # in flight alongside the others
            answer = "held"
        return completion(model=model, messages=messages, mock_response=answer)


held = Held()
"""


async def test_requests_in_flight_at_256_connections_trigger_no_young_collection(
    start,  # noqa: F811
    tmp_path: Path,
) -> None:
    # What 256 requests in flight keep alive (connections, scopes, tasks, frames) reached
    # the young threshold of 10,000, and every collection walked all of it again.
    (tmp_path / "held_handler.py").write_text(textwrap.dedent(HELD))
    config = tmp_path / "config.yaml"
    config.write_text(
        "model_list:\n"
        "  - {model_name: held, litellm_params: {model: held/held}}\n"
        "  - {model_name: collections, litellm_params: {model: held/collections}}\n"
        "litellm_settings:\n"
        "  custom_provider_map: [{provider: held, custom_handler: held_handler.held}]\n"
    )
    base_url = _one_worker(start, config)
    port = int(base_url.rsplit(":", 1)[1])

    async def ask(model: str) -> str:
        # A raw HTTP/1.1 request on a connection of its own: 256 of them from httpx
        # cost ~2 s of this process's CPU, which would thin out the requests in flight.
        body = msgspec.json.encode(
            {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body)
        )
        answer = await reader.read()
        writer.close()
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), answer
        return str(msgspec.json.decode(payload)["choices"][0]["message"]["content"])

    async with anyio.create_task_group() as tg:  # what the first requests make, made
        for _ in range(3):
            tg.start_soon(ask, "held")
    before = int(await ask("collections"))
    async with anyio.create_task_group() as tg:
        for _ in range(256):
            tg.start_soon(ask, "held")
    after = int(await ask("collections"))
    assert after == before
