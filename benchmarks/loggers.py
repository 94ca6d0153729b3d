"""The logging callback of the chat scenario's gw-observed target.

Apart from the handlers so that ``benchmarks.handlers`` imports with the gateway of an
older commit (``--before``), which may have no callbacks.
"""

from __future__ import annotations

from typing import Any

from gateway.integrations.custom_logger import CustomLogger

__all__ = ["NoopLogger", "noop_logger"]


class NoopLogger(CustomLogger):
    """A logging callback that does nothing with its events: what the gateway's callback
    machinery costs by itself (a logger that reads its kwargs also pays for building them)."""

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        pass

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        pass


noop_logger = NoopLogger()
