"""The ``gateway`` command's HTTP/1.1 protocol: httptools' parser, ``gateway._server``'s
limits, and less Python per request than uvicorn's own protocol.

uvicorn's httptools protocol costs ~100k instructions a request in Python around the C
parser, our limits on top of it ~22k more (whole-server counts, the chat scenario's
request). Here the same work is done once: no per-request ``asyncio.Event``, keep-alive
timer or wrapping coroutine, a response's head checked with one regex and written with
its body's first bytes in one system call, the request's ``Disconnect`` being its cycle
itself. Behaviour is uvicorn's (it serves under ``uvicorn.Server``: its connections,
tasks, default headers, graceful shutdown) with these differences:

- pipelined requests queued behind a running one hear of a disconnect too (uvicorn
  tells only the newest, so a running handler ran on for nobody);
- idle keep-alive connections are closed by the sweep that enforces the header and body
  timeouts (within one tick of ``keepalive_timeout``), not by a timer per request;
- an ``Upgrade`` request is answered as plain HTTP and the connection closed after it:
  the gateway serves no WebSockets; uvicorn's access log is not written (the gateway
  writes its own).
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
from collections import deque
from http import HTTPStatus
from time import perf_counter
from typing import Any

import httptools
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from ._aio import SCOPE_DISCONNECT, Disconnect
from ._server import (
    _BODY,
    _HEAD,
    HEALTH_PATHS,
    RESERVE,
    Limits,
    _over_capacity,
    _replies,
    _sweeper_for,
)

__all__ = ["HttpToolsProtocol"]

logger = logging.getLogger("uvicorn.error")

_IDLE = 2  # a keep-alive connection between requests (see _server's phases)
_HIGH_WATER = 65536  # request body bytes buffered before reading pauses
_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name: a token
# A header value's allowed bytes (uvicorn's check: no controls but tab): deleting them
# from the values leaves nothing. bytes.translate, not a regex search: ~5 instructions
# a byte, not ~40.
_VALUE_BYTES = bytes(b for b in range(256) if b == 9 or 32 <= b < 127 or b > 127)
_names: dict[bytes, bytes] = {}  # header names as sent -> checked and lowercased
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_DISCONNECT = {"type": "http.disconnect"}
_INVALID = "Invalid HTTP request received."
_defaults: list[Any] = [None, b""]  # the server's default headers, and their bytes


def _name(name: bytes) -> bytes:
    """A response header's name checked and lowercased (uvicorn refuses the same)."""
    if not _NAME.fullmatch(name):
        raise RuntimeError("Invalid HTTP header name.")
    lowered = name.lower()
    if len(_names) < 1024:
        _names[name] = lowered
    return lowered


def _default_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    # uvicorn.Server swaps in a new list each second (the date): encoded once per list.
    if _defaults[0] is not headers:
        _defaults[:] = [headers, b"".join(b"%s: %s\r\n" % pair for pair in headers)]
    return _defaults[1]


class _Cycle(Disconnect):
    """One request and its response; in the scope as its ``Disconnect`` (``gone``: the
    client left or the connection was closed)."""

    notes_response = True
    own_task = True

    __slots__ = (
        "body",
        "buffered",
        "chunked",
        "complete",
        "expect_100",
        "head",
        "head_only",
        "keep_alive",
        "left",
        "more_body",
        "proto",
        "ready",
        "record",
        "scope",
        "started",
        "waiter",
    )

    def __init__(self, proto: HttpToolsProtocol, scope: Any, keep_alive: bool, expect: bool):
        # Disconnect's fields, set here: a call less a request.
        self.loop = proto.loop
        self.gone = False
        self._task = None
        self._cancelled = False
        self.proto = proto
        # Until the app starts (then only the scope points here: no reference cycle to
        # leave for the garbage collector each request).
        self.scope: Any = scope
        self.head_only = scope["method"] == "HEAD"
        self.keep_alive = keep_alive
        self.expect_100 = expect
        self.body: list[bytes] = []
        self.buffered = 0
        self.more_body = True
        self.ready = False  # something for receive(): body bytes, its end, a disconnect
        self.waiter: asyncio.Future[None] | None = None
        self.started = False
        self.complete = False
        self.chunked = False
        self.left = -1  # bytes of the body still owed by its content-length (-1: none)
        self.head: bytes | None = None  # the response's head, until its body's first bytes
        self.record: Any = None  # the app's RequestRecord (Disconnect.notes_response)

    def wake(self) -> None:
        self.ready = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def lose(self) -> None:
        """The connection is closed: receive() says so, send() writes nothing more."""
        self.fire()
        self.wake()

    async def receive(self) -> Any:
        if self.expect_100:
            self.expect_100 = False
            if not self.proto.transport.is_closing():
                self.proto.transport.write(_CONTINUE)
        if not (self.gone or self.complete):
            if self.proto.read_paused:
                # (As uvicorn: reading paused for a pipelined request resumes here, so a
                # client that leaves is seen leaving.)
                self.proto.resume_reading()
            if not self.ready:
                waiter = self.waiter = self.loop.create_future()
                try:
                    await waiter
                finally:
                    self.waiter = None
            self.ready = False
        if self.gone or self.complete:
            return _DISCONNECT
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        if body:
            self.body = []
            self.buffered = 0
        return {"type": "http.request", "body": data, "more_body": self.more_body}

    def take_body(self) -> bytes | None:
        """The whole body, if it has all arrived and none of it was received: what
        ``receive()`` would return, without its coroutine or message. None: call
        ``receive()``."""
        if self.more_body or not self.ready or self.expect_100 or self.gone or self.complete:
            return None
        if self.proto.read_paused:
            self.proto.resume_reading()  # (as receive())
        self.ready = False
        body = self.body
        if not body:
            return b""
        self.body = []
        self.buffered = 0
        return body[0] if len(body) == 1 else b"".join(body)

    async def send(self, message: Any) -> None:
        proto = self.proto
        if proto.write_paused is not None and not self.gone:
            await proto.write_paused
        if self.gone:
            return
        if not self.started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self._begin(message["status"], message.get("headers", ()))
            # Held for the body's first bytes, which usually follow in the same step of
            # the app: one write, not two. Sent alone at the loop's next turn otherwise.
            self.loop.call_soon(self.flush)
            return
        if self.complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already "
                "completed."
            )
        if message["type"] != "http.response.body":
            raise RuntimeError(
                f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
            )
        self._body(message.get("body", b""), message.get("more_body", False))

    def respond(self, status: int, headers: Any, body: bytes) -> bool:
        """A whole response in one write: ``send()``'s two messages without their
        coroutines or the held head's flush. False if it must go through ``send()``
        (writing is paused, or a response started)."""
        if self.gone:
            return True  # (as send(): nothing written)
        if self.started or self.proto.write_paused is not None:
            return False
        self._begin(status, headers)
        self._body(body, False)
        return True

    def write(self, body: bytes, more: bool) -> bool:
        """``send()`` of a body message without its coroutine or message (a stream's
        chunks). False if it must go through ``send()`` (no response started, or it
        completed, or writing is paused: ``send()`` waits)."""
        if self.gone:
            return True  # (as send(): nothing written)
        if not self.started or self.complete or self.proto.write_paused is not None:
            return False
        self._body(body, more)
        return True

    def _begin(self, status: int, headers: Any) -> None:
        record = self.record
        if record is None:
            self.head = self._head(status, headers, None)
        else:
            record.responded = perf_counter()
            record.status = status
            self.head = self._head(status, headers, record.id)
        self.started = True  # (after the checks: a refused head can be a 500 still)
        self.expect_100 = False

    def _body(self, body: bytes, more: bool) -> None:
        proto = self.proto
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        elif self.left >= 0:
            if len(body) > self.left:
                raise RuntimeError("Response content longer than Content-Length")
            self.left -= len(body)
            data = body
        else:  # HEAD, 204, 304: no body on the wire
            data = b""
        head = self.head
        if head is not None:
            self.head = None
            data = head + data
        if data:
            proto.transport.write(data)
        if not more:
            if self.left > 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.complete = True
            if self.waiter is not None:
                self.wake()
            if not self.keep_alive:
                proto.transport.close()
            proto.response_complete(self)

    def _head(self, status: int, headers: Any, request_id: str | None) -> bytes:
        parts = [
            _STATUS.get(status) or b"HTTP/1.1 %d \r\n" % status,
            _defaults[1]
            if _defaults[0] is self.proto.server_state.default_headers
            else _default_headers(self.proto.server_state.default_headers),
        ]
        values = []
        close = False
        length = -1
        for name, value in headers:
            lowered = _names.get(name) or _name(name)
            values.append(value)
            if lowered == b"content-length":
                if length < 0 and not self.chunked:
                    length = int(value)
            elif lowered == b"transfer-encoding":
                if value.lower() == b"chunked":
                    length, self.chunked = -1, True
            elif lowered == b"connection":
                if b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive = False
                    close = True
            parts += (lowered, b": ", value, b"\r\n")
        if b"".join(values).translate(None, _VALUE_BYTES):
            raise RuntimeError("Invalid HTTP header value.")
        if request_id is not None:  # safe as it is (gateway.request_id)
            parts += (b"x-request-id: ", request_id.encode(), b"\r\n")
        if not self.keep_alive and not close:
            parts.append(b"connection: close\r\n")
        if self.head_only or status in (204, 304):
            self.chunked, length = False, -1
        elif not self.chunked and length < 0:
            self.chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        self.left = length
        parts.append(b"\r\n")
        return b"".join(parts)

    def flush(self) -> None:
        head = self.head
        if head is not None:
            self.head = None
            if not self.proto.transport.is_closing():
                self.proto.transport.write(head)

    def done(self, task: asyncio.Task[None]) -> None:
        """The app's task ended: what uvicorn's wrapper coroutine checks, from here."""
        self.proto.tasks.discard(task)
        transport = self.proto.transport
        if task.cancelled():
            if not self.complete:
                self.flush()
                transport.close()
            return
        exc = task.exception()
        if exc is not None:
            logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.started:
                self._send_500()
            else:
                self.flush()
                transport.close()
        elif task.result() is not None:
            logger.error("ASGI callable should return None, but returned '%s'.", task.result())
            self.flush()
            transport.close()
        elif not self.started and not self.gone:
            logger.error("ASGI callable returned without starting response.")
            self._send_500()
        elif not self.complete and not self.gone:
            logger.error("ASGI callable returned without completing response.")
            self.flush()
            transport.close()

    def _send_500(self) -> None:
        if self.gone:
            return
        self.started = self.complete = True
        self.proto.close_with(500, b"Internal Server Error")


class HttpToolsProtocol(asyncio.Protocol):
    """One connection: requests parsed by httptools, answered in order, under limits."""

    # Slots, not a __dict__: each request reads and writes these dozens of times, and
    # at 256 connections the connection's object is cold when its request comes; one
    # compact object is fewer cache lines than an object and its dict's values.
    __slots__ = (
        "_forwarded",
        "_head_bytes",
        "_head_room",
        "_heads",
        "_keepalive",
        "_over_cap",
        "_phase",
        "_refusal",
        "_replies",
        "_since",
        "_sweeper",
        "_trusted",
        "app",
        "app_state",
        "client",
        "config",
        "connections",
        "cycle",
        "expect_100",
        "headers",
        "limit_concurrency",
        "limits",
        "loop",
        "parser",
        "pipeline",
        "read_paused",
        "root_path",
        "running",
        "scheme",
        "server",
        "server_state",
        "tasks",
        "transport",
        "url",
        "write_paused",
    )

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: Limits,
    ) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        app = config.loaded_app
        # uvicorn's ProxyHeadersMiddleware (``proxy_headers``, on by default), done here:
        # whether the peer is trusted is asked once a connection, and a request without
        # forwarded headers pays nothing (the middleware: a frame and a header loop, ~6k
        # instructions a request).
        self._trusted: Any = None
        if type(app) is ProxyHeadersMiddleware:
            self._trusted = app.trusted_hosts
            app = app.app
        self.app = app
        self._forwarded = False  # the peer is trusted to say whom it forwards
        self.loop = _loop or asyncio.get_event_loop()
        self.parser = httptools.HttpRequestParser(self)
        # An answer to the first of pipelined requests after the client half-closed.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.root_path = config.root_path
        self.app_state = app_state
        self.limit_concurrency = config.limit_concurrency
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: Any = None
        self.client: Any = None
        self.scheme = "http"
        self.cycle: _Cycle | None = None  # the newest request (its body is being read)
        self.running: _Cycle | None = None  # the one the app answers
        self.pipeline: deque[tuple[_Cycle, Any]] = deque()  # read, waiting their turn
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_100 = False
        self.read_paused = False
        self.write_paused: asyncio.Future[None] | None = None  # set while paused
        self.limits = limits
        self._replies = _replies(limits)
        self._refusal: str | None = None
        self._heads = 0
        self._head_bytes = limits.head_bytes
        self._head_room = self._head_bytes
        self._over_cap = False
        self._phase = _HEAD
        self._since = 0.0
        self._keepalive = config.timeout_keep_alive
        self._sweeper = _sweeper_for(server_state, self.loop, limits, self._keepalive)

    # the transport's calls

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.connections.add(self)
        self.transport = transport
        self.server = get_local_addr(transport)
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        if self._trusted is not None:
            self._forwarded = (self.client[0] if self.client else None) in self._trusted
        self._sweeper.ensure()
        self._since = self.loop.time()
        open_ = len(self.connections)
        limit = self.limits.max_connections
        if open_ > limit + RESERVE:
            self._refuse("full")
        self._over_cap = open_ > limit

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        for cycle in {self.running, self.cycle, *(c for c, _ in self.pipeline)}:
            if cycle is not None and not cycle.complete:
                cycle.lose()
        # Nothing is read here any more: drop the parser (whose callbacks are this
        # protocol's bound methods) and the cycles (which point back here), so that the
        # connection and its last request, task and context go by reference counting,
        # not in the collector's next young collection (~24 objects a closed connection).
        self.parser = None  # type: ignore[assignment]
        self.cycle = self.running = None
        self.pipeline.clear()
        self._writable()
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        pass

    def pause_writing(self) -> None:
        if self.write_paused is None:
            self.write_paused = self.loop.create_future()

    def resume_writing(self) -> None:
        self._writable()

    def _writable(self) -> None:
        waiter = self.write_paused
        if waiter is not None:
            self.write_paused = None
            if not waiter.done():
                waiter.set_result(None)

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._phase != _HEAD:
            # Bytes after a whole request (or an idle pause) start the next one's head.
            cycle = self.cycle
            if self._phase == _IDLE or cycle is None or not cycle.more_body:
                self._phase = _HEAD
                self._since = self.loop.time()
        try:
            if self._phase == _HEAD:
                # Never feed the parser more than a head's limit: httptools buffers
                # each header until it ends, so a check per header would come after
                # the memory is spent.
                room = self._head_room
                if len(data) > room:
                    heads = self._heads
                    self._head_room = 0  # (on_headers_complete: the head may be large)
                    self.parser.feed_data(memoryview(data)[:room])
                    if self._heads == heads:  # no head ended within its limit
                        self._refuse("headers")  # (a long URL was refused in on_url)
                        return
                    self.data_received(data[room:])
                    return
                self._head_room = room - len(data)
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._refusal is None:
                raise
            self._refuse(self._refusal)
        except httptools.HttpParserError:
            logger.warning(_INVALID)
            if self.running is not None:
                self.running.flush()
            self.close_with(400, _INVALID.encode())
        except httptools.HttpParserUpgrade:
            logger.warning("Unsupported upgrade request.")
            if self.cycle is not None:
                self.cycle.keep_alive = False  # the parser reads nothing after it

    def close_with(self, status: int, text: bytes) -> None:
        """Answer with a plain-text ``status`` and close (uvicorn's own 400 and 500)."""
        self.transport.write(
            _STATUS[status]
            + _default_headers(self.server_state.default_headers)
            + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(text), text)
        )
        self.transport.close()

    # the parser's calls

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            self._refusal = "url"
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        # llhttp keeps a value's trailing whitespace, which RFC 9110 excludes from it.
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100 = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        limits = self.limits
        headers = self.headers
        # Counted exactly only when the head may be large: the bytes fed since it began
        # bound its size from above.
        if self._head_bytes - self._head_room > limits.max_header_bytes:
            size = 0
            for name, value in headers:
                size += len(name) + len(value) + 4
            if size > limits.max_header_bytes:
                self._refusal = "headers"
                raise _Refused
        self._heads += 1
        self._phase = _BODY
        self._since = self.loop.time()
        self._head_room = self._head_bytes
        parser = self.parser
        version = parser.get_http_version()
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root = self.root_path
        client, scheme = self.client, self.scheme
        if self._forwarded:
            client, scheme = self._forwarded_by(headers, client, scheme)
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "server": self.server,
            "client": client,
            "scheme": scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": root,
            "path": root + path,
            "raw_path": root.encode("ascii") + raw_path if root else raw_path,
            "query_string": url.query or b"",
            "headers": headers,
            "state": self.app_state.copy(),
        }
        self.url = b""
        self.headers = []
        cycle = _Cycle(
            self, scope, version != "1.0" and parser.should_keep_alive(), self.expect_100
        )
        scope[SCOPE_DISCONNECT] = cycle
        self.expect_100 = False
        app = self.app
        if self._over_cap:
            app = self._app_for(path)
        elif self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency
            or len(self.tasks) >= self.limit_concurrency
        ):
            from uvicorn.protocols.http.flow_control import service_unavailable

            logger.warning("Exceeded concurrency limit.")
            app = service_unavailable
        previous = self.cycle
        self.cycle = cycle
        if previous is None or previous.complete:
            self._start(cycle, app)
        else:  # pipelined: answered in order
            self.pause_reading()
            self.pipeline.append((cycle, app))

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is None or cycle.complete:
            return
        cycle.body.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > _HIGH_WATER:
            self.pause_reading()
        cycle.ready = True  # cycle.wake(), inline
        if cycle.waiter is not None and not cycle.waiter.done():
            cycle.waiter.set_result(None)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle is None or cycle.complete:
            return
        cycle.more_body = False
        cycle.ready = True  # cycle.wake(), inline
        if cycle.waiter is not None and not cycle.waiter.done():
            cycle.waiter.set_result(None)

    def _forwarded_by(self, headers: list[tuple[bytes, bytes]], client: Any, scheme: str) -> Any:
        """The client and scheme a trusted proxy's X-Forwarded headers name (as uvicorn's
        middleware reads them)."""
        proto = None
        hops = []
        for name, value in headers:
            if name == b"x-forwarded-proto":
                proto = value
            elif name == b"x-forwarded-for":
                hops.append(value)
        if proto is not None:
            said = proto.decode("latin1").strip()
            if said in ("http", "https", "ws", "wss"):
                scheme = said
        if hops:
            host, port = self._trusted.get_trusted_client_address(b", ".join(hops).decode("latin1"))
            if host:
                client = (host, port)
        return client, scheme

    # requests

    def _start(self, cycle: _Cycle, app: Any) -> None:
        self.running = cycle
        scope, cycle.scope = cycle.scope, None
        task = self.loop.create_task(app(scope, cycle.receive, cycle.send))
        task.add_done_callback(cycle.done)
        self.tasks.add(task)

    def response_complete(self, cycle: _Cycle) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.read_paused:
            self.resume_reading()
        if self.pipeline:
            self._start(*self.pipeline.popleft())
        elif self.cycle is cycle and self._phase == _BODY:
            self._phase = _IDLE  # nothing of a next request yet: keep-alive
            self._since = self.loop.time()

    def shutdown(self) -> None:
        """The server's graceful shutdown: close now if idle, else after this answer."""
        cycle = self.cycle
        if cycle is None or cycle.complete:
            self.transport.close()
        else:
            cycle.keep_alive = False

    # limits

    def _refuse(self, what: str) -> None:
        """Answer ``what`` and close; only close if an answer now would be misread."""
        cycle = self.cycle
        answer = not self.pipeline  # queued requests: order is lost
        if cycle is not None:
            if not cycle.complete:
                cycle.lose()
                # A refused head while an earlier request is unanswered: a reply now
                # would read as that request's answer.
                answer = answer and what == "body_timeout" and not cycle.started
            elif what == "body_timeout":
                answer = False  # answered early (413...): never a second answer
        self._phase = _BODY  # nothing more to time
        if not self.transport.is_closing():
            if answer:
                self.transport.write(self._replies[what])
            self.transport.close()

    def _gateway_check(self, now: float) -> None:
        """The sweep's: close a connection past its phase's deadline."""
        phase = self._phase
        cycle = self.cycle
        if phase == _IDLE:
            if now - self._since > self._keepalive and not self.transport.is_closing():
                self.transport.close()
        elif phase == _HEAD:
            if now - self._since > self.limits.header_timeout:
                if cycle is None or cycle.complete:
                    self._refuse("header_timeout")
                # else: a pipelined request's head waits behind an answer still being sent.
        elif cycle is not None and cycle.more_body:
            if self.pipeline:
                # A pipelined request waits, unread, for the answer before it: not the
                # client's delay.
                self._since = now
            elif now - self._since > self.limits.body_timeout:
                # Answered early (413...) or not: a body still trickling in is cut.
                self._refuse("body_timeout")

    def _app_for(self, path: str) -> Any:
        return self.app if path in HEALTH_PATHS else _over_capacity


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the refusal is on the protocol."""
