"""The app serving the current request, for code below the router that needs what the
app owns (its HTTP clients, its threads): one context variable, set by ``GatewayApp``
per request (and around provider start-up), unset in the library API."""

from __future__ import annotations

import contextvars
from typing import Any

__all__ = ["current_runtime"]

# The Runtime (gateway.app) serving this request; None in library calls.
current_runtime: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "gateway_runtime", default=None
)
