"""The ``Router``: serves model groups, one request at a time, through the pieces of this
package (a request through a group in ``routing``, picking and queueing in ``admission``,
retries/cooldowns/fallbacks in ``policy``, one call in ``attempts``, hedging in
``hedging``, streams in ``streams``). Here: building it, introspection, the provider call
for one attempt, and its two public APIs (the app's ``chat``/``embed``/``image`` and the
library's ``completion``/``acompletion``/...).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import anyio
import msgspec

from .._threads import run_async
from ..api import _gateway, _logging
from ..config import ConfigError, RouterConfigError, RouterSettings, parse_router_settings
from ..errors import BadRequestError, NotFoundError
from ..invoke import (
    astream_chunks,
    run_acompletion,
    run_aembedding,
    run_aimage_generation,
)
from ..invoke import split_kwargs as _split_kwargs
from ..provider import ChatCall, EmbeddingCall, ImageCall, Provider
from ..record import current
from .admission import Admission
from .attempts import Attempts
from .deployments import Deployment, Group, build_groups, provider_of, settings_error
from .events import RouterEvents
from .policy import Policy
from .routing import Routed, Routing
from .state import RouterState
from .strategies import Chooser
from .streams import sync_stream, text_length

__all__ = ["Routed", "Router"]

logger = logging.getLogger("gateway.router")

_CallT = TypeVar("_CallT", ChatCall, EmbeddingCall, ImageCall)


def _shared_state(s: RouterSettings, clock: Callable[[], float]) -> RouterState | None:
    url = s.shared_url
    if url is None:
        return None
    from ..shared import SharedRedis
    from .redis_state import RedisRouterState

    return RedisRouterState(SharedRedis(url, timeout=s.redis_timeout), clock)


class Router:
    """Serves model groups from a ``model_list``.

    Settings (``router_settings`` in config.yaml; see ``RouterSettings``) are keyword
    arguments, or one ``router_settings`` mapping. ``clock`` (seconds, monotonic) and
    ``sleep`` (the wait between retries) can be replaced, e.g. in tests; ``state`` holds
    the counters.
    """

    def __init__(
        self,
        model_list: Iterable[Any] = (),
        *,
        custom_providers: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
        default_timeout: float | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        state: RouterState | None = None,
        router_settings: RouterSettings | Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        self.default_timeout = default_timeout
        self.settings = s = _settings(router_settings, settings)
        self._clock: Callable[[], float] = clock or time.monotonic
        if state is None:
            state = _shared_state(s, self._clock) or RouterState()
        self._state = state
        self._groups = build_groups(model_list, dict(custom_providers), s, default_timeout)
        self._count_prompts = any(
            d.track_usage for g in self._groups.values() for d in g.deployments
        )
        chooser = Chooser(s.routing_strategy, self._state, self._clock, s.latency_buffer)
        self._admission = Admission(s, self._state, self._clock, chooser)
        self.events = RouterEvents()  # counted for /metrics
        self._policy = Policy(s, self._state, self._clock, self.events)
        self._attempts = Attempts(
            s, self._state, self._clock, self._admission, self._policy, self.events
        )
        self._routing = Routing(
            num_retries=s.num_retries,
            max_in_flight=s.max_in_flight,
            clock=self._clock,
            sleep=sleep or anyio.sleep,
            sync=getattr(state, "sync", None),
            admission=self._admission,
            policy=self._policy,
            attempts=self._attempts,
            events=self.events,
        )

    @classmethod
    def from_config(cls, config: Any) -> Router:
        """The router for a ``gateway.config.Config``; a bad setting is a ``ConfigError``
        naming the file and the key."""
        try:
            return cls(
                config.model_list,
                custom_providers=config.custom_providers,
                default_timeout=config.settings.default_timeout,
                router_settings=config.router_settings,
            )
        except RouterConfigError as exc:
            raise ConfigError(config.path or "<config>", exc.config_key, exc.problem) from None

    def trace_attempts(self, tracing: Any) -> None:
        """Run each attempt inside a span of ``tracing`` (a ``gateway.tracing.Tracing``).
        Swapped in once, so a router without tracing pays nothing per attempt."""
        plain = self._attempts.run
        self._attempts.run = lambda d, req: tracing.attempt(plain, d, req)  # type: ignore[method-assign]

    # introspection

    def model_names(self) -> list[str]:
        return list(self._groups)

    def providers(self) -> list[Provider]:
        seen: dict[int, Provider] = {}
        for group in self._groups.values():
            for d in group.deployments:
                if d.provider is not None:
                    seen[id(d.provider)] = d.provider
        return list(seen.values())

    def unavailable(self) -> list[tuple[str, str]]:
        """``(deployment id, why)`` for each deployment that could not be built (an
        unknown provider...); the others serve."""
        return [
            (d.id, d.error.message)
            for group in self._groups.values()
            for d in group.deployments
            if d.error is not None
        ]

    def deployment_ids(self) -> list[tuple[str, str]]:
        """``(model group, deployment id)`` of every deployment, in config order."""
        return [(g.name, d.id) for g in self._groups.values() for d in g.deployments]

    def report(self) -> list[dict[str, Any]]:
        """Each deployment as the router sees it now (``GET /router/state``)."""
        from .report import report

        return report(self._groups.values(), self._state, self._clock)

    def has_model(self, model_name: str) -> bool:
        return model_name in self._groups

    def group(self, model_name: str) -> Group | None:
        return self._groups.get(model_name)

    @property
    def state(self) -> RouterState:
        return self._state

    async def read_with(self, model_name: str, keys: Sequence[str]) -> list[Any] | None:
        """The values of ``keys`` (strings, e.g. a response cache's entry) read from this
        router's Redis in the round trip that reads ``model_name``'s group for the
        request; None without Redis or if it failed."""
        sync_with = getattr(self._state, "sync_with", None)
        if sync_with is None:
            return None
        out: list[Any] | None = await sync_with(self._groups.get(model_name), (), keys)
        return out

    def _group(self, model_name: str) -> Group:
        group = self._groups.get(model_name)
        if group is None:
            raise NotFoundError(
                f"The model `{model_name}` does not exist",
                param="model",
                code="model_not_found",
            )
        return group

    # calls built for a deployment

    def _call(
        self,
        call_type: type[_CallT],
        d: Deployment,
        optional_params: dict[str, Any],
        headers: dict[str, str] | None,
        timeout: float,
        **payload: Any,
    ) -> _CallT:
        """The provider call for one attempt on ``d``: the request plus the deployment.

        Inside an HTTP request, its id goes along as ``x-request-id`` (to the handler's
        ``headers`` and, by the OpenAI provider, upstream)."""
        spec = d.spec
        record = current.get()
        if record is not None:
            record.attempts += 1
            record.deployment = d.id  # the last one tried, until one answers
            rid = record.id
            if rid is None:  # request ids off
                pass
            elif headers is None:
                headers = {"x-request-id": rid}
            elif "x-request-id" not in headers:
                headers = {**headers, "x-request-id": rid}
        return call_type(
            model=d.provider_model,
            optional_params=optional_params,
            litellm_params=spec.params,
            api_key=spec.api_key,
            api_base=spec.api_base,
            headers=headers if headers is not None else {},
            timeout=timeout,
            **payload,
        )

    # the app-facing calls

    def chat(
        self,
        model_name: str,
        messages: list[Any],
        optional_params: dict[str, Any],
        *,
        stream: bool = False,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        raw_dicts: bool = True,
        plain_text: bool = False,
    ) -> Awaitable[Routed]:
        """A chat completion (to await); with ``stream`` the result is a
        ``RoutedStream`` whose first chunk has already arrived (so failures before it
        are raised here). ``plain_text``: a stream's text chunks are the text itself (a
        front door's).

        Not a coroutine itself: it hands over routing's, so a request's task has one
        coroutine frame less to resume on each wake-up (an unknown model raises here)."""
        if stream:

            def run(d: Deployment, t: float) -> Any:
                call = self._call(
                    ChatCall, d, optional_params, headers, t, messages=messages, stream=True
                )
                return astream_chunks(
                    provider_of(d), call, model_name, raw_dicts=raw_dicts, plain_text=plain_text
                )

            chars = text_length(messages) if self._count_prompts else 0
            return self._routing.route(self._group(model_name), run, True, timeout, chars)

        def run_once(d: Deployment, t: float) -> Any:
            call = self._call(ChatCall, d, optional_params, headers, t, messages=messages)
            return run_acompletion(provider_of(d), call, model_name)

        return self._routing.route(self._group(model_name), run_once, False, timeout)

    async def embed(
        self,
        model_name: str,
        input: Any,
        optional_params: dict[str, Any],
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Routed:
        def run(d: Deployment, t: float) -> Any:
            call = self._call(EmbeddingCall, d, optional_params, headers, t, input=input)
            return run_aembedding(provider_of(d), call, model_name)

        return await self._routing.route(self._group(model_name), run, False, timeout)

    async def image(
        self,
        model_name: str,
        prompt: str,
        optional_params: dict[str, Any],
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Routed:
        def run(d: Deployment, t: float) -> Any:
            call = self._call(ImageCall, d, optional_params, headers, t, prompt=prompt)
            return run_aimage_generation(provider_of(d), call)

        return await self._routing.route(self._group(model_name), run, False, timeout)

    # the library API, shaped like gateway.completion and friends

    async def acompletion(
        self,
        model: str,
        messages: list[Any] | None = None,
        *,
        stream: bool = False,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """A chat completion from the group ``model``: a ``ModelResponse``, or with
        ``stream=True`` an async iterator of ``ModelResponseStream`` chunks (the first
        already received, so failures before it raise here, after retries)."""
        if _gateway.callbacks and not _logging.get():  # gateway.callbacks, as for completion()
            from .._callbacks_library import call_async

            return await call_async(
                _gateway.callbacks,
                "acompletion",
                self.acompletion,
                model,
                messages,
                model_group=model,
                stream=stream,
                timeout=timeout,
                headers=headers,
                **kwargs,
            )
        optional, merged = _library_params(kwargs, headers)
        if stream:
            optional["stream"] = True
        else:
            optional.pop("stream_options", None)
        routed = await self.chat(
            model,
            list(messages or []),
            optional,
            stream=stream,
            timeout=timeout,
            headers=merged,
            raw_dicts=False,
        )
        return routed.result

    def completion(
        self,
        model: str,
        messages: list[Any] | None = None,
        *,
        stream: bool = False,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Sync ``acompletion``; with ``stream=True`` an iterator of chunks."""
        if stream:
            return sync_stream(
                partial(
                    self.acompletion,
                    model,
                    messages,
                    stream=True,
                    timeout=timeout,
                    headers=headers,
                    **kwargs,
                )
            )

        return run_async(
            partial(self.acompletion, model, messages, timeout=timeout, headers=headers, **kwargs)
        )

    async def aembedding(
        self,
        model: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Embeddings from the group ``model``."""
        if _gateway.callbacks and not _logging.get():
            from .._callbacks_library import call_async

            return await call_async(
                _gateway.callbacks,
                "aembedding",
                self.aembedding,
                model,
                input,
                model_group=model,
                timeout=timeout,
                headers=headers,
                **kwargs,
            )
        optional, merged = _library_params(kwargs, headers)
        routed = await self.embed(model, input, optional, timeout=timeout, headers=merged)
        return routed.result

    def embedding(
        self,
        model: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        return run_async(
            partial(self.aembedding, model, input, timeout=timeout, headers=headers, **kwargs)
        )

    async def aimage_generation(
        self,
        prompt: str,
        model: str | None = None,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """An image from the group ``model``."""
        if not model:
            raise BadRequestError("a model is required", param="model")
        if _gateway.callbacks and not _logging.get():
            from .._callbacks_library import call_async

            async def first(model: str, prompt: str, **kw: Any) -> Any:
                return await self.aimage_generation(prompt, model, **kw)

            return await call_async(
                _gateway.callbacks,
                "aimage_generation",
                first,
                model,
                prompt,
                model_group=model,
                timeout=timeout,
                headers=headers,
                **kwargs,
            )
        optional, merged = _library_params(kwargs, headers)
        routed = await self.image(model, prompt, optional, timeout=timeout, headers=merged)
        return routed.result

    def image_generation(
        self,
        prompt: str,
        model: str | None = None,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        return run_async(
            partial(
                self.aimage_generation, prompt, model, timeout=timeout, headers=headers, **kwargs
            )
        )


def _settings(
    given: RouterSettings | Mapping[str, Any] | None, more: dict[str, Any]
) -> RouterSettings:
    if isinstance(given, RouterSettings):
        if not more:
            return given  # decoded and checked with the config file
        given = msgspec.structs.asdict(given)
    return parse_router_settings({**(given or {}), **more}, settings_error, _ignored)


def _ignored(key: str) -> None:
    logger.warning("router_settings.%s: LiteLLM setting not supported, ignored", key)


def _library_params(
    kwargs: dict[str, Any], headers: dict[str, str] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    optional, _ = _split_kwargs(kwargs)
    merged = dict(headers or {})
    merged.update(optional.pop("extra_headers", None) or {})
    return optional, merged
