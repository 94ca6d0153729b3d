"""A small OpenAI-compatible upstream for tests, and a helper to serve any ASGI app.

``run_fake_upstream()`` serves ``FakeUpstream`` with uvicorn on a free loopback port in
a background thread::

    with run_fake_upstream() as upstream:
        upstream.base_url        # "http://127.0.0.1:<port>/v1"
        upstream.requests_seen   # [Seen(path, headers, body, ...)]
        upstream.open_requests   # requests in flight right now
        upstream.disconnects     # Seen records whose client went away mid-answer

Each request is steered by a ``"fake"`` object in its JSON body (through the gateway:
the OpenAI SDK's ``extra_body={"fake": {...}}``, or a deployment's ``extra_body``) or by
an ``x-fake`` header holding the same object as JSON. Keys (all optional):

- ``text``: the answer's content (default ``"Hello from the fake upstream"``)
- ``delay``: seconds before the response starts (JSON and streams alike)
- ``chunks``: how many content chunks a stream sends (default: one per word of text)
- ``interval``: seconds between stream chunks
- ``tools``: answer with tool calls (streamed as argument deltas)
- ``extras``: stream extras ``logprobs``, ``reasoning_content`` and unknown fields
- ``status``, ``message``, ``retry_after``, ``code``, ``location``: fail with that
  HTTP status (``message: null`` sends an error object without a message)
- ``hang``: never answer (until the client goes away)
- ``drop_after``: drop the connection after that many stream chunks
- ``stream_error_after``: send ``data: {"error": ...}`` after that many chunks
- ``garbage``: ``"html"`` (a non-JSON 200), ``"truncated"`` (cut JSON, framed
  correctly), ``"short"`` (body shorter than its Content-Length), ``"event"`` (a stream
  event that is not JSON), ``"no_done"`` (a stream that stops without finish or [DONE]),
  ``"finish_no_done"`` (a whole stream, usage chunk included, without [DONE]),
  ``"error_body"`` (HTTP 200 carrying ``{"error": ...}``)
- ``null_usage``: JSON answers carry ``"usage": null``
- ``line_endings``: ``"cr"`` or ``"crlf"``: a stream's lines end that way, not in LF
- ``huge_line``: a stream sends ``data: `` and then that many bytes with no newline
- ``big_body``: the chat answer with a ``"pad"`` of that many bytes, sent in pieces
  with no Content-Length
- ``gzip_bomb``: the chat answer gzip-encoded, followed by that many bytes of spaces
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import socket
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import msgspec
import uvicorn

__all__ = ["FakeUpstream", "Seen", "ServerHandle", "run_fake_upstream", "serve_in_thread"]

T = TypeVar("T")

DEFAULT_TEXT = "Hello from the fake upstream"
TOOL_CALLS = [
    {"id": "call_weather", "name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
    {"id": "call_time", "name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
]

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class _Drop(Exception):
    """Raised inside the app to make uvicorn drop the connection mid-response."""


def _is_drop(exc: BaseException | None) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_drop(e) for e in exc.exceptions)
    return isinstance(exc, _Drop)


class _QuietDrops(logging.Filter):
    """Keeps uvicorn from logging a traceback for each connection dropped on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_drop(record.exc_info[1]))


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


class Seen(msgspec.Struct, kw_only=True):
    """One request the fake upstream received."""

    path: str
    headers: dict[str, str]
    body: Any
    started: float  # time.monotonic() when the request arrived
    first_byte: float | None = None  # when the first body byte was sent
    disconnected: float | None = None  # when the client's disconnect was seen
    chunks_sent: int = 0


class FakeUpstream:
    """The ASGI app: an OpenAI-compatible server whose behaviour each request chooses."""

    def __init__(self) -> None:
        self.base_url = ""
        self.requests_seen: list[Seen] = []
        self.open_requests = 0
        self.max_open_requests = 0
        self.disconnects: list[Seen] = []
        self.server: uvicorn.Server | None = None

    @property
    def open_connections(self) -> int:
        """TCP connections the server holds open right now."""
        return len(self.server.server_state.connections) if self.server else 0

    def reset(self) -> None:
        self.requests_seen.clear()
        self.disconnects.clear()
        self.max_open_requests = self.open_requests

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        raw = b"".join(chunks)
        try:
            body = _decoder.decode(raw) if raw else {}
        except msgspec.DecodeError:
            body = raw
        seen = Seen(path=scope["path"], headers=headers, body=body, started=time.monotonic())
        self.requests_seen.append(seen)
        fake: dict[str, Any] = {}
        if "x-fake" in headers:
            fake.update(_decoder.decode(headers["x-fake"]))
        if isinstance(body, dict) and isinstance(body.get("fake"), dict):
            fake.update(body["fake"])
        self.open_requests += 1
        self.max_open_requests = max(self.max_open_requests, self.open_requests)
        try:
            await self._answer(seen, fake, body, receive, send)
        finally:
            self.open_requests -= 1

    async def _answer(
        self, seen: Seen, fake: dict[str, Any], body: Any, receive: Any, send: Any
    ) -> None:
        finished = False

        async def watch(scope: anyio.CancelScope) -> None:
            # After the body, receive() only returns once the client goes away.
            message = await receive()
            if message["type"] == "http.disconnect" and not finished:
                seen.disconnected = time.monotonic()
                self.disconnects.append(seen)
                scope.cancel()

        async def send_body(data: bytes, more: bool) -> None:
            if seen.first_byte is None:
                seen.first_byte = time.monotonic()
            await send({"type": "http.response.body", "body": data, "more_body": more})

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            if fake.get("delay"):
                await anyio.sleep(float(fake["delay"]))
            if fake.get("hang"):
                await anyio.sleep_forever()
            if not isinstance(body, dict):
                await _json(send, 400, _error("request body is not JSON", "invalid_request_error"))
            elif fake.get("status"):
                await self._fail(fake, send)
            elif fake.get("big_body") or fake.get("gzip_bomb"):
                await _oversized(fake, _encoder.encode(_chat(fake, body)), send, send_body)
            elif seen.path.endswith("/chat/completions"):
                if body.get("stream"):
                    await self._stream(seen, fake, body, send, send_body)
                else:
                    await self._reply(fake, _chat(fake, body), send, send_body)
            elif seen.path.endswith("/embeddings"):
                await self._reply(fake, _embeddings(body), send, send_body)
            elif seen.path.endswith("/images/generations"):
                await self._reply(fake, _images(body), send, send_body)
            else:
                await _json(send, 404, _error(f"no route {seen.path}", "invalid_request_error"))
            finished = True
            tg.cancel_scope.cancel()

    async def _fail(self, fake: dict[str, Any], send: Any) -> None:
        status = int(fake["status"])
        headers = []
        if fake.get("retry_after") is not None:
            headers.append((b"retry-after", str(fake["retry_after"]).encode()))
        if fake.get("location"):
            headers.append((b"location", str(fake["location"]).encode()))
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )
        message = fake.get("message") or f"fake upstream failure {status}"
        error = _error(message, kind, code=fake.get("code"))
        await _json(send, status, error, headers)

    async def _reply(
        self, fake: dict[str, Any], payload: Any, send: Any, send_body: Callable[..., Any]
    ) -> None:
        garbage = fake.get("garbage")
        if garbage == "error_body":  # some servers answer 200 with an error object
            payload = _error(fake.get("message") or "failed", "server_error", fake.get("code"))
        if fake.get("null_usage"):
            payload["usage"] = None
        data = _encoder.encode(payload)
        if garbage == "html":
            data = b"<html><body>502 Bad Gateway (nginx)</body></html>"
            await _start(send, 200, b"text/html", len(data))
            await send_body(data, False)
        elif garbage == "truncated":
            data = data[: len(data) // 2]
            await _start(send, 200, b"application/json", len(data))
            await send_body(data, False)
        elif garbage == "short":
            await _start(send, 200, b"application/json", len(data))
            await send_body(data[: len(data) // 2], True)
            raise _Drop("dropping the connection mid-body")
        else:
            await _start(send, 200, b"application/json", len(data))
            await send_body(data, False)

    async def _stream(
        self,
        seen: Seen,
        fake: dict[str, Any],
        body: dict[str, Any],
        send: Any,
        send_body: Callable[..., Awaitable[None]],
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        if fake.get("huge_line"):
            left = int(fake["huge_line"])
            await send_body(b"data: ", True)
            while left > 0:
                piece = min(left, 65536)
                await send_body(b"x" * piece, True)
                left -= piece
            await send_body(b"", False)
            return
        ending = {"cr": b"\r", "crlf": b"\r\n"}.get(fake.get("line_endings") or "")
        if ending is not None:
            plain = send_body

            async def send_body(data: bytes, more: bool) -> None:
                await plain(data.replace(b"\n", ending), more)

        if fake.get("one_write"):
            # Every event in one write: the gateway gets them in one network read.
            events = [b"data: " + _encoder.encode(c) + b"\n\n" for c in _stream_chunks(fake, body)]
            seen.chunks_sent = len(events)
            await send_body(b"".join(events) + b"data: [DONE]\n\n", False)
            return
        interval = float(fake.get("interval", 0))
        drop_after = fake.get("drop_after")
        error_after = fake.get("stream_error_after")
        for i, chunk in enumerate(_stream_chunks(fake, body)):
            if drop_after is not None and i >= int(drop_after):
                raise _Drop("dropping the connection mid-stream")
            if error_after is not None and i >= int(error_after):
                event = _error(
                    fake.get("message") or "fake stream failure",
                    "server_error",
                    code=fake.get("code"),
                )
                await send_body(b"data: " + _encoder.encode(event) + b"\n\n", True)
                await send_body(b"", False)
                return
            if i and interval:
                await anyio.sleep(interval)
            if (
                fake.get("garbage") == "no_done"
                and chunk["choices"]
                and chunk["choices"][0]["finish_reason"]
            ):
                break
            if fake.get("garbage") == "event" and i == 1:
                await send_body(b"data: {not json\n\n", True)
                continue
            await send_body(b"data: " + _encoder.encode(chunk) + b"\n\n", True)
            seen.chunks_sent += 1
        if fake.get("garbage") in ("no_done", "finish_no_done"):
            await send_body(b"", False)
            return
        await send_body(b"data: [DONE]\n\n", False)


@functools.cache
def _bomb(answer: bytes, size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    spaces = b" " * 2**20  # JSON whitespace: under a big enough cap it is the answer
    parts = [packer.compress(answer)]
    parts += [packer.compress(spaces) for _ in range(size // len(spaces))]
    return b"".join([*parts, packer.flush()])


async def _oversized(fake: dict[str, Any], answer: bytes, send: Any, send_body: Any) -> None:
    # The chat answer, made big: padded with whitespace and gzipped, or with a "pad"
    # field streamed in pieces without a Content-Length.
    headers = [(b"content-type", b"application/json")]
    if fake.get("gzip_bomb"):
        data = _bomb(answer, int(fake["gzip_bomb"]))
        headers += [(b"content-encoding", b"gzip"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send_body(data, False)
        return
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    left = int(fake["big_body"])
    await send_body(b'{"pad": "', True)
    while left > 0:
        piece = min(left, 65536)
        await send_body(b"x" * piece, True)
        left -= piece
    await send_body(b'", ' + answer[1:], False)


async def _start(send: Any, status: int, content_type: bytes, length: int) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % length)],
        }
    )


async def _json(
    send: Any, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = _encoder.encode(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(data)),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _error(message: str, kind: str, code: Any = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _usage(body: dict[str, Any], completion: int) -> dict[str, Any]:
    prompt = len(_encoder.encode(body.get("messages") or body.get("input") or "")) // 4
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _chat(fake: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    text = fake.get("text", DEFAULT_TEXT)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    finish = "stop"
    if fake.get("tools"):
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": t["id"],
                "type": "function",
                "function": {"name": t["name"], "arguments": t["arguments"]},
            }
            for t in TOOL_CALLS
        ]
        finish = "tool_calls"
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _usage(body, len(_words(text))),
    }


def _stream_chunks(fake: dict[str, Any], body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    created = int(time.time())
    extras = bool(fake.get("extras"))

    def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        choice["logprobs"] = more.pop("logprobs", None)
        out = {
            "id": "chatcmpl-fake-stream",
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.get("model"),
            "system_fingerprint": "fp_fake",
            "choices": [choice],
        }
        out.update(more)
        return out

    text = fake.get("text", DEFAULT_TEXT)
    pieces = _words(text)
    if fake.get("chunks") is not None:
        count = int(fake["chunks"])
        pieces = [f"tok{i} " for i in range(count)]
    yield chunk({"role": "assistant", "content": ""})
    finish = "stop"
    if fake.get("tools"):
        finish = "tool_calls"
        for index, tool in enumerate(TOOL_CALLS):
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": tool["id"],
                            "type": "function",
                            "function": {"name": tool["name"], "arguments": ""},
                        }
                    ]
                }
            )
            args = tool["arguments"]
            for start in range(0, len(args), 7):
                part = args[start : start + 7]
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
    else:
        for i, piece in enumerate(pieces):
            if extras:
                yield chunk(
                    {"content": piece, "reasoning_content": f"thought {i}", "x_delta_field": i},
                    logprobs={"content": [{"token": piece, "logprob": -0.5, "bytes": None}]},
                    x_fake_field="kept",
                )
            else:
                yield chunk({"content": piece})
    yield chunk({}, finish)
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        usage = chunk({})
        usage["choices"] = []
        usage["usage"] = _usage(body, len(pieces))
        yield usage


def _embedding_inputs(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]  # one token array
    return list(value or [])


def _vector(item: Any, index: int, dims: int) -> list[float]:
    size = len(item)
    return [float(size) + index / 4.0, *(0.5 + j / 8.0 for j in range(1, dims))]


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    inputs = _embedding_inputs(body.get("input"))
    dims = int(body.get("dimensions") or 3)
    data = []
    for i, item in enumerate(inputs):
        vector: Any = _vector(item, i, dims)
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
    }


def _images(body: dict[str, Any]) -> dict[str, Any]:
    n = int(body.get("n") or 1)
    data = []
    for i in range(n):
        if body.get("response_format") == "b64_json":
            item = {"b64_json": base64.b64encode(b"fake-png-%d" % i).decode()}
        else:
            item = {"url": f"https://images.fake.invalid/{i}.png"}
        item["revised_prompt"] = f"{body.get('prompt')} (revised)"
        data.append(item)
    out: dict[str, Any] = {"created": int(time.time()), "data": data}
    if body.get("size"):
        out["size"] = body["size"]
    return out


# Serving.


class ServerHandle:
    """A uvicorn server running an ASGI app in a background thread."""

    def __init__(self, server: uvicorn.Server, port: int) -> None:
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.loop: asyncio.AbstractEventLoop | None = None

    def call(self, func: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
        """Run a coroutine function on the server's event loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(func(), self.loop).result(timeout)


class _Server(uvicorn.Server):
    """uvicorn's server, stopped as soon as it is told. uvicorn's main loop looks at
    ``should_exit`` every 0.1 s, and its shutdown pauses 0.1 s, then polls connections
    and tasks every 0.1 s: 0.2-0.3 s at the end of every test's server, hundreds of
    times a run. Here the main loop wakes when told to exit, and the shutdown polls
    every 10 ms; its steps and their order are uvicorn's 0.54 ``Server.shutdown``
    (``servers`` and ``lifespan`` are its attributes)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.woken = asyncio.Event()

    def exit_now(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """From another thread: ``should_exit``, and the main loop woken to see it."""
        self.should_exit = True
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                loop.call_soon_threadsafe(self.woken.set)

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):  # uvicorn's tick (the date header)
                    await self.woken.wait()
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                while state.connections or state.tasks:
                    await asyncio.sleep(0.01)
                for server in self.servers:
                    await server.wait_closed()
        except TimeoutError:
            for task in state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()


@contextlib.contextmanager
def serve_in_thread(app: Any, *, loop: str = "asyncio", **config: Any) -> Iterator[ServerHandle]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port until the block ends."""
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto is TCP; with proto 0 every response pays Nagle + delayed ACK (40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # No SO_REUSEADDR: with it, bind() to port 0 may hand out a port that another
    # REUSEADDR socket or an outgoing connection holds, and listen() then fails with
    # EADDRINUSE (seen with the suite on several workers). Listening here, not in uvicorn,
    # makes the port ours before the thread starts.
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    port = sock.getsockname()[1]
    if config.get("http") == "httptools":
        # The gateway command's own protocol over httptools (gateway/_server_httptools.py),
        # so that every test served this way exercises it.
        from gateway._server import Limits, protocol_factory

        config["http"] = protocol_factory("httptools", Limits())
    config.setdefault("log_level", "warning")
    config.setdefault("access_log", False)
    config.setdefault("timeout_graceful_shutdown", 2)
    config.setdefault("lifespan", "auto")
    server = _Server(uvicorn.Config(app, loop=loop, **config))
    handle = ServerHandle(server, port)
    errors: list[BaseException] = []

    async def main() -> None:
        handle.loop = asyncio.get_running_loop()
        await server.serve(sockets=[sock])

    def target() -> None:
        factory = server.config.get_loop_factory()
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(main())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError(f"server on port {port} failed to start: {errors!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} did not start in time")
        time.sleep(0.01)
    try:
        yield handle
    finally:
        server.exit_now(handle.loop)
        thread.join(15)
        sock.close()


@contextlib.contextmanager
def run_fake_upstream(**config: Any) -> Iterator[FakeUpstream]:
    """Start a ``FakeUpstream`` on a free loopback port; ``base_url`` ends in ``/v1``."""
    app = FakeUpstream()
    config.setdefault("lifespan", "off")
    with serve_in_thread(app, **config) as handle:
        app.server = handle.server
        app.base_url = f"{handle.url}/v1"
        yield app
