"""``GET /router/state``: each deployment as the router sees it, the answer to "why is
this deployment not getting traffic"."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from .deployments import Group
from .state import WINDOW, RouterState

__all__ = ["report"]


def report(
    groups: Iterable[Group], state: RouterState, clock: Callable[[], float]
) -> list[dict[str, Any]]:
    now = clock()
    wall = time.time()
    out = []
    for group in groups:
        for d in group.deployments:
            key = d.id
            cooling = state.cooldown_remaining(key, now)
            requests, tokens = state.usage(key, now)
            out.append(
                {
                    "deployment": key,
                    "model_group": group.name,
                    "in_flight": state.in_flight(key),
                    "max_parallel_requests": d.max_parallel,
                    # Wall-clock seconds since the epoch (the router's clock is monotonic).
                    "cooling_down_until": wall + cooling if cooling > 0 else None,
                    "cooldown_remaining_s": cooling if cooling > 0 else None,
                    "recent_failures": state.recent_failures(key, now),
                    "failure_window_s": WINDOW,
                    # Moving averages; kept by the latency-based strategy only.
                    "latency_avg_s": state.latency(key),
                    "ttft_avg_s": state.first_token_latency(key),
                    "rpm_used": requests,
                    "rpm_limit": d.rpm,
                    "tpm_used": tokens,
                    "tpm_limit": d.tpm,
                    "unavailable": d.error.message if d.error is not None else None,
                }
            )
    return out
