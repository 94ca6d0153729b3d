"""The ``gateway`` command's HTTP/1.1 protocols, with the limits a gateway on a network needs.

uvicorn bounds none of these with httptools, and only the size of a request's head with
h11: how long a client may take to send its headers or its body, how large its URL and
headers may be, and how many connections may be open. A client could hold sockets,
memory and file descriptors for as long and as much as it liked. The same limits apply
to both, since the ``gateway`` command falls back to h11 when httptools is missing:

- a request's head: at most ``max_url_bytes`` of URL (else 414) and ``max_header_bytes``
  of headers (else 431), counted as they arrive, so memory stays bounded;
- ``header_timeout``: a new connection, or a request's first byte, to the end of its
  headers; ``body_timeout``: the end of its headers to the end of its body. Either way a
  408, and the connection is closed. Idle keep-alive connections close after
  ``keepalive_timeout`` (uvicorn's own timer);
- ``max_connections``: past it, a connection may ask only for health and metrics (others
  get 503 with ``Retry-After``); past it by ``RESERVE`` more, a new connection gets 503
  at once and is closed.

The httptools protocol is our own (``gateway._server_httptools``: uvicorn's, rewritten
lean); h11's is uvicorn's with ``_Guard`` (``gateway._server_h11``). Timeouts are checked
by one sweep per server every ``tick`` seconds (at most 1 s) over its connections, not by
a timer per request: a request pays only for noting its phase and the loop's clock, twice.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from typing import Any

import msgspec

from ._aio import SCOPE_DISCONNECT

__all__ = ["RESERVE", "Limits", "protocol_factory"]

# Connections past max_connections that may still ask for health and metrics.
RESERVE = 64
HEALTH_PATHS = frozenset(
    {"/health/liveliness", "/health/liveness", "/health/readiness", "/metrics"}
)
# A request line's own bytes (method, version, spaces) beyond its URL.
_LINE_SLACK = 64

# Phases of a connection.
_HEAD = 0  # waiting for a request's headers (from the connection or the first byte)
_BODY = 1  # headers read; while the cycle says more_body, the body is still coming


class Limits(msgspec.Struct, frozen=True):
    max_url_bytes: int = 16 * 1024
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 2048

    @property
    def head_bytes(self) -> int:
        return self.max_url_bytes + self.max_header_bytes + _LINE_SLACK


def _reply(status: int, reason: bytes, message: str, code: str, extra: bytes = b"") -> bytes:
    body = msgspec.json.encode(
        {
            "error": {
                "message": message,
                "type": "service_unavailable_error" if status == 503 else "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    )
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"%sconnection: close\r\n\r\n%s" % (status, reason, len(body), extra, body)
    )


@functools.lru_cache(maxsize=16)
def _replies(limits: Limits) -> dict[str, bytes]:
    busy = b"retry-after: 1\r\n"
    return {
        "url": _reply(
            414,
            b"URI Too Long",
            f"The URL is longer than {limits.max_url_bytes} bytes",
            "url_too_long",
        ),
        "headers": _reply(
            431,
            b"Request Header Fields Too Large",
            f"The request's headers are larger than {limits.max_header_bytes} bytes",
            "headers_too_large",
        ),
        "header_timeout": _reply(
            408,
            b"Request Timeout",
            f"The request's headers did not arrive within {limits.header_timeout:g} s",
            "header_timeout",
        ),
        "body_timeout": _reply(
            408,
            b"Request Timeout",
            f"The request's body did not arrive within {limits.body_timeout:g} s",
            "body_timeout",
        ),
        "full": _reply(
            503,
            b"Service Unavailable",
            "Too many open connections; try again shortly",
            "too_many_connections",
            busy,
        ),
    }


async def _over_capacity(scope: Any, receive: Any, send: Any) -> None:
    """The app a connection past ``max_connections`` gets for anything but health."""
    body = msgspec.json.encode(
        {
            "error": {
                "message": "Too many open connections; try again shortly",
                "type": "service_unavailable_error",
                "param": None,
                "code": "too_many_connections",
            }
        }
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _HeadWithBody:
    """A connection's transport that sends a response's head with its body's first bytes.

    uvicorn's protocols write the head (``http.response.start``) and the body as two
    ``transport.write`` calls, and uvloop sends each at once: two ``write`` system calls
    for every JSON answer, each waking the reader, although the body comes in the same
    step of the app's task (strace: a chat answer 2 writes, now 1; a proxied JSON request
    at 32 connections 3, now 2). A head is held until the next write on the connection,
    which sends both in one call, or until the loop's next turn, which sends it alone: a
    head never waits for a body that is not there yet. Every write of the protocol and
    its requests goes through here, so the order on the wire is theirs. Costs a
    ``call_soon`` an answer and a Python call a write.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            if data:  # (h11 ends a body with an empty write: not the body)
                self._held = None
                self._transport.write(held + data)
        elif data.startswith(b"HTTP/1.1 "):  # a status line: uvicorn's heads, our refusals
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def writelines(self, data: Any) -> None:
        self._flush()
        self._transport.writelines(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Sweeper:
    """One per server: a sweep that closes connections past a deadline, while any are open."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any], tick: float):
        self.loop = loop
        self.connections = connections
        self.tick = tick
        self.handle: asyncio.TimerHandle | None = None

    def ensure(self) -> None:
        if self.handle is None:
            self.handle = self.loop.call_later(self.tick, self.sweep)

    def sweep(self) -> None:
        now = self.loop.time()
        for connection in list(self.connections):
            check = getattr(connection, "_gateway_check", None)
            if check is not None:
                check(now)
        self.handle = self.loop.call_later(self.tick, self.sweep) if self.connections else None


_sweepers: weakref.WeakKeyDictionary[Any, _Sweeper] = weakref.WeakKeyDictionary()


def _sweeper_for(
    server_state: Any, loop: asyncio.AbstractEventLoop, limits: Limits, keepalive: float = 1.0
) -> _Sweeper:
    """The server's sweeper, made by its first connection: a tick of a quarter of the
    shortest timeout it enforces, between 50 ms and 1 s."""
    sweeper = _sweepers.get(server_state)
    if sweeper is None:
        shortest = min(limits.header_timeout, limits.body_timeout, keepalive)
        tick = min(1.0, max(0.05, shortest / 4))
        sweeper = _sweepers[server_state] = _Sweeper(loop, server_state.connections, tick)
    return sweeper


class _Guard:
    """What both protocols share: phases, deadlines, refusals."""

    # Set by the protocol classes below.
    transport: asyncio.Transport
    connections: set[Any]
    server_state: Any
    cycle: Any
    app: Any
    loop: asyncio.AbstractEventLoop

    def _guard_init(self, limits: Limits) -> None:
        self._limits = limits
        self._replies = _replies(limits)
        self._real_app = self.app
        self._over_cap = False
        self._phase = _HEAD
        self._since = 0.0
        self._sweeper = _sweeper_for(self.server_state, self.loop, limits)

    def _admit(self) -> bool:
        """At connection_made (the connection already counted): False if refused. From
        here every write goes through ``_HeadWithBody``, the refusal's too."""
        self.transport = _HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]
        open_ = len(self.connections)
        limit = self._limits.max_connections
        self._sweeper.ensure()
        self._since = self.loop.time()
        if open_ > limit + RESERVE:
            self._refuse("full")
            return False
        self._over_cap = open_ > limit
        return True

    def _refuse(self, what: str) -> None:
        """Answer ``what`` and close; only close if an answer now would be misread."""
        cycle = self.cycle
        answer = not getattr(self, "pipeline", None)  # queued requests: order is lost
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True  # the app's receive() sees a disconnect
                cycle.message_event.set()
                self._tell_gone(cycle)
                # A refused head while an earlier request is unanswered: a reply now
                # would read as that request's answer.
                answer = answer and what == "body_timeout" and not cycle.response_started
            elif what == "body_timeout":
                answer = False  # answered early (413...): never a second answer
        self._phase = _BODY  # nothing more to time
        if not self.transport.is_closing():
            if answer:
                self.transport.write(self._replies[what])
            self.transport.close()

    def _next_head(self) -> None:
        """At data_received: bytes after a whole request start the next one's head."""
        cycle = self.cycle
        if self._phase != _HEAD and (cycle is None or not cycle.more_body):
            self._phase = _HEAD
            self._since = self.loop.time()

    def _gateway_check(self, now: float) -> None:
        cycle = self.cycle
        if self._phase == _HEAD:
            if now - self._since > self._limits.header_timeout:
                if cycle is None or cycle.response_complete:
                    self._refuse("header_timeout")
                # else: a pipelined request's head waits behind an answer still being sent.
        elif cycle is not None and cycle.more_body:
            if getattr(self, "pipeline", None):
                # A pipelined request waits, unread, for the answer before it: not the
                # client's delay.
                self._since = now
            elif now - self._since > self._limits.body_timeout:
                # Answered early (413...) or not: a body still trickling in is cut.
                self._refuse("body_timeout")

    def _lose(self, exc: Exception | None) -> None:
        """connection_lost: the protocol's own, then each request it told is gone hears
        so at once through its ``Disconnect`` (no watcher task in the app)."""
        cycles = [self.cycle, *getattr(self, "_earlier", ())]
        super().connection_lost(exc)  # type: ignore[misc]
        for cycle in cycles:
            if cycle is not None and cycle.disconnected:
                self._tell_gone(cycle)

    @staticmethod
    def _tell_gone(cycle: Any) -> None:
        signal = cycle.scope.get(SCOPE_DISCONNECT)
        if signal is not None:
            signal.fire()

    def _app_for(self, path: bytes | str) -> Any:
        if not self._over_cap:
            return self._real_app
        if isinstance(path, bytes):
            path = path.decode("latin-1")
        return self._real_app if path in HEALTH_PATHS else _over_capacity


def protocol_factory(http: str, limits: Limits) -> Any:
    """What uvicorn's ``http=`` takes: the ``"httptools"`` or ``"h11"`` protocol with
    ``limits``. A module-level class and a frozen Struct in a ``functools.partial`` are
    picklable, so ``--workers`` (spawned processes) get the same limits."""
    if http == "httptools":
        try:
            from ._server_httptools import HttpToolsProtocol
        except ImportError:
            raise RuntimeError("httptools is not installed") from None
        return functools.partial(HttpToolsProtocol, limits=limits)
    # Imported only for h11: h11 and uvicorn's protocol are ~5% of the command's start.
    from ._server_h11 import GatewayH11Protocol

    return functools.partial(GatewayH11Protocol, limits=limits)
