"""What the router did, counted for ``/metrics``, and each failed attempt logged once.

Counting happens on the paths where something went wrong or a hedge fired: a request
that succeeds at once pays nothing here.
"""

from __future__ import annotations

import logging

from ..errors import (
    CustomLLMError,
    GatewayError,
    InternalServerError,
    Timeout,
    error_for_status,
)

__all__ = ["RouterEvents"]

logger = logging.getLogger("gateway.router")


class RouterEvents:
    """Counts per (model group, deployment, event) and (model group, deployment, error
    class). Labels are config names and the gateway's own error classes: bounded."""

    __slots__ = ("counts", "errors")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.errors: dict[tuple[str, str, str], int] = {}

    def add(self, event: str, group: str, deployment: str = "") -> None:
        key = (group, deployment, event)
        self.counts[key] = self.counts.get(key, 0) + 1

    def failed(self, group: str, deployment: str, exc: BaseException) -> None:
        """An attempt on ``deployment`` failed: counted by class, logged once (with the
        traceback when the handler raised something unexpected)."""
        name = _class_name(exc)
        key = (group, deployment, name)
        self.errors[key] = self.errors.get(key, 0) + 1
        if isinstance(exc, Timeout):
            self.add("timeout", group, deployment)
        message = exc.message if isinstance(exc, GatewayError) else str(exc)
        if unexpected(exc):
            cause = exc.__cause__ or exc
            logger.error(
                "deployment %s of %s failed unexpectedly: %s",
                deployment,
                group,
                message,
                exc_info=(type(cause), cause, cause.__traceback__),
            )
            exc._gateway_logged = True  # type: ignore[attr-defined]
        else:
            status = getattr(exc, "status_code", "")
            logger.warning("deployment %s of %s failed: %s %s", deployment, group, status, message)


def _class_name(exc: BaseException) -> str:
    """The gateway's error class for ``exc``: a handler's ``CustomLLMError`` by its status
    (``ServiceUnavailableError`` for a 503), never a name a handler made up."""
    if isinstance(exc, CustomLLMError):
        exc = error_for_status(exc.status_code, "")
    kind = type(exc)
    return kind.__name__ if kind.__module__ == GatewayError.__module__ else "GatewayError"


def unexpected(exc: BaseException) -> bool:
    """A handler's own bug (any exception without a status), not an upstream's answer."""
    if getattr(exc, "internal", False):
        return True
    if not isinstance(exc, GatewayError):
        return True
    cause = exc.__cause__
    return (
        type(exc) is InternalServerError
        and cause is not None
        and not isinstance(cause, GatewayError)
        and getattr(cause, "status_code", None) is None
    )
