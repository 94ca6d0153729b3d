"""One HTTP request as the callbacks see it (``RequestLog``): made after auth, it runs
the proxy hooks on the request path, notes the answer, and once the response is out is
queued as is; its logging event is built later, by the task that runs the callbacks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ._callback_events import _NOT_OPTIONAL, Event, _datetime, _report, build_kwargs, new_call_id
from .errors import GatewayError
from .keys.spend import chunk_usage, result_usage
from .proxy._types import UserAPIKeyAuth

_UNREAD = (None, None)  # an event's times when no logger reads them

if TYPE_CHECKING:
    from ._callbacks import Callbacks

__all__ = ["CALL_TYPES", "RequestLog", "hook_error"]

logger = logging.getLogger("gateway.callbacks")

# Routes of the HTTP gateway -> LiteLLM's call_type, as its proxy hooks receive it.
CALL_TYPES = {
    "chat_completions": "completion",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "images_generations": "image_generation",
    "responses": "responses",
    "messages": "anthropic_messages",
}


def hook_error(exc: BaseException) -> GatewayError:
    """What the client gets when a hook raises: a gateway error as it is; else the
    exception's ``status_code`` (FastAPI's ``HTTPException`` and the like, 400-599) and
    its ``detail`` or text; else a 400."""
    if isinstance(exc, GatewayError):
        return exc
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or not 400 <= status <= 599:
        status = 400
    detail = getattr(exc, "detail", None)
    if isinstance(detail, dict):
        detail = detail.get("error") or detail.get("message") or detail
    message = str(detail if detail is not None else exc) or type(exc).__name__
    kind = "invalid_request_error" if status < 500 else "api_error"
    return GatewayError(message, status_code=status, type=kind, retryable=False)


def _user(grant: Any) -> UserAPIKeyAuth:
    entry = getattr(grant, "entry", None)
    if entry is None:
        return UserAPIKeyAuth()
    return UserAPIKeyAuth(
        api_key=entry.token,
        key_alias=entry.alias,
        models=sorted(entry.models) if entry.models else [],
        spend=entry.spend,
        max_budget=entry.max_budget,
    )


class RequestLog(msgspec.Struct):
    """One HTTP request as the callbacks see it: made after auth, finished in the
    endpoint's ``finally`` (after the response went out), then queued as it is. A Struct:
    its defaults are set in C, per request."""

    callbacks: Callbacks
    # The request's virtual key grant and record (from its scope; not the scope itself,
    # which holds this log: a cycle would leave every request to the garbage collector).
    grant: Any
    request_id: str | None
    route: str
    call_type: str
    started: float  # epoch seconds
    call_id: str = ""  # made with the event, off the request path
    data: dict[str, Any] = {}
    user: UserAPIKeyAuth | None = None
    called: bool = False
    deployment: str | None = None
    response: Any = None
    error: BaseException | None = None
    first_token_at: float | None = None
    stream_chunks: list[Any] | None = None
    stream_usage: tuple[int, int] | None = None
    cached_body: bytes | None = None
    status: int = 200
    ended: float = 0.0

    async def before(self, data: dict[str, Any]) -> dict[str, Any]:
        """The pre-call hooks, in order; each may return a changed body or raise."""
        self.data = data
        callbacks = self.callbacks
        if not callbacks.pre_call:
            return data
        self.user = user = _user(self.grant)
        for callback in callbacks.pre_call:
            try:
                changed = await callback.async_pre_call_hook(
                    user, callbacks.cache, data, self.call_type
                )
            except Exception as exc:
                raise hook_error(exc) from exc
            if changed is not None:
                if not isinstance(changed, dict):
                    raise GatewayError(
                        f"callback {type(callback).__name__}.async_pre_call_hook returned "
                        f"{type(changed).__name__}, not the request body (a dict)",
                        status_code=500,
                        type="api_error",
                    )
                data = changed
        self.data = data
        return data

    def tap(self, call: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        """``call`` (returning a ``Routed``) with its answer noted and the post-call hooks run."""
        if not self.callbacks.taps:  # nothing reads the answer: the outcome is the edge's
            self.called = True
            return call

        async def tapped() -> Any:
            self.called = True
            try:
                routed = await call()
            except Exception as exc:
                self.error = exc
                await self._failed(exc)
                raise
            self.deployment = routed.deployment
            result = routed.result
            if hasattr(result, "__aiter__") and hasattr(result, "aclose"):
                self.first_token_at = time.time()
                if self.callbacks.keep_chunks:
                    self.stream_chunks = []
                    routed.result = _LoggedStream(result, self)
                return routed
            for callback in self.callbacks.post_success:
                if self.user is None:
                    self.user = _user(self.grant)
                try:
                    changed = await callback.async_post_call_success_hook(
                        self.data, self.user, result
                    )
                except Exception as exc:
                    raise hook_error(exc) from exc
                if changed is not None:
                    result = changed
            routed.result = self.response = result
            return routed

        return tapped

    def cached(self, body: bytes) -> None:
        """The answer came from the response cache (``body``, JSON or a stream's events):
        a success event with LiteLLM's ``cache_hit: true`` and no cost. Decoded later,
        by the callback task."""
        self.called = True
        self.cached_body = body

    async def _failed(self, exc: BaseException) -> None:
        for callback in self.callbacks.post_failure:
            if self.user is None:
                self.user = _user(self.grant)
            try:
                await callback.async_post_call_failure_hook(self.data, exc, self.user)
            except Exception:
                _report(callback, "async_post_call_failure_hook")

    def finish(self, status: int, error: BaseException | None) -> None:
        """The response is out: queue the success or failure event. Its kwargs are built
        later, by the task that runs the callbacks, not on the request's time."""
        if not self.called and error is None:
            return  # answered without a model call (count_tokens): nothing to log
        callbacks = self.callbacks
        if not callbacks.taps:  # no logger reads the event: its outcome is all it is
            callbacks.emit(callbacks.unread[error is None and status < 400])
            return
        error = self.error or error
        if error is None and status >= 400:
            error = GatewayError(f"request ended with HTTP {status}", status_code=status)
        self.status, self.error, self.ended = status, error, time.time()
        callbacks.emit(self)

    def resolve(self) -> Event:
        """The queued request's event (run by the callbacks' task)."""
        success = self.error is None
        if not self.callbacks.reads_any[success]:  # no logger reads any of it
            return self.callbacks.unread[success]
        return self.event(self.status, self.error, self.ended)

    def event(self, status: int, error: BaseException | None, ended: float) -> Event:
        """The event, with only what some logger reads (``Callbacks.needs``) built."""
        success = error is None
        needs_kwargs, needs_response, needs_start, needs_end = self.callbacks.needs[success]
        response = self.response
        body = self.cached_body
        if body is not None and (needs_kwargs or needs_response):
            try:
                if body.startswith(b"data: "):
                    self.stream_chunks = [
                        msgspec.json.decode(line[6:])
                        for line in body.split(b"\n\n")
                        if line.startswith(b"data: {")
                    ]
                else:
                    from .types import EmbeddingResponse, ModelResponse

                    kind = {"completion": ModelResponse, "embeddings": EmbeddingResponse}
                    response = msgspec.json.decode(body, type=kind.get(self.call_type, Any))
            except msgspec.MsgspecError:
                logger.warning("could not decode a cached answer for callbacks", exc_info=True)
        chunks = self.stream_chunks
        if chunks is not None and (needs_kwargs or needs_response):
            from .streaming import stream_chunk_builder

            try:
                chunks = [_chunk_data(c) for c in chunks]
                for chunk in reversed(chunks):
                    usage, _ = chunk_usage(chunk)
                    if usage is not None:
                        self.stream_usage = usage
                        break
                if error is None:
                    response = stream_chunk_builder(chunks, self.data.get("model"))
            except Exception:
                logger.warning("could not rebuild a stream's answer for callbacks", exc_info=True)
                response = None
        if needs_kwargs:
            kwargs = self.kwargs(status, error, response, ended)
            return Event(success, kwargs, response or error)
        times = (
            _datetime(self.started) if needs_start else None,
            _datetime(ended) if needs_end else None,
        )
        return Event(success, None, response or error, times=times)

    def kwargs(
        self, status: int, error: BaseException | None, response: Any, ended: float
    ) -> dict[str, Any]:
        self.call_id = self.call_id or new_call_id()
        data = self.data
        callbacks = self.callbacks
        group = data.get("model")
        if group.__class__ is not str:
            group = None
        deployment = self.deployment
        model, api_base = callbacks.deployments.get(deployment or "", (group, None))
        usage = self.stream_usage
        if usage is None and error is None:
            usage = result_usage(response)
        prompt, completion = usage or (0, 0)
        entry = getattr(self.grant, "entry", None)
        requested = data.get("metadata")
        return build_kwargs(
            call_id=self.call_id,
            call_type=self.call_type,
            model=model or group,
            group=group,
            deployment=deployment,
            api_base=api_base,
            messages=data.get("messages", data.get("input", data.get("prompt"))),
            optional={k: v for k, v in data.items() if k not in _NOT_OPTIONAL},
            requester_metadata=dict(requested) if requested.__class__ is dict else {},
            stream=data.get("stream") is True,
            status=status,
            error=error,
            response=response,
            prompt=prompt,
            completion=completion,
            cost=callbacks.prices.cost(group or "", deployment, prompt, completion),
            cache_hit=self.cached_body is not None,
            started=self.started,
            ended=ended,
            first_token_at=self.first_token_at,
            request_id=self.request_id,
            key_alias=getattr(entry, "alias", None),
            key_hash=getattr(entry, "token", None),
        )


def _chunk_data(chunk: Any) -> Any:
    """A kept stream chunk as the chunk builder reads it: the HTTP app's pre-encoded
    chunks decoded, a front door's text chunks (plain strings) as their delta."""
    if chunk.__class__ is msgspec.Raw:
        return msgspec.json.decode(chunk)
    if chunk.__class__ is str:
        return {"choices": [{"delta": {"content": chunk}}]}
    return chunk


class _LoggedStream:
    """A routed stream whose chunks are kept, to rebuild the answer and its usage for
    the event. Costs a list append per chunk, only with logging callbacks."""

    __slots__ = ("_gen", "_inner", "_log")

    def __init__(self, inner: Any, log: RequestLog) -> None:
        self._inner = inner
        self._log = log
        self._gen = self._chunks()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen

    def __anext__(self) -> Awaitable[Any]:
        return self._gen.__anext__()

    async def _chunks(self) -> AsyncIterator[Any]:
        log = self._log
        kept = log.stream_chunks
        assert kept is not None
        try:
            async for chunk in self._inner:
                kept.append(chunk)  # decoded and counted later, by the callback task
                yield chunk
        except Exception as exc:
            log.error = exc
            raise

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()  # type: ignore[attr-defined]
        finally:
            await self._inner.aclose()
