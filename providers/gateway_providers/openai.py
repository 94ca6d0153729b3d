"""Any OpenAI-compatible upstream: OpenAI, vLLM, TGI, llama.cpp, Ollama, another gateway.

Serves the ``openai/``, ``hosted_vllm/`` and ``openai_like/`` prefixes. Requests go
through the runtime's pooled aiohttp session (``gateway.http.HTTPClients``, one per app
and event loop); streams are relayed event by event as they arrive, and every upstream
failure becomes a ``gateway.errors`` error that keeps its status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import anyio
import msgspec

from gateway import http as gateway_http
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
from gateway.http import HTTPClients, current
from gateway.provider import ChatCall, EmbeddingCall, ImageCall, Provider
from gateway.streaming import relay_hint
from gateway.types import EmbeddingResponse, ImageResponse, ModelResponse

__all__ = ["DEFAULT_API_BASE", "OpenAIProvider"]

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

# Headers that describe one hop or the body we build; never copied from anyone.
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

# A caller's headers never carry credentials upstream: the deployment's key is the one.
_CALLER_BLOCKED_HEADERS = _HOP_HEADERS | {
    "api-key",
    "authorization",
    "cookie",
    "openai-organization",
    "openai-project",
    "x-api-key",
}

_SECRETS = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{3,}|(?<=Bearer )\S+", re.IGNORECASE)
# URLs, IPv4 and bracketed IPv6 addresses (with ports): an upstream's message may name
# internal hosts the client must not learn.
_ADDRESSES = re.compile(
    r"\b[a-z][a-z0-9+.-]*://\S+|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\[[0-9a-f:.]+\](?::\d+)?",
    re.IGNORECASE,
)
_MESSAGE_CAP = 300  # characters of an upstream's message a client gets

logger = logging.getLogger("gateway.upstream")
_DRAIN_AFTER_DONE = 0.5  # seconds to wait for the body's end after [DONE]


# Errors. The client gets the status and a short message with secrets and addresses
# taken out; the whole story (URL, upstream body, low-level error) goes to the log.


def _redact(text: str, api_key: str | None) -> str:
    if api_key:
        text = text.replace(api_key, "[REDACTED]")
    return _SECRETS.sub("[REDACTED]", text)


def _public(text: str, target: _Target) -> str:
    """An upstream's message as a client may see it: no secrets, no addresses, short."""
    text = _redact(text, target.api_key)
    host = target.host
    if host:
        text = re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w-])", "[UPSTREAM]", text, flags=re.I)
    text = _ADDRESSES.sub("[ADDRESS]", text)
    if len(text) > _MESSAGE_CAP:
        text = text[: _MESSAGE_CAP - 3] + "..."
    return text


def _log(level: int, what: str, target: _Target, path: str, detail: str) -> None:
    if logger.isEnabledFor(level):
        url = target.url(path)
        logger.log(level, "%s from %s: %s", what, url, _redact(detail, target.api_key))


def _upstream_error(
    response: aiohttp.ClientResponse, body: bytes, target: _Target, path: str
) -> GatewayError:
    status = response.status
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
    detail = body[:2000].decode("utf-8", "replace")
    location = response.headers.get("location")
    if location:
        detail = f"Location: {location}; {detail}"
    level = logging.WARNING if status >= 500 or status < 400 else logging.INFO
    _log(level, f"upstream answered HTTP {status}", target, path, detail)
    if not message or 300 <= status < 400:
        # Not an API error object (an HTML page, a proxy's text, a redirect): its text is
        # the upstream's business, not the client's.
        message = f"upstream answered HTTP {status} {response.reason or ''}".strip()
    if not isinstance(message, str):
        message = msgspec.json.encode(message).decode()
    kwargs: dict[str, Any] = {
        "param": param if isinstance(param, str) else None,
        "code": _public(str(code), target) if code is not None else None,
    }
    retry_after = response.headers.get("retry-after")
    if retry_after is not None:
        kwargs["headers"] = {"Retry-After": retry_after}
    message = _public(message, target)
    if status == 400 and code == "context_length_exceeded":
        return ContextWindowExceededError(message, **kwargs)
    if 300 <= status < 400:
        return BadGatewayError(
            f"upstream answered a redirect ({status}); redirects are not followed"
        )
    return error_for_status(status, message, **kwargs)


def _transport_error(exc: aiohttp.ClientError, target: _Target, path: str) -> GatewayError:
    name = _TIMEOUT_NAMES.get(type(exc), type(exc).__name__)
    _log(logging.WARNING, f"upstream call failed ({name})", target, path, str(exc) or name)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return GatewayTimeoutError(f"upstream timed out ({name})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return APIConnectionError(f"cannot connect to the upstream ({name})")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return BadGatewayError(f"upstream closed the connection mid-response ({name})")
    return BadGatewayError(f"upstream call failed ({name})")


# httpx's names for aiohttp's timeouts: the one that fired, in words operators know.
_TIMEOUT_NAMES: dict[type[BaseException], str] = {
    aiohttp.ConnectionTimeoutError: "ConnectTimeout",
    aiohttp.SocketTimeoutError: "ReadTimeout",
}


@contextlib.contextmanager
def _mapped(target: _Target, path: str) -> Iterator[None]:
    """Every aiohttp failure of one upstream call as a gateway error, mapped once."""
    try:
        yield
    except aiohttp.ClientError as exc:
        raise _transport_error(exc, target, path) from None


def _event_error(item: Any, target: _Target) -> GatewayError:
    error = item.get("error") if isinstance(item, dict) else item
    if isinstance(error, dict):
        message = error.get("message") or msgspec.json.encode(error).decode()
        code = error.get("code")
    else:
        message, code = str(error), None
    status = code if isinstance(code, int) else None
    if status is None and isinstance(code, str) and code.isdigit():
        status = int(code)
    message = _public(str(message), target)
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
    content: bytes,
    decoder: msgspec.json.Decoder[T],
    cls: type[T],
    what: str,
    target: _Target,
    path: str,
) -> T:
    data: Any = None
    try:
        # Every field of the response types has a default, so an error object would
        # decode as an empty answer: look for one first (a substring scan is cheap).
        if b'"error"' in content:
            data = _decoder.decode(content)
            if _is_error(data):
                raise _event_error(data, target)
        return decoder.decode(content)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        detail = f"{exc}: {content[:2000].decode('utf-8', 'replace')!r}"
        _log(logging.WARNING, f"upstream sent a {what} that is not JSON", target, path, detail)
        raise BadGatewayError(f"upstream sent a {what} that is not valid JSON") from None
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


class _SSEParser:
    """``(event, data)`` per server-sent event, parsed incrementally from the bytes.

    Lines end in LF, CRLF or a lone CR, as the SSE spec allows. A line or an event
    longer than ``cap`` bytes is a 502: an upstream that never sends a newline must not
    cost minutes of CPU and all the memory. Pending bytes are kept as a list of pieces
    (joined once a line ends), so a long line costs linear time.
    """

    __slots__ = ("cap", "data", "data_size", "event", "parts", "size", "skip_lf")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []  # the unfinished line
        self.size = 0  # its length
        self.data: list[bytes] = []
        self.data_size = 0
        self.event = b""
        self.skip_lf = False  # the last piece ended in CR: an LF next completes a CRLF

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        if self.skip_lf:
            self.skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        # Fast path: one whole ``data:`` event per network read, the common case.
        if (
            not self.parts
            and not self.data
            and not self.event
            and chunk.startswith(b"data: ")
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
            and b"\r" not in chunk
            and len(chunk) <= self.cap
        ):
            return [(b"", chunk[6:-2])]
        if b"\n" not in chunk and b"\r" not in chunk:
            self.parts.append(chunk)
            self.size += len(chunk)
            if self.size > self.cap:
                raise self._too_long()
            return []
        buffer = b"".join((*self.parts, chunk)) if self.parts else chunk
        if b"\r" in buffer:
            self.skip_lf = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, rest = buffer.split(b"\n")
        self.parts = [rest] if rest else []
        self.size = len(rest)
        if self.size > self.cap:
            raise self._too_long()
        out: list[tuple[bytes, bytes]] = []
        for line in lines:
            self._line(line, out)
        return out

    def end(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if self.parts:
            self._line(b"".join(self.parts), out)
            self.parts = []
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[tuple[bytes, bytes]]) -> None:
        if not line:
            if self.data:
                out.append((self.event, b"\n".join(self.data)))
                self.data, self.event, self.data_size = [], b"", 0
        elif line.startswith(b"data:"):
            value = line[6:] if line[5:6] == b" " else line[5:]
            self.data.append(value)
            self.data_size += len(value) + 1
            if self.data_size > self.cap:
                raise self._too_long()
        elif line.startswith(b"event:"):
            self.event = line[6:].strip()
        # comments (": ping"), id: and retry: lines carry nothing for us

    def _too_long(self) -> BadGatewayError:
        return BadGatewayError(
            f"upstream sent a stream line or event over {self.cap} bytes "
            "(gateway_settings.upstream.max_event_bytes)"
        )


async def _sse_events(
    chunks: AsyncIterator[bytes], cap: int = 4 * 2**20
) -> AsyncGenerator[tuple[bytes, bytes], None]:
    """``(event, data)`` per server-sent event of a byte stream."""
    parser = _SSEParser(cap)
    async for chunk in chunks:
        for item in parser.feed(chunk):
            yield item
    for item in parser.end():
        yield item


async def _read(response: aiohttp.ClientResponse, cap: int, *, truncate: bool = False) -> bytes:
    """The whole body, decompressed, of at most ``cap`` bytes: more is a 502 (or, with
    ``truncate``, cut). Counted as it arrives, so a 1 GB answer or a gzip bomb is
    stopped at the cap, not held in memory."""
    length = response.content_length
    encoded = "content-encoding" in response.headers
    if length is not None and length <= cap and not encoded:
        return await response.read()  # the framing bounds it
    if length is not None and length > cap and not encoded and not truncate:
        raise _too_big(cap)
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > cap:
            if truncate:
                parts.append(chunk[: cap - size])
                break
            raise _too_big(cap)
        parts.append(chunk)
    return b"".join(parts)


def _too_big(cap: int) -> BadGatewayError:
    return BadGatewayError(
        f"upstream answer is over {cap} bytes (gateway_settings.upstream.max_response_bytes)"
    )


_ERROR_BODY_CAP = 64 * 1024  # of an error answer, only the message is used


# The provider.


def _env(value: Any) -> Any:
    # Library callers may pass config-style ``os.environ/NAME`` values too.
    if isinstance(value, str) and value.startswith("os.environ/"):
        return os.environ.get(value[len("os.environ/") :])
    return value


def _strip(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in _GATEWAY_KEYS}


def _is_openai(base: str) -> bool:
    return urlsplit(base).hostname == "api.openai.com"


class _Target:
    """Where and how one call goes: URL, headers, timeout and extra body fields."""

    __slots__ = ("api_key", "base", "client_extra", "deployment_extra", "headers", "timeout")

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
        key = _env(call.api_key) or _env(params.get("api_key"))
        if not key and _is_openai(self.base):
            # The environment's key is OpenAI's: a self-hosted upstream gets only the key
            # its deployment names (api_key: os.environ/NAME), never this one by default.
            key = os.environ.get("OPENAI_API_KEY")
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
        # The deployment's headers are the operator's (an Azure-style api-key included);
        # a caller's never set credentials or hop headers.
        for name, value in (params.get("extra_headers") or {}).items():
            if name.lower() not in _HOP_HEADERS:
                headers[name.lower()] = str(value)
        for name, value in call.headers.items():
            if name.lower() not in _CALLER_BLOCKED_HEADERS:
                headers[name.lower()] = str(value)
        if gateway_http.trace_headers is not None:  # OpenTelemetry on: this attempt's span
            gateway_http.trace_headers(headers)
        self.headers = headers
        extra = params.get("extra_body")
        self.deployment_extra: dict[str, Any] = extra if isinstance(extra, dict) else {}
        extra = call.optional_params.get("extra_body")
        self.client_extra: dict[str, Any] = extra if isinstance(extra, dict) else {}
        timeout = call.timeout
        if timeout is None:
            timeout = params.get("timeout") or params.get("request_timeout")
        self.timeout = float(timeout) if timeout is not None else None

    @property
    def host(self) -> str | None:
        return urlsplit(self.base).hostname

    def url(self, path: str) -> str:
        return self.base + path

    def body(self, optional_params: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
        """The request body: the caller's parameters, the deployment's extra_body over
        them, the caller's extra_body only where it adds a field, and ``fixed`` (model,
        messages/input/prompt) over everything: a request never picks another model."""
        body = _strip(optional_params)
        body.update(self.deployment_extra)
        for name, value in self.client_extra.items():
            if name not in body and name not in _GATEWAY_KEYS:
                body[name] = value
        body.update(fixed)
        return body


def _session() -> tuple[HTTPClients, aiohttp.ClientSession]:
    clients = current()
    try:
        return clients, clients.upstream_session()
    except RuntimeError:
        raise InternalServerError(
            "the OpenAI-compatible provider runs on an asyncio event loop (uvloop included)"
        ) from None


def _finishes(item: dict[str, Any]) -> bool:
    for choice in item.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason"):
            return True
    return False


class OpenAIProvider(Provider):
    """Forwards chat completions, embeddings and image generation to an OpenAI-style API."""

    name = "openai"

    async def astart(self, settings: Any = None) -> None:
        # The app's session now, on its loop, so the first request does not make it.
        _session()

    async def _send(
        self, target: _Target, path: str, body: dict[str, Any], *, stream: bool
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """The upstream's response and, unless streaming, its whole body."""
        clients, session = _session()
        timeout = clients.upstream_timeout(target.timeout) or session.timeout
        with _mapped(target, path):
            response = await session.post(
                target.url(path),
                data=_encoder.encode(body),
                headers=target.headers,
                allow_redirects=False,
                timeout=timeout,
            )
            try:
                if response.status >= 300:
                    content = await _read(response, _ERROR_BODY_CAP, truncate=True)
                    raise _upstream_error(response, content, target, path)
                if stream:
                    return response, b""
                content = await _read(response, clients.max_response_bytes)
            except BaseException:
                # Unread or cut short: drop the connection rather than pool it.
                response.close()
                raise
        response.release()
        return response, content

    def _chat_body(self, call: ChatCall, target: _Target) -> dict[str, Any]:
        body = target.body(call.optional_params, {"model": call.model, "messages": call.messages})
        if call.stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return body

    async def acompletion(self, call: ChatCall) -> ModelResponse:
        target = _Target(self, call)
        path = "/chat/completions"
        _, content = await self._send(target, path, self._chat_body(call, target), stream=False)
        return _decode(content, _chat_decoder, ModelResponse, "chat completion", target, path)

    async def astream(self, call: ChatCall) -> AsyncIterator[Any]:
        target = _Target(self, call)
        body = self._chat_body(call, target)
        body["stream"] = True
        path = "/chat/completions"
        response, _ = await self._send(target, path, body, stream=True)
        done = finished = False
        parser = _SSEParser(current().max_event_bytes)
        reads = response.content.iter_any()
        try:
            with _mapped(target, path):
                async for chunk in reads:
                    # One read's events, each decoded before the one ahead of it is
                    # yielded: that one is marked held (see RelayHint) when the next
                    # will surely make a chunk too (choices, not a second finish).
                    hint = relay_hint.get()
                    ahead: Any = None
                    for event, data in parser.feed(chunk):
                        if data == b"[DONE]":
                            done = True
                            break
                        try:
                            item = self._stream_item(event, data, target, path)
                        except GatewayError:
                            if ahead is not None:
                                yield ahead
                            raise
                        ends = _finishes(item)
                        if ahead is not None:
                            if hint is not None and item.get("choices") and not (finished and ends):
                                hint.held = ahead
                            yield ahead
                        finished = finished or ends
                        ahead = item
                    if ahead is not None:
                        yield ahead
                    if done:
                        break
                if done:
                    # Read the body's end so the connection goes back to the pool.
                    with anyio.move_on_after(_DRAIN_AFTER_DONE):
                        async for _ in reads:
                            pass
                else:
                    for event, data in parser.end():
                        if data == b"[DONE]":
                            done = True
                            break
                        item = self._stream_item(event, data, target, path)
                        finished = finished or _finishes(item)
                        yield item
            if not done and not finished:
                raise BadGatewayError("upstream stream ended before [DONE] (truncated stream)")
        finally:
            # On a client disconnect this runs while cancelled; closing an unfinished
            # response drops the upstream connection at once (and it is not async).
            if done and response.content.at_eof():
                response.release()
            else:
                response.close()

    def _stream_item(self, event: bytes, data: bytes, target: _Target, path: str) -> Any:
        try:
            item = _decoder.decode(data)
        except msgspec.DecodeError:
            detail = repr(data[:2000].decode("utf-8", "replace"))
            _log(
                logging.WARNING,
                "upstream sent a stream event that is not JSON",
                target,
                path,
                detail,
            )
            raise BadGatewayError("upstream sent a stream event that is not valid JSON") from None
        if not isinstance(item, dict):
            raise BadGatewayError("upstream sent a stream event that is not an object")
        if event == b"error" or ("error" in item and "choices" not in item):
            raise _event_error(item, target)
        return item

    async def aembedding(self, call: EmbeddingCall) -> EmbeddingResponse:
        target = _Target(self, call)
        path = "/embeddings"
        body = target.body(call.optional_params, {"model": call.model, "input": call.input})
        _, content = await self._send(target, path, body, stream=False)
        return _decode(content, _embedding_decoder, EmbeddingResponse, "embedding", target, path)

    async def aimage_generation(self, call: ImageCall) -> ImageResponse:
        target = _Target(self, call)
        path = "/images/generations"
        body = target.body(call.optional_params, {"model": call.model, "prompt": call.prompt})
        _, content = await self._send(target, path, body, stream=False)
        return _decode(content, _image_decoder, ImageResponse, "image response", target, path)
