"""Hedging: when a group's first attempt has not answered within ``hedge_after_ms``, ask
another deployment too; the first answer wins and the other attempt is cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ..errors import GatewayError, as_gateway_error
from .deployments import Deployment
from .streams import discard

__all__ = ["hedged"]


async def hedged(
    first: Deployment,
    hedge_after: float,
    attempt: Callable[[Deployment], Awaitable[Any]],
    second: Callable[[], Deployment | None],
) -> tuple[Any, Deployment]:
    """Run ``attempt`` on ``first``; after ``hedge_after`` seconds without an answer, also
    on the deployment ``second()`` takes (if any). The first answer and its deployment."""
    won: list[tuple[Any, Deployment]] = []
    errors: list[GatewayError] = []
    settled = anyio.Event()
    running = 1

    async def run(d: Deployment, scope: anyio.CancelScope) -> None:
        nonlocal running
        try:
            result = await attempt(d)
        except Exception as exc:
            errors.append(as_gateway_error(exc))
            running -= 1
            if running == 0:
                settled.set()
            return
        if won:
            await discard(result)
            return
        won.append((result, d))
        settled.set()
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, first, tg.cancel_scope)
        with anyio.move_on_after(hedge_after):
            await settled.wait()
        if not settled.is_set():
            other = second()
            if other is not None:
                running += 1
                tg.start_soon(run, other, tg.cancel_scope)
        await settled.wait()
        tg.cancel_scope.cancel()
    if won:
        return won[0]
    raise errors[-1]
