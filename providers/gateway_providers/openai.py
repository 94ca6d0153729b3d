"""Any OpenAI-compatible upstream: OpenAI, vLLM, TGI, llama.cpp, Ollama, another gateway.

Serves the ``openai/``, ``hosted_vllm/`` and ``openai_like/`` prefixes. Requests go
through one shared ``httpx.AsyncClient`` per event loop; streams are relayed event by
event as they arrive, and every upstream failure becomes a ``gateway.errors`` error
that keeps its status.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import weakref
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import anyio
import httpx
import msgspec

from gateway.errors import (
    APIConnectionError,
    AuthenticationError,
    BadGatewayError,
    ContextWindowExceededError,
    GatewayError,
    GatewayTimeoutError,
    InternalServerError,
    error_for_status,
)
from gateway.provider import ChatCall, EmbeddingCall, ImageCall, Provider
from gateway.types import EmbeddingResponse, ImageResponse, ModelResponse

__all__ = ["DEFAULT_API_BASE", "OpenAIProvider", "current_client", "pool_stats"]

DEFAULT_API_BASE = "https://api.openai.com/v1"

T = TypeVar("T")


def _enc_hook(obj: Any) -> Any:
    # Messages may hold LiteLLM/pydantic objects; send them as plain JSON.
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    raise NotImplementedError(f"cannot encode {type(obj).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.json.Decoder()
_chat_decoder = msgspec.json.Decoder(ModelResponse)
_embedding_decoder = msgspec.json.Decoder(EmbeddingResponse)
_image_decoder = msgspec.json.Decoder(ImageResponse)

# Keys that steer the gateway and must never reach the upstream's request body.
_GATEWAY_KEYS = frozenset(
    {
        "api_base",
        "api_key",
        "api_version",
        "base_url",
        "caching",
        "context_window_fallbacks",
        "custom_llm_provider",
        "drop_params",
        "extra_body",
        "extra_headers",
        "fallbacks",
        "litellm_call_id",
        "litellm_logging_obj",
        "logger_fn",
        "max_retries",
        "mock_delay",
        "mock_response",
        "model_info",
        "num_retries",
        "proxy_server_request",
        "request_timeout",
        "timeout",
    }
)

# Headers that describe one hop or the body we build; never copied from a caller.
_HOP_HEADERS = frozenset(
    {
        "accept-encoding",
        "connection",
        "content-length",
        "content-type",
        "host",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

_SECRETS = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{3,}|(?<=Bearer )\S+", re.IGNORECASE)
_DRAIN_AFTER_DONE = 0.5  # seconds to wait for the body's end after [DONE]


# The shared client: one per event loop, made lazily or at start-up.


class _Entry:
    __slots__ = ("client", "config", "keeper", "transport")

    def __init__(self, config: tuple[Any, ...]) -> None:
        self.client, self.transport = _new_client(config)
        self.config = config
        self.keeper: asyncio.Task[None] | None = None


# One entry per loop. The entry's keeper task closes the client when its loop shuts down
# (asyncio.run and friends cancel leftover tasks) and removes the entry.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Entry] = weakref.WeakKeyDictionary()
_upstream_settings: Any = None


def _config(upstream: Any) -> tuple[Any, ...]:
    def get(name: str, default: Any) -> Any:
        value = getattr(upstream, name, None)
        return default if value is None else value

    return (
        int(get("max_connections", 1000)),
        int(get("max_keepalive_connections", 100)),
        float(get("keepalive_expiry", 30.0)),
        float(get("connect_timeout", 5.0)),
        float(get("read_timeout", 600.0)),
        bool(get("http2", False)) and importlib.util.find_spec("h2") is not None,
    )


def _new_client(config: tuple[Any, ...]) -> tuple[httpx.AsyncClient, httpx.AsyncHTTPTransport]:
    max_conn, max_keepalive, expiry, connect, read, http2 = config
    transport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(
            max_connections=max_conn,
            max_keepalive_connections=max_keepalive,
            keepalive_expiry=expiry,
        ),
        http2=http2,
    )
    client = httpx.AsyncClient(
        transport=transport,
        # httpx's 5 s default read timeout is far too short for LLM calls.
        timeout=httpx.Timeout(connect=connect, read=read, write=read, pool=read),
        follow_redirects=False,
    )
    # The client builds requests (headers, timeouts); the transport sends them. Skipping
    # the client's send skips its cookie jar, auth and redirect steps: a quarter of the
    # gateway's own time per proxied request. And a cookie jar shared by every tenant's
    # requests would leak one upstream Set-Cookie into everybody's later calls.
    return client, transport


async def _keep(loop: asyncio.AbstractEventLoop, entry: _Entry) -> None:
    # asyncio.run() (and anyio.run, uvicorn, the sync library calls) cancel every task
    # still running when their loop ends: that is when a lazily made client is closed.
    try:
        await asyncio.Event().wait()
    finally:
        if _clients.get(loop) is entry:
            del _clients[loop]
        await entry.client.aclose()


def _install(loop: asyncio.AbstractEventLoop, config: tuple[Any, ...]) -> _Entry:
    entry = _Entry(config)
    _clients[loop] = entry
    entry.keeper = loop.create_task(_keep(loop, entry), name="gateway-openai-client")
    return entry


def _running_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise InternalServerError(
            "the OpenAI-compatible provider runs on an asyncio event loop (uvloop included)"
        ) from None


def _current_entry() -> _Entry:
    loop = _running_loop()
    entry = _clients.get(loop)
    if entry is None or entry.client.is_closed:
        if entry is not None and entry.keeper is not None:
            entry.keeper.cancel()
        entry = _install(loop, _config(_upstream_settings))
    return entry


def current_client() -> httpx.AsyncClient:
    """The shared upstream client of the running event loop (made on first use)."""
    return _current_entry().client


def pool_stats(client: httpx.AsyncClient | None = None) -> dict[str, int]:
    """Connection-pool counts of a client (default: this loop's), for health and tests.

    ``active`` connections carry a request now; ``idle`` ones wait for reuse;
    ``waiting`` requests wait for a connection.
    """
    if client is None:
        client = current_client()
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    connections = list(getattr(pool, "connections", ()))
    closed = sum(1 for c in connections if c.is_closed())
    idle = sum(1 for c in connections if not c.is_closed() and c.is_idle())
    requests = list(getattr(pool, "_requests", ()))
    return {
        "connections": len(connections) - closed,
        "idle": idle,
        "active": len(connections) - closed - idle,
        "requests": len(requests),
        "waiting": sum(1 for r in requests if getattr(r, "connection", None) is None),
    }


# Errors.


def _redact(text: str, api_key: str | None) -> str:
    if api_key:
        text = text.replace(api_key, "[REDACTED]")
    return _SECRETS.sub("[REDACTED]", text)


def _upstream_error(response: httpx.Response, body: bytes, api_key: str | None) -> GatewayError:
    status = response.status_code
    message: Any = None
    param = code = None
    try:
        data = _decoder.decode(body) if body else None
    except msgspec.DecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or error.get("msg")
            param, code = error.get("param"), error.get("code")
        elif error is not None:
            message = error
    if not message:
        text = body.decode("utf-8", "replace").strip()[:500]
        message = text or f"upstream answered HTTP {status} {response.reason_phrase}".strip()
    if not isinstance(message, str):
        message = msgspec.json.encode(message).decode()
    kwargs: dict[str, Any] = {
        "param": param if isinstance(param, str) else None,
        "code": _redact(str(code), api_key) if code is not None else None,
    }
    retry_after = response.headers.get("retry-after")
    if retry_after is not None:
        kwargs["headers"] = {"Retry-After": retry_after}
    message = _redact(message, api_key)
    if status == 400 and code == "context_length_exceeded":
        return ContextWindowExceededError(message, **kwargs)
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        return BadGatewayError(f"upstream answered a redirect ({status}) to {location!r}")
    return error_for_status(status, message, **kwargs)


def _transport_error(exc: httpx.HTTPError, url: str, api_key: str | None) -> GatewayError:
    detail = _redact(str(exc) or type(exc).__name__, api_key)
    if isinstance(exc, httpx.TimeoutException):
        return GatewayTimeoutError(f"upstream {url} timed out ({type(exc).__name__}): {detail}")
    if isinstance(exc, httpx.ConnectError):
        return APIConnectionError(f"cannot connect to upstream {url}: {detail}")
    return BadGatewayError(f"upstream {url} failed ({type(exc).__name__}): {detail}")


def _event_error(item: Any, api_key: str | None) -> GatewayError:
    error = item.get("error") if isinstance(item, dict) else item
    if isinstance(error, dict):
        message = error.get("message") or msgspec.json.encode(error).decode()
        code = error.get("code")
    else:
        message, code = str(error), None
    status = code if isinstance(code, int) else None
    if status is None and isinstance(code, str) and code.isdigit():
        status = int(code)
    message = _redact(str(message), api_key)
    if status is not None and 400 <= status < 600:
        return error_for_status(status, message)
    return BadGatewayError(f"upstream stream error: {message}")


def _is_error(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and data.get("error") is not None
        and not data.get("choices")
        and not data.get("data")
    )


def _decode(
    content: bytes, decoder: msgspec.json.Decoder[T], cls: type[T], what: str, api_key: str | None
) -> T:
    data: Any = None
    try:
        # Every field of the response types has a default, so an error object would
        # decode as an empty answer: look for one first (a substring scan is cheap).
        if b'"error"' in content:
            data = _decoder.decode(content)
            if _is_error(data):
                raise _event_error(data, api_key)
        return decoder.decode(content)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        snippet = content[:200].decode("utf-8", "replace")
        raise BadGatewayError(
            f"upstream sent a {what} that is not valid JSON ({exc}): {snippet!r}"
        ) from None
    # Valid JSON of another shape: tolerate nulls some servers send for absent fields.
    if data is None:
        data = _decoder.decode(content)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if v is not None}
    try:
        return msgspec.convert(data, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise BadGatewayError(f"upstream sent an invalid {what}: {exc}") from None


# SSE.


async def _sse_events(response: httpx.Response) -> AsyncIterator[tuple[bytes, bytes]]:
    """``(event, data)`` per server-sent event, parsed incrementally from the bytes."""
    buffer = b""
    data: list[bytes] = []
    event = b""
    # aiter_raw skips httpx's decoder layer; it is only needed for a compressed body.
    encoded = response.headers.get("content-encoding", "identity") != "identity"
    async for chunk in response.aiter_bytes() if encoded else response.aiter_raw():
        # Fast path: one whole ``data:`` event per network read, the common case.
        if (
            not buffer
            and not data
            and not event
            and chunk.startswith(b"data: ")
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
        ):
            yield b"", chunk[6:-2]
            continue
        buffer = buffer + chunk if buffer else chunk
        if b"\n" not in buffer:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield event, b"\n".join(data)
                    data, event = [], b""
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                event = line[6:].strip()
            # comments (": ping"), id: and retry: lines carry nothing for us
    if buffer.startswith(b"data:"):
        data.append(buffer[6:] if buffer[5:6] == b" " else buffer[5:])
    if data:
        yield event, b"\n".join(data)


# The provider.


def _env(value: Any) -> Any:
    # Library callers may pass config-style ``os.environ/NAME`` values too.
    if isinstance(value, str) and value.startswith("os.environ/"):
        return os.environ.get(value[len("os.environ/") :])
    return value


def _strip(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in _GATEWAY_KEYS}


class _Target:
    """Where and how one call goes: URL, headers, timeout and extra body fields."""

    __slots__ = ("api_key", "base", "extra_body", "headers", "timeout")

    def __init__(self, provider: OpenAIProvider, call: ChatCall | EmbeddingCall | ImageCall):
        params = call.litellm_params
        env = provider.name.upper() if provider.name else "OPENAI"
        base = (
            _env(call.api_base)
            or _env(params.get("api_base"))
            or _env(params.get("base_url"))
            or os.environ.get(f"{env}_API_BASE")
            or (os.environ.get("OPENAI_BASE_URL") if env == "OPENAI" else None)
            or DEFAULT_API_BASE
        )
        self.base = str(base).rstrip("/")
        key = _env(call.api_key) or _env(params.get("api_key")) or os.environ.get(f"{env}_API_KEY")
        self.api_key: str | None = str(key) if key else None
        if self.api_key is None and self.base == DEFAULT_API_BASE:
            raise AuthenticationError(
                "No API key for OpenAI: set api_key in the deployment's litellm_params "
                "(e.g. api_key: os.environ/OPENAI_API_KEY) or the OPENAI_API_KEY "
                "environment variable, or point api_base at an OpenAI-compatible server.",
                code="missing_api_key",
            )
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        if params.get("organization"):
            headers["openai-organization"] = str(params["organization"])
        for extra in (params.get("extra_headers"), call.headers):
            for name, value in (extra or {}).items():
                if name.lower() not in _HOP_HEADERS:
                    headers[name.lower()] = str(value)
        self.headers = headers
        self.extra_body: dict[str, Any] = {}
        for extra in (params.get("extra_body"), call.optional_params.get("extra_body")):
            if isinstance(extra, dict):
                self.extra_body.update(extra)
        timeout = call.timeout
        if timeout is None:
            timeout = params.get("timeout") or params.get("request_timeout")
        self.timeout = float(timeout) if timeout is not None else None

    def url(self, path: str) -> str:
        return self.base + path

    def httpx_timeout(self, client: httpx.AsyncClient) -> httpx.Timeout:
        default = client.timeout
        if self.timeout is None:
            return default
        return httpx.Timeout(
            connect=min(default.connect or self.timeout, self.timeout),
            read=self.timeout,
            write=self.timeout,
            pool=self.timeout,
        )


class OpenAIProvider(Provider):
    """Forwards chat completions, embeddings and image generation to an OpenAI-style API."""

    name = "openai"

    async def astart(self, settings: Any = None) -> None:
        global _upstream_settings
        upstream = getattr(settings, "upstream", None)
        if upstream is not None:
            _upstream_settings = upstream
        config = _config(_upstream_settings)
        loop = _running_loop()
        entry = _clients.get(loop)
        if entry is not None and entry.config != config:
            await self.aclose()
            entry = None
        if entry is None or entry.client.is_closed:
            _install(loop, config)

    async def aclose(self) -> None:
        entry = _clients.pop(_running_loop(), None)
        if entry is not None:
            if entry.keeper is not None:
                entry.keeper.cancel()
            await entry.client.aclose()

    async def _send(
        self, target: _Target, path: str, body: dict[str, Any], *, stream: bool
    ) -> httpx.Response:
        entry = _current_entry()
        client = entry.client
        url = target.url(path)
        request = client.build_request(
            "POST",
            url,
            content=_encoder.encode(body),
            headers=target.headers,
            timeout=target.httpx_timeout(client),
        )
        try:
            response = await entry.transport.handle_async_request(request)
            if not stream:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except httpx.HTTPError as exc:
            raise _transport_error(exc, url, target.api_key) from None
        if response.status_code >= 300:
            try:
                content = await response.aread() if stream else response.content
            except httpx.HTTPError:
                content = b""
            finally:
                if stream:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
            raise _upstream_error(response, content, target.api_key)
        return response

    def _chat_body(self, call: ChatCall, target: _Target) -> dict[str, Any]:
        body: dict[str, Any] = {"model": call.model, "messages": call.messages}
        body.update(_strip(call.optional_params))
        body.update(target.extra_body)
        if call.stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return body

    async def acompletion(self, call: ChatCall) -> ModelResponse:
        target = _Target(self, call)
        response = await self._send(
            target, "/chat/completions", self._chat_body(call, target), stream=False
        )
        return _decode(
            response.content, _chat_decoder, ModelResponse, "chat completion", target.api_key
        )

    async def astream(self, call: ChatCall) -> AsyncIterator[Any]:
        target = _Target(self, call)
        body = self._chat_body(call, target)
        body["stream"] = True
        response = await self._send(target, "/chat/completions", body, stream=True)
        done = finished = False
        try:
            events = _sse_events(response)
            try:
                async for event, data in events:
                    if data == b"[DONE]":
                        done = True
                        break
                    try:
                        item = _decoder.decode(data)
                    except msgspec.DecodeError:
                        snippet = data[:200].decode("utf-8", "replace")
                        raise BadGatewayError(
                            f"upstream sent a stream event that is not valid JSON: {snippet!r}"
                        ) from None
                    if not isinstance(item, dict):
                        raise BadGatewayError("upstream sent a stream event that is not an object")
                    if event == b"error" or ("error" in item and "choices" not in item):
                        raise _event_error(item, target.api_key)
                    for choice in item.get("choices") or ():
                        if isinstance(choice, dict) and choice.get("finish_reason"):
                            finished = True
                    yield item
                if done:
                    # Read the body's end so the connection goes back to the pool.
                    with anyio.move_on_after(_DRAIN_AFTER_DONE):
                        async for _ in events:
                            pass
            except httpx.HTTPError as exc:
                url = target.url("/chat/completions")
                raise _transport_error(exc, url, target.api_key) from None
            finally:
                await events.aclose()
            if not done and not finished:
                raise BadGatewayError("upstream stream ended before [DONE] (truncated stream)")
        finally:
            # Shielded: on a client disconnect this runs while cancelled, and closing
            # an unfinished response drops the upstream connection at once.
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def aembedding(self, call: EmbeddingCall) -> EmbeddingResponse:
        target = _Target(self, call)
        body: dict[str, Any] = {"model": call.model, "input": call.input}
        body.update(_strip(call.optional_params))
        body.update(target.extra_body)
        response = await self._send(target, "/embeddings", body, stream=False)
        return _decode(
            response.content, _embedding_decoder, EmbeddingResponse, "embedding", target.api_key
        )

    async def aimage_generation(self, call: ImageCall) -> ImageResponse:
        target = _Target(self, call)
        body: dict[str, Any] = {"model": call.model, "prompt": call.prompt}
        body.update(_strip(call.optional_params))
        body.update(target.extra_body)
        response = await self._send(target, "/images/generations", body, stream=False)
        return _decode(
            response.content, _image_decoder, ImageResponse, "image response", target.api_key
        )
