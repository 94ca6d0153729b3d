"""Model groups: which deployment serves a request for a ``model_name``, and what happens
when it fails, is slow, or is full.

Several ``model_list`` entries with one ``model_name`` form a group. A request picks a
deployment by the routing strategy, runs under its timeouts, is retried (another
deployment when there is one), falls back to other groups, and waits in a bounded queue
when everything is busy. Deployments that keep failing cool down for a while. All of it is
set with ``router_settings`` (config.yaml; decoded into ``gateway.config.RouterSettings``)
or keyword arguments of ``Router``.

Where each concept lives:

- ``deployments``: deployments and groups, built once from ``model_list``;
- ``strategies``: which free deployment takes a request;
- ``admission``: slots, ``max_in_flight`` and the bounded wait queue;
- ``policy``: cooldowns, retry delays, fallbacks (what failures teach);
- ``routing``: one request through a group: retries, hedging, fallbacks, ``max_in_flight``;
- ``attempts``: one call on one deployment, its timeouts and bookkeeping;
- ``hedging``: a second attempt when the first is slow;
- ``streams``: ``RoutedStream``, a stream whose first chunk has arrived;
- ``state``: ``RouterState``, the counters, in one object a shared store could replace;
- ``router``: ``Router``, which builds the above and hands them requests, and its public
  APIs;
- ``events``, ``report``, ``redis_state``: counters for /metrics, ``GET /router/state``,
  the router's state shared through Redis.
"""

from __future__ import annotations

from ..config import Deployment as DeploymentSpec
from ..config import RouterConfigError, RouterSettings
from .router import Routed, Router
from .state import RouterState
from .streams import RoutedStream

__all__ = [
    "DeploymentSpec",
    "Routed",
    "RoutedStream",
    "Router",
    "RouterConfigError",
    "RouterSettings",
    "RouterState",
]
