"""``gateway._aio.within``: each call's deadline in its loop's shared heap, one timer."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from gateway import _aio
from gateway._aio import within


async def _deadlines_heap() -> int:
    return len(_aio._here.deadlines._heap)


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_deadlines_fire_in_order_whatever_order_they_came(loop_factory: object) -> None:
    async def main() -> list[tuple[str, float]]:
        fired: list[tuple[str, float]] = []
        started = time.monotonic()

        async def call(name: str, timeout: float) -> None:
            try:
                await within(timeout, asyncio.sleep(10))
            except TimeoutError:
                fired.append((name, time.monotonic() - started))

        # The long deadline first, so the shorter one must re-arm the shared timer.
        await asyncio.gather(call("long", 0.6), call("short", 0.2), call("mid", 0.4))
        return fired

    loop = loop_factory()  # type: ignore[operator]
    try:
        fired = loop.run_until_complete(main())
    finally:
        loop.close()
    assert [name for name, _ in fired] == ["short", "mid", "long"]
    for (_, at), expected in zip(fired, (0.2, 0.4, 0.6), strict=True):
        assert expected - 0.01 <= at < expected + 0.5


async def test_an_answer_in_time_is_returned_and_leaves_no_live_deadline() -> None:
    async def answer() -> str:
        await asyncio.sleep(0)
        return "ok"

    for _ in range(1000):
        assert await within(30, answer()) == "ok"
    # Ended deadlines are dropped in bulk once they outnumber the live ones.
    assert await _deadlines_heap() <= 130
    # ... and a deadline still fires after all of them.
    with pytest.raises(TimeoutError):
        await within(0.05, asyncio.sleep(5))


async def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    task = asyncio.ensure_future(within(30, asyncio.sleep(5)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_loop_s_heap_is_not_another_loop_s() -> None:
    await within(1, asyncio.sleep(0))
    mine = _aio._here.deadlines

    def other_loop() -> object:
        async def main() -> object:
            await within(1, asyncio.sleep(0))
            return _aio._here.deadlines

        return asyncio.run(main())

    theirs = await asyncio.to_thread(other_loop)
    assert theirs is not mine and theirs.loop is not mine.loop  # type: ignore[attr-defined]
