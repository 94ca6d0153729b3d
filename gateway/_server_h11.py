"""The h11 protocol with ``gateway._server``'s limits: what the ``gateway`` command serves
with when httptools is missing (or ``http="h11"`` is asked for).

Apart from ``_server`` so that serving with httptools never imports h11 and uvicorn's h11
protocol (~50M instructions of the command's ~880M to "listening").
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ._aio import SCOPE_DISCONNECT, Disconnect
from ._server import _BODY, Limits, _Guard

__all__ = ["GatewayH11Protocol"]


class _CheckedConnection(h11.Connection):
    """h11's connection, checking each request's head as it is parsed."""

    guard: GatewayH11Protocol

    def next_event(self) -> Any:
        event = super().next_event()
        if type(event) is h11.Request:
            self.guard._head_done(event)
        return event


class GatewayH11Protocol(_Guard, H11Protocol):
    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # h11 buffers a head until it is whole: its own cap bounds the memory.
        self.conn = _CheckedConnection(h11.SERVER, max_incomplete_event_size=limits.head_bytes)
        self.conn.guard = self
        self._refusal: str | None = None
        self._guard_init(limits)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._admit()

    def data_received(self, data: bytes) -> None:
        self._next_head()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(exc)
        # No reference cycles left for the collector (see the httptools protocol's).
        conn = self.conn
        assert isinstance(conn, _CheckedConnection)
        del conn.guard
        self.cycle = None

    def handle_events(self) -> None:
        super().handle_events()
        # A request read here has its cycle and a task that has not run yet: its
        # scope gets the Disconnect before the app sees it (h11 builds the scope
        # inside handle_events, reading at most one request ahead of its answer).
        cycle = self.cycle
        if cycle is not None and SCOPE_DISCONNECT not in cycle.scope:
            cycle.scope[SCOPE_DISCONNECT] = Disconnect(self.loop)

    def _head_done(self, event: h11.Request) -> None:
        limits = self._limits
        target = event.target
        if len(target) > limits.max_url_bytes:
            self._refusal = "url"
            raise h11.RemoteProtocolError("URL too long")  # uvicorn: send_400_response
        size = 0
        for name, value in event.headers:
            size += len(name) + len(value) + 4
        if size > limits.max_header_bytes:
            self._refusal = "headers"
            raise h11.RemoteProtocolError("headers too large")
        self._phase = _BODY
        self._since = self.loop.time()
        self.app = self._app_for(target.partition(b"?")[0])

    def send_400_response(self, msg: str) -> None:
        refusal = self._refusal
        if refusal is None and len(self.conn.trailing_data[0]) > self._limits.head_bytes:
            refusal = "headers"  # h11's buffer overflowed before the head ended
        if refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(refusal)
