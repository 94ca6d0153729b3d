"""The front doors' HTTP endpoints: the chat endpoint's reading, routing, disconnect
watch and error edge (``gateway.app``), with each API's translation around the call."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import anyio
import msgspec
from starlette.types import Receive, Scope, Send

from .._aio import ClientGone
from ..chat import _SSE_HEADERS, _chunk_writer, _stream, _tapped
from ..edge import (
    _CUT,
    _answer,
    _Endpoint,
    _is_cancellation,
    _public,
    _routed_headers,
    _send_json,
    _unexpected,
)
from ..errors import BadRequestError, GatewayError, NotFoundError
from ..router import Routed
from ..runtime import Runtime
from . import completions, messages, responses
from ._chat import ChatIn, EventWriter
from .store import ResponseStore, owner

__all__ = ["routes"]

_encode = msgspec.json.Encoder().encode


async def _write_events(
    scope: Scope, send: Send, routed: Routed, events: EventWriter, done: Callable[[], None]
) -> int:
    """An API's event stream from a routed chat stream (the first chunk is in already);
    the status to count.

    ``events`` is the API's translator (``start``/``feed``/``close``/``fail``); a failure
    after the headers went out is the API's own error event, as in the chat stream.
    """
    status = 200
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_SSE_HEADERS, *_routed_headers(routed)],
        }
    )
    write = _chunk_writer(send)
    try:
        pending = events.start()  # sent with the first chunk's events: one send fewer
        feed = events.feed
        async for chunk in routed.result:
            body = feed(chunk)
            if pending:
                body = pending + body
                pending = b""
            if body and not write(body, True):
                await send({"type": "http.response.body", "body": body, "more_body": True})
        tail = pending + events.close()
        done()
    except GatewayError as exc:
        exc = _public(scope, exc)
        status = exc.status_code
        tail = events.fail(exc)
    except OSError:
        raise ClientGone from None  # the server saw the client go while we wrote
    except BaseException as exc:
        if _is_cancellation(exc):  # as in the chat stream: cut on shutdown, said so
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": events.fail(_CUT)})
            raise
        status = 500
        tail = events.fail(_unexpected(scope, exc))
    try:
        if not write(tail, False):
            await send({"type": "http.response.body", "body": tail, "more_body": False})
    except OSError:
        raise ClientGone from None
    return status


def _nothing() -> None:
    pass


async def _chat(
    endpoint: _Endpoint,
    scope: Scope,
    receive: Receive,
    send: Send,
    chat: ChatIn,
    timeout: float | None,
    answer: Callable[[Any], Any],
    events: EventWriter | None = None,
    done: Callable[[], None] = _nothing,
) -> int | None:
    """One chat call through the router, exactly as the chat endpoint makes it; the
    answer goes through ``answer``, a stream's chunks through ``events``."""
    router = endpoint.runtime.router
    if not chat.stream:
        # The request's key (if any) is charged from the chat answer, before translation.
        plain = _tapped(
            scope,
            lambda: router.chat(chat.model, chat.messages, chat.optional_params, timeout=timeout),
        )

        async def call() -> Routed:
            routed = await plain()
            routed.result = answer(routed.result)
            return routed

        await _answer(scope, receive, send, call)
        return None

    assert events is not None, "a stream needs its API's event writer"

    def write(send: Send, routed: Routed) -> Any:
        return _write_events(scope, send, routed, events, done)

    return await _stream(
        scope,
        receive,
        send,
        _tapped(
            scope,
            lambda: router.chat(
                chat.model,
                chat.messages,
                chat.optional_params,
                stream=True,
                timeout=timeout,
                plain_text=True,
            ),
            chat.messages,
        ),
        write,
        timeout=timeout,
    )


# -- /v1/responses --------------------------------------------------------------------------


class Responses(_Endpoint):
    route = "responses"

    def __init__(self, runtime: Runtime, store: ResponseStore) -> None:
        super().__init__(runtime)
        self.store = store

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> int | None:
        request, data, timeout = await self.read(scope, receive, responses.ResponsesRequest)
        caller = owner(scope)
        history = None
        if request.previous_response_id is not None:
            stored = self.store.get(request.previous_response_id, caller)
            if stored is None:
                raise BadRequestError(
                    f"Previous response with id '{request.previous_response_id}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            history = stored.messages()
        chat = responses.to_chat(request, data, history)
        # The conversation a later request continues: without this one's instructions,
        # which (as in OpenAI's API) do not carry over.
        asked = chat.messages[1:] if request.instructions else chat.messages
        keep = request.store is not False
        store = self.store

        def answer(result: Any) -> dict[str, Any]:
            response = responses.to_response(result, request)
            if keep:
                store.put(response, asked + responses.conversation(response), caller)
            return response

        events = responses.ResponseEvents(request) if chat.stream else None

        def done() -> None:
            if keep and events is not None:
                conversation = asked + responses.conversation(events.response)
                store.put(events.response, conversation, caller, events.body)

        return await _chat(self, scope, receive, send, chat, timeout, answer, events, done)


class ResponseById(_Endpoint):
    route = "responses"
    methods = ("GET", "HEAD", "DELETE")

    def __init__(self, runtime: Runtime, store: ResponseStore) -> None:
        super().__init__(runtime)
        self.store = store

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        response_id = scope["path_params"]["response_id"]
        caller = owner(scope)
        if scope["method"] == "DELETE":
            if not self.store.delete(response_id, caller):
                raise self._missing(response_id)
            body = {"id": response_id, "object": "response.deleted", "deleted": True}
            await _send_json(send, 200, _encode(body))
            return
        stored = self.store.get(response_id, caller)
        if stored is None:
            raise self._missing(response_id)
        await _send_json(send, 200, stored.response)

    @staticmethod
    def _missing(response_id: str) -> NotFoundError:
        return NotFoundError(
            f"Response with id '{response_id}' not found.", param="response_id", code="not_found"
        )


# -- /v1/messages ---------------------------------------------------------------------------


class _Anthropic(_Endpoint):
    """Errors in Anthropic's shape, which its SDK turns into its own exception classes."""

    def render_error(self, exc: GatewayError, request_id: str | None = None) -> bytes:
        body = messages.error_object(exc)
        if request_id is not None:
            body["request_id"] = request_id  # where Anthropic's API puts its own
        return _encode(body)


class Messages(_Anthropic):
    route = "messages"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> int | None:
        request, data, timeout = await self.read(scope, receive, messages.MessagesRequest)
        chat = messages.to_chat(request, data)
        events = messages.MessageEvents(request.model) if chat.stream else None
        return await _chat(
            self,
            scope,
            receive,
            send,
            chat,
            timeout,
            lambda result: messages.to_message(result, request.model),
            events,
        )


class CountTokens(_Anthropic):
    route = "messages_count_tokens"
    calls_model = False  # counted here: no event unless it fails

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, _, _ = await self.read(scope, receive, messages.CountTokensRequest)
        if not self.runtime.router.has_model(request.model):
            raise NotFoundError(f"model: {request.model}", param="model", code="model_not_found")
        tokens = messages.count_tokens(request)
        await _send_json(send, 200, _encode({"input_tokens": tokens}))


# -- /v1/completions ------------------------------------------------------------------------


class Completions(_Endpoint):
    route = "completions"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> int | None:
        request, data, timeout = await self.read(scope, receive, completions.CompletionRequest)
        calls = completions.to_chat(request, data)
        if len(calls) == 1:
            chat = calls[0]
            events = completions.CompletionChunks(request) if chat.stream else None
            return await _chat(
                self,
                scope,
                receive,
                send,
                chat,
                timeout,
                lambda result: completions.to_completion([result], request),
                events,
            )
        router = self.runtime.router

        async def call() -> Routed:
            routed: list[Any] = [None] * len(calls)

            async def one(i: int, chat: ChatIn) -> None:
                routed[i] = await router.chat(
                    chat.model, chat.messages, chat.optional_params, timeout=timeout
                )

            try:
                async with anyio.create_task_group() as tg:
                    for i, chat in enumerate(calls):
                        tg.start_soon(one, i, chat)
            except BaseExceptionGroup as group:
                raise _first(group) from None
            answer = completions.to_completion([r.result for r in routed], request)
            return Routed(answer, routed[0].deployment, max(r.attempts for r in routed))

        await _answer(scope, receive, send, _tapped(scope, call))
        return None


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error a caller sees when several of one request's calls failed: the first."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


# -- /v1/models/{id} ------------------------------------------------------------------------


class ModelById(_Endpoint):
    route = "models"
    methods = ("GET", "HEAD")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        model_id = scope["path_params"]["model_id"]
        runtime = self.runtime
        if not runtime.router.has_model(model_id):
            raise NotFoundError(
                f"The model '{model_id}' does not exist", param="model", code="model_not_found"
            )
        body = {
            "id": model_id,
            "object": "model",
            "created": runtime.started,
            "owned_by": "gateway",
        }
        await _send_json(send, 200, _encode(body))


def routes(runtime: Runtime) -> list[tuple[str, _Endpoint]]:
    """The front doors' paths (each also served under ``/v1``) and their endpoints."""
    settings = runtime.settings
    store = ResponseStore(settings.responses_store_max_items, settings.responses_store_max_bytes)
    return [
        ("/responses", Responses(runtime, store)),
        ("/responses/{response_id}", ResponseById(runtime, store)),
        ("/messages", Messages(runtime)),
        ("/messages/count_tokens", CountTokens(runtime)),
        ("/completions", Completions(runtime)),
        ("/models/{model_id:path}", ModelById(runtime)),
    ]
