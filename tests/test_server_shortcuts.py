"""The gateway's own server lends the app two shortcuts past ASGI's messages
(``Disconnect.take_body`` and ``Disconnect.respond``): a body that came with its head,
taken without ``receive()``; a whole response written at once, without two ``send()``
calls. What a client sees must be what the messages give, on both protocols (h11's
``Disconnect`` offers neither: the app falls back to the messages), and a proxied JSON
request through the gateway must use them.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from gateway._aio import Disconnect
from gateway._server import Limits, protocol_factory
from tests.fake_upstream import ServerHandle, serve_in_thread
from tests.test_server_http11 import Reader, _request
from tests.test_server_http11 import app as http11_app


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes ``took``/``read`` (whether ``take_body`` had the body) and the body."""
    if scope["type"] == "lifespan":
        await http11_app(scope, receive, send)
        return
    server = getattr(receive, "__self__", None)
    body = server.take_body() if isinstance(server, Disconnect) else None
    how = b"took" if body is not None else b"read"
    if body is None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
    elif scope["path"] == "/twice":
        # Nothing is left to receive: the next message is the end (the response's or
        # the client's), as after a last body message.
        waiting = asyncio.ensure_future(receive())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        waiting.cancel()
    answer = how + b" " + body
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(answer))]
    sender = getattr(send, "__self__", None)
    if scope["path"] == "/written":
        # A body written before a response started is not written.
        assert not (isinstance(sender, Disconnect) and sender.write(b"early", True))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece, more in ((how + b" ", True), (body, True), (b"", False)):
            if not (isinstance(sender, Disconnect) and sender.write(piece, more)):
                await send({"type": "http.response.body", "body": piece, "more_body": more})
        # Nor one after the response completed.
        assert not (isinstance(sender, Disconnect) and sender.write(b"late", True))
        return
    if scope["path"] == "/started":
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        # A response begun through send() is not begun again.
        assert not (isinstance(sender, Disconnect) and sender.respond(200, headers, answer))
        await send({"type": "http.response.body", "body": answer})
        return
    if isinstance(sender, Disconnect) and sender.respond(201, headers, answer):
        return
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module", params=["httptools", "h11"])
def served(request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    with serve_in_thread(app, http=protocol_factory(request.param, Limits())) as handle:
        handle.protocol = request.param  # type: ignore[attr-defined]
        yield handle


def _took(served: ServerHandle) -> bytes:
    return b"took" if served.protocol == "httptools" else b"read"  # type: ignore[attr-defined]


def _connect(handle: ServerHandle) -> socket.socket:
    return socket.create_connection(("127.0.0.1", handle.port), timeout=10)


def test_a_body_that_came_with_its_head_is_taken_and_answered_at_once(
    served: ServerHandle,
) -> None:
    with _connect(served) as sock:
        sock.sendall(_request("POST", "/echo", b"ping"))
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert (status, body) == (201, _took(served) + b" ping")
        assert headers[b"content-length"] == b"9"
        # The connection is kept and the next request served the same way.
        sock.sendall(_request("POST", "/echo", b""))
        assert reader.response()[::2] == (201, _took(served) + b" ")


def test_after_the_body_is_taken_receive_waits_for_the_end(served: ServerHandle) -> None:
    with _connect(served) as sock:
        sock.sendall(_request("POST", "/twice", b"ping"))
        assert Reader(sock).response()[::2] == (201, _took(served) + b" ping")


def test_a_body_still_arriving_is_received(served: ServerHandle) -> None:
    with _connect(served) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        time.sleep(0.1)  # the app started with none of the body
        sock.sendall(b"3\r\nabc\r\n0\r\n\r\n")
        assert Reader(sock).response()[::2] == (201, b"read abc")


def test_a_body_behind_expect_100_continue_is_received(served: ServerHandle) -> None:
    with _connect(served) as sock:
        reader = Reader(sock)
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
        )
        assert reader.response()[0] == 100
        sock.sendall(b"ping")
        assert reader.response()[::2] == (201, b"read ping")


def test_pipelined_requests_are_taken_and_answered_in_order(served: ServerHandle) -> None:
    with _connect(served) as sock:
        sock.sendall(b"".join(_request("POST", "/echo", word) for word in (b"a", b"bb", b"ccc")))
        reader = Reader(sock)
        took = _took(served)
        assert [reader.response()[2] for _ in range(3)] == [
            took + b" a",
            took + b" bb",
            took + b" ccc",
        ]


def test_a_started_response_is_written_piece_by_piece(served: ServerHandle) -> None:
    with _connect(served) as sock:
        sock.sendall(_request("POST", "/written", b"abc") + _request("POST", "/echo", b"z"))
        reader = Reader(sock)
        _, headers, body = reader.response()
        assert headers[b"transfer-encoding"] == b"chunked"
        assert body == _took(served) + b" abc"
        assert reader.response()[::2] == (201, _took(served) + b" z")  # kept alive


def test_a_started_response_is_finished_through_send(served: ServerHandle) -> None:
    with _connect(served) as sock:
        sock.sendall(_request("POST", "/started", b"x"))
        assert Reader(sock).response()[::2] == (200, _took(served) + b" x")


def test_a_head_request_answered_at_once_sends_no_body(served: ServerHandle) -> None:
    with _connect(served) as sock:
        sock.sendall(_request("HEAD", "/echo") + _request("POST", "/echo", b"z"))
        reader = Reader(sock)
        status, headers, _ = reader.response(head_only=True)
        assert status == 201 and headers[b"content-length"] == b"5"
        assert reader.response()[::2] == (201, _took(served) + b" z")


_ANSWER = (
    b'{"id":"c","object":"chat.completion","created":1,"model":"proxied","choices":'
    b'[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
)


_EVENTS = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"proxied",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}'
    b"\n\n"
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"proxied",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


async def _answer_in_one_write(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream that writes each answer's head and body at once (as vLLM's server
    does once under load, and the benchmarks' upstream always)."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            break
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        body = await reader.readexactly(length)
        kind, answer = b"application/json", _ANSWER
        if b'"stream":true' in body:
            kind, answer = b"text/event-stream", _EVENTS
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (kind, len(answer), answer)
        )
    writer.close()


async def _coroutines_per_request(
    config_path: Any, runs: int, *, stream: bool = False, path: str = "/v1/chat/completions"
) -> dict[str, float]:
    """Coroutine frames of the gateway's modules started per proxied request, with
    the upstream, the gateway's server and its client on this thread's loop (a profile
    hook sees one thread)."""
    import uvicorn
    import yaml

    from gateway.app import create_app

    upstream = await asyncio.start_server(_answer_in_one_write, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}/v1"
    deployment = {"model": "openai/proxied", "api_base": base, "api_key": "k"}
    config_path.write_text(
        yaml.safe_dump({"model_list": [{"model_name": "proxied", "litellm_params": deployment}]})
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(str(config_path)),
        http=protocol_factory("httptools", Limits()),
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    body = b'{"model":"proxied","max_tokens":16,"messages":[{"role":"user","content":"hi"}]%s}' % (
        b',"stream":true' if stream else b""
    )
    request = (
        b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
    )
    started: Counter[str] = Counter()
    kept: list[Any] = []  # the frames: their ids stay unique while counted

    def profile(frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        if (
            event == "call"
            and code.co_flags & inspect.CO_COROUTINE
            and frame.f_globals.get("__name__", "").startswith("gateway")
            and all(frame is not other for other in kept[-64:])
        ):
            kept.append(frame)
            started[code.co_qualname] += 1

    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def one() -> None:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        if stream:  # chunked, to its last chunk (an SSE event never ends in "0")
            events = await reader.readuntil(b"\r\n0\r\n\r\n")
            assert b"data: [DONE]" in events or b"message_stop" in events, events
            return
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)

    try:
        for _ in range(3):
            await one()
        sys.setprofile(profile)
        try:
            for _ in range(runs):
                await one()
        finally:
            sys.setprofile(None)
    finally:
        writer.close()
        server.should_exit = True
        await serving
        upstream.close()
    return {name: n / runs for name, n in started.items()}


def test_a_proxied_json_request_takes_its_body_and_answers_at_once(tmp_path: Any) -> None:
    """Through the gateway's app on its own server: the endpoint reads the body and
    writes the answer without ``receive``/``send`` coroutines, and an upstream answer
    that came whole with its head is read without ``read`` coroutines."""
    per_request = asyncio.run(_coroutines_per_request(tmp_path / "config.yaml", runs=20))
    assert per_request.get("ChatCompletions.handle") == 1, per_request  # (the hook saw it)
    for name in ("_Cycle.receive", "_Cycle.send", "Runtime.read_body", "Response.read", "_read"):
        assert name not in per_request, per_request


def test_a_proxied_stream_writes_its_chunks_without_send(tmp_path: Any) -> None:
    """A stream's chunks and its end go out through ``Disconnect.write``: ``send()``
    runs once a stream, for its head."""
    per_stream = asyncio.run(
        _coroutines_per_request(tmp_path / "config.yaml", runs=20, stream=True)
    )
    assert per_stream.get("ChatCompletions.handle") == 1, per_stream
    assert per_stream.get("_Cycle.send") == 1, per_stream


def test_a_front_door_stream_writes_its_events_without_send(tmp_path: Any) -> None:
    """The same for a front door's stream (Anthropic's /v1/messages here: one writer serves
    them all)."""
    per_stream = asyncio.run(
        _coroutines_per_request(tmp_path / "config.yaml", runs=20, stream=True, path="/v1/messages")
    )
    assert per_stream.get("_Cycle.send") == 1, per_stream
