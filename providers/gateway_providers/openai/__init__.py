"""Any OpenAI-compatible upstream: OpenAI, vLLM, TGI, llama.cpp, Ollama, another gateway.

Serves the ``openai/``, ``hosted_vllm/`` and ``openai_like/`` prefixes. Requests go
through the runtime's upstream pool (``gateway.http.HTTPClients``, one per app and event
loop; the client is ``gateway._h1``); streams are relayed event by event as they
arrive, and every upstream failure becomes a ``gateway.errors`` error that keeps its status.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec

from gateway._aio import within
from gateway._h1 import BodyTooLarge, InvalidHeader, Response
from gateway._h1pool import Pool
from gateway.errors import BadGatewayError, BadRequestError, GatewayError, InternalServerError
from gateway.http import HTTPClients, current
from gateway.provider import ChatCall, EmbeddingCall, ImageCall, Provider
from gateway.streaming import Events
from gateway.types import EmbeddingResponse, ImageResponse, ModelResponse

from ._errors import event_error, is_error, log, mapped, upstream_error
from ._sse import SSEParser
from ._target import DEFAULT_API_BASE, Target

__all__ = ["DEFAULT_API_BASE", "OpenAIProvider"]

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

_DRAIN_AFTER_DONE = 0.5  # seconds to wait for the body's end after [DONE]


async def _drain(reads: AsyncIterator[bytes]) -> None:
    async for _ in reads:
        pass


def _decode(
    content: bytes,
    decoder: msgspec.json.Decoder[T],
    cls: type[T],
    what: str,
    target: Target,
    path: str,
    answers: Callable[[T], bool] | None = None,
) -> T:
    """``content`` as ``cls``; an error object (even with HTTP 200) as its error.

    Every field of the response types has a default, so an error object would decode
    as an empty answer: it is looked for (a substring scan, then a decode) before, or,
    given ``answers`` (whether a decoded answer holds one), only after a decode that
    holds none: a chat answer with content needs no scan (~3k instructions).
    """
    data: Any = None
    try:
        if answers is None and b'"error"' in content:
            data = _decoder.decode(content)
            if is_error(data):
                raise event_error(data, target)
        result = decoder.decode(content)
        if answers is not None and not answers(result) and b'"error"' in content:
            data = _decoder.decode(content)
            if is_error(data):
                raise event_error(data, target)
        return result
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        detail = f"{exc}: {content[:2000].decode('utf-8', 'replace')!r}"
        log(logging.WARNING, f"upstream sent a {what} that is not JSON", target, path, detail)
        raise BadGatewayError(f"upstream sent a {what} that is not valid JSON") from None
    # Valid JSON of another shape: tolerate nulls some servers send for absent fields.
    if data is None:
        data = _decoder.decode(content)
        if answers is not None and is_error(data):
            raise event_error(data, target)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if v is not None}
    try:
        return msgspec.convert(data, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise BadGatewayError(f"upstream sent an invalid {what}: {exc}") from None


def _has_answer(response: ModelResponse) -> bool:
    choices = response.choices
    if not choices:
        return False
    message = choices[0].message
    return message.content is not None or bool(message.tool_calls)


async def _read(response: Response, cap: int, *, truncate: bool = False) -> bytes:
    """The whole body, decompressed, of at most ``cap`` bytes: more is a 502 (or, with
    ``truncate``, cut). Counted as it arrives, so a 1 GB answer or a gzip bomb is
    stopped at the cap, not held in memory."""
    try:
        return await response.read(cap, truncate=truncate)
    except BodyTooLarge:
        raise BadGatewayError(
            f"upstream answer is over {cap} bytes (gateway_settings.upstream.max_response_bytes)"
        ) from None


_ERROR_BODY_CAP = 64 * 1024  # of an error answer, only the message is used


def _pool() -> tuple[HTTPClients, Pool]:
    clients = current()
    try:
        return clients, clients.upstream_pool()
    except RuntimeError:
        raise InternalServerError(
            "the OpenAI-compatible provider runs on an asyncio event loop (uvloop included)"
        ) from None


def _finishes(item: dict[str, Any]) -> bool:
    for choice in item.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason"):
            return True
    return False


def _stream_item(event: bytes, data: bytes, target: Target, path: str) -> Any:
    try:
        item = _decoder.decode(data)
    except msgspec.DecodeError:
        raise _not_json(data, target, path) from None
    _check_item(event, item, target)
    return item


def _not_json(data: bytes, target: Target, path: str) -> BadGatewayError:
    detail = repr(data[:2000].decode("utf-8", "replace"))
    log(logging.WARNING, "upstream sent a stream event that is not JSON", target, path, detail)
    return BadGatewayError("upstream sent a stream event that is not valid JSON")


def _check_item(event: bytes, item: Any, target: Target) -> None:
    """An upstream event's item that is not an object, or an error, raised as one."""
    if item.__class__ is not dict:
        raise BadGatewayError("upstream sent a stream event that is not an object")
    if event == b"error" or ("error" in item and "choices" not in item):
        raise event_error(item, target)


def _last_finishes(items: list[dict[str, Any]]) -> bool:
    """Whether the last of ``items`` with choices finishes (a usage chunk may follow
    the finish): once a read, not a look at every event's choices."""
    for item in reversed(items):
        if item.get("choices"):
            return _finishes(item)
    return False


class OpenAIProvider(Provider):
    """Forwards chat completions, embeddings and image generation to an OpenAI-style API."""

    name = "openai"

    def __init__(self) -> None:
        # Per deployment, what its params fix about a call (``_target.Target``).
        self._fixed: dict[Any, Any] = {}

    async def astart(self, settings: Any = None) -> None:
        # The app's pool now, on its loop, so the first request does not make it.
        _pool()

    async def _send(
        self, target: Target, path: str, body: dict[str, Any], *, stream: bool
    ) -> tuple[Response, bytes]:
        """The upstream's response and, unless streaming, its whole body."""
        clients, pool = _pool()
        with mapped(target, path):
            try:
                response = await pool.request(
                    target.base, path, target.headers, _encoder.encode(body), target.timeout
                )
            except InvalidHeader as exc:
                raise BadRequestError(str(exc), param="extra_headers") from None
            try:
                if response.status >= 300:
                    content = await _read(response, _ERROR_BODY_CAP, truncate=True)
                    raise upstream_error(response, content, target, path)
                if stream:
                    return response, b""
                cap = clients.max_response_bytes
                whole = response.body_at_hand(cap)
                content = whole if whole is not None else await _read(response, cap)
            except BaseException:
                # Unread or cut short: drop the connection rather than pool it.
                response.close()
                raise
        response.release()
        return response, content

    def _chat_body(self, call: ChatCall, target: Target) -> dict[str, Any]:
        body = target.body(call.optional_params, {"model": call.model, "messages": call.messages})
        if call.stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return body

    async def acompletion(self, call: ChatCall) -> ModelResponse:
        target = Target(self, call, self._fixed)
        path = "/chat/completions"
        _, content = await self._send(target, path, self._chat_body(call, target), stream=False)
        return _decode(
            content, _chat_decoder, ModelResponse, "chat completion", target, path, _has_answer
        )

    async def astream(self, call: ChatCall) -> AsyncIterator[Any]:
        target = Target(self, call, self._fixed)
        body = self._chat_body(call, target)
        body["stream"] = True
        path = "/chat/completions"
        response, _ = await self._send(target, path, body, stream=True)
        done = finished = False
        parser = SSEParser(current().max_event_bytes)
        reads = response.iter_chunks()
        try:
            with mapped(target, path):
                async for chunk in reads:
                    # One read's events go on as one ``Events``; those before a bad
                    # one still go first.
                    items = Events()
                    try:
                        for event, data in parser.feed(chunk):
                            if data == b"[DONE]":
                                done = True
                                break
                            # _stream_item inline: a call less an event.
                            try:
                                item = _decoder.decode(data)
                            except msgspec.DecodeError:
                                raise _not_json(data, target, path) from None
                            if event or item.__class__ is not dict or "error" in item:
                                _check_item(event, item, target)
                            items.append(item)
                    except GatewayError:
                        if items:
                            yield items
                        raise
                    if items:
                        if not finished:
                            finished = _last_finishes(items)
                        yield items
                    if done:
                        break
                if done:
                    # Read the body's end so the connection goes back to the pool. Not
                    # anyio.move_on_after: on Python 3.11 its scope and clock cost four
                    # getpid() system calls a stream; within() costs none.
                    with contextlib.suppress(TimeoutError):
                        await within(_DRAIN_AFTER_DONE, _drain(reads))
                else:
                    for event, data in parser.end():
                        if data == b"[DONE]":
                            done = True
                            break
                        item = _stream_item(event, data, target, path)
                        finished = finished or _finishes(item)
                        yield item
            if not done and not finished:
                raise BadGatewayError("upstream stream ended before [DONE] (truncated stream)")
        finally:
            # On a client disconnect this runs while cancelled; closing an unfinished
            # response drops the upstream connection at once (and it is not async).
            if done and response.at_eof:
                response.release()
            else:
                response.close()

    async def aembedding(self, call: EmbeddingCall) -> EmbeddingResponse:
        target = Target(self, call, self._fixed)
        path = "/embeddings"
        body = target.body(call.optional_params, {"model": call.model, "input": call.input})
        _, content = await self._send(target, path, body, stream=False)
        return _decode(content, _embedding_decoder, EmbeddingResponse, "embedding", target, path)

    async def aimage_generation(self, call: ImageCall) -> ImageResponse:
        target = Target(self, call, self._fixed)
        path = "/images/generations"
        body = target.body(call.optional_params, {"model": call.model, "prompt": call.prompt})
        _, content = await self._send(target, path, body, stream=False)
        return _decode(content, _image_decoder, ImageResponse, "image response", target, path)
