"""Model groups: which deployment serves a request for a ``model_name``, and what happens
when it fails, is slow, or is full.

Several ``model_list`` entries with one ``model_name`` form a group. A request picks a
deployment by the routing strategy, runs under its timeouts, is retried (another
deployment when there is one), falls back to other groups, and waits in a bounded queue
when everything is busy. Deployments that keep failing cool down for a while. All of it is
set with ``router_settings`` (config.yaml) or keyword arguments of ``Router``.

Counters the router keeps (in flight, latency averages, usage windows, failures,
cooldowns) live in one ``RouterState`` per router, so a later change can keep them in a
store shared by many gateway processes.
"""

from __future__ import annotations

import bisect
import difflib
import email.utils
import itertools
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal, TypeVar, get_args

import anyio
import msgspec

from . import registry
from ._sync import iterate_async, run_async
from .calls import (
    DEFAULT_TIMEOUT,
    _split_kwargs,
    astream_chunks,
    run_acompletion,
    run_aembedding,
    run_aimage_generation,
)
from .config import ConfigError
from .errors import (
    BadRequestError,
    ContextWindowExceededError,
    GatewayError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    Timeout,
    as_gateway_error,
)
from .provider import ChatCall, EmbeddingCall, ImageCall, Provider

__all__ = [
    "DeploymentSpec",
    "Routed",
    "RoutedStream",
    "Router",
    "RouterConfigError",
    "RouterSettings",
    "RouterState",
]

logger = logging.getLogger("gateway.router")

# How far back failures count toward a cooldown, and the rpm/tpm window.
WINDOW = 60.0
# Weight of the newest sample in the latency moving averages.
LATENCY_ALPHA = 0.3


# -- settings -----------------------------------------------------------------------------

_NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
_PosInt = Annotated[int, msgspec.Meta(ge=1)]
_NonNeg = Annotated[float, msgspec.Meta(ge=0)]
_Pos = Annotated[float, msgspec.Meta(gt=0)]
_GroupList = list[str] | str
_Fallbacks = list[dict[str, _GroupList]] | dict[str, _GroupList]

Strategy = Literal["simple-shuffle", "least-busy", "latency-based", "usage-based"]


_CallT = TypeVar("_CallT", ChatCall, EmbeddingCall, ImageCall)


class RouterSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``router_settings``: every key is also a keyword argument of ``Router``."""

    routing_strategy: Strategy = "simple-shuffle"
    num_retries: _NonNegInt = 0
    # Backoff before retrying the same deployment: exponential from retry_backoff,
    # capped at retry_backoff_max, with jitter. A Retry-After longer than the cap
    # ends the retries (the caller gets the error and its Retry-After).
    retry_backoff: _NonNeg = 0.5
    retry_backoff_max: _NonNeg = 10.0
    fallbacks: _Fallbacks = msgspec.field(default_factory=list)
    context_window_fallbacks: _Fallbacks = msgspec.field(default_factory=list)
    default_fallbacks: list[str] = msgspec.field(default_factory=list)
    timeout: _Pos | None = None
    stream_timeout: _Pos | None = None
    allowed_fails: _NonNegInt = 3
    cooldown_time: _NonNeg = 5.0
    disable_cooldowns: bool = False
    max_in_flight: _PosInt | None = None
    default_max_parallel_requests: _PosInt | None = None
    max_queue: _NonNegInt = 100
    queue_timeout: _NonNeg = 5.0
    hedge_after_ms: _NonNeg | dict[str, _NonNeg] | None = None
    latency_buffer: _NonNeg = 0.0


_STRATEGY_ALIASES = {
    "shuffle": "simple-shuffle",
    "latency-based-routing": "latency-based",
    "usage-based-routing": "usage-based",
    "usage-based-routing-v2": "usage-based",
}

# LiteLLM router settings this gateway does not implement: a warning, not an error,
# so a LiteLLM config starts.
_LITELLM_IGNORED = frozenset(
    {
        "alerting_config",
        "allowed_fails_policy",
        "assistants_config",
        "cache_kwargs",
        "cache_responses",
        "caching_groups",
        "client_ttl",
        "content_policy_fallbacks",
        "debug_level",
        "enable_pre_call_checks",
        "enable_tag_filtering",
        "ignore_invalid_deployments",
        "max_fallbacks",
        "model_group_alias",
        "model_group_retry_policy",
        "optional_pre_call_checks",
        "polling_interval",
        "provider_budget_config",
        "redis_host",
        "redis_password",
        "redis_port",
        "redis_url",
        "retry_policy",
        "router_general_settings",
        "set_verbose",
    }
)


class RouterConfigError(ConfigError, ValueError):
    """A bad router setting or deployment limit.

    ``config_key`` is its path in config.yaml (``router_settings.num_retries``,
    ``model_list[2].litellm_params.rpm``); the HTTP gateway reports it with the file name.
    """

    def __init__(self, config_key: str, problem: str, *, key: str | None = None) -> None:
        self.config_key = config_key
        super().__init__("gateway.Router", key or config_key, problem)


def _settings_error(key: str, problem: str) -> RouterConfigError:
    return RouterConfigError(f"router_settings.{key}", problem, key=key)


def _parse_settings(raw: Mapping[str, Any]) -> RouterSettings:
    known = RouterSettings.__struct_fields__
    data: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "routing_strategy_args":
            # LiteLLM's {"lowest_latency_buffer": x}; nothing else in it applies here.
            if isinstance(value, Mapping) and "lowest_latency_buffer" in value:
                data.setdefault("latency_buffer", value["lowest_latency_buffer"])
            continue
        if key == "retry_after":  # LiteLLM's name for the least wait before a retry
            data.setdefault("retry_backoff", value)
            continue
        if key in _LITELLM_IGNORED:
            logger.warning("router_settings.%s: LiteLLM setting not supported, ignored", key)
            continue
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.7)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _settings_error(str(key), f"unknown router setting{hint}")
        data[key] = value
    strategy = data.get("routing_strategy")
    if isinstance(strategy, str):
        data["routing_strategy"] = _STRATEGY_ALIASES.get(strategy, strategy)
    try:
        # strict=False: values from environment variables arrive as strings.
        return msgspec.convert(data, RouterSettings, strict=False)
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at ")
        path = re.search(r"`\$\.?([^`]*)`", at)
        key = path[1].replace("[...]", "") if path and path[1] else "router_settings"
        if key == "routing_strategy":
            message = f"must be one of {', '.join(get_args(Strategy))}, got {strategy!r}"
        else:
            message = re.sub(
                r"`([^`]+)`",
                lambda m: " or ".join(_TYPE_NAMES.get(t, t) for t in m[1].split(" | ")),
                message,
            )
            message = message[0].lower() + message[1:]
            if key in data:
                message += f" ({data[key]!r} given)"
        raise _settings_error(key, message) from None


_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _group_names(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _fallback_map(value: Any) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for item in [value] if isinstance(value, dict) else value:
        for group, targets in item.items():
            result.setdefault(group, []).extend(_group_names(targets))
    return result


# -- deployments --------------------------------------------------------------------------


class DeploymentSpec(msgspec.Struct, frozen=True):
    """A deployment as the router sees it (built from a config ``model_list`` entry)."""

    model_name: str
    model: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    api_key: str | None = None
    api_base: str | None = None
    timeout: float | None = None
    stream_timeout: float | None = None
    model_info: dict[str, Any] = msgspec.field(default_factory=dict)


def _spec(entry: Any) -> DeploymentSpec:
    if isinstance(entry, DeploymentSpec):
        return entry
    if isinstance(entry, Mapping):
        params = dict(entry.get("litellm_params") or {})
        return DeploymentSpec(
            model_name=entry["model_name"],
            model=params.get("model", ""),
            params=params,
            api_key=params.get("api_key"),
            api_base=params.get("api_base"),
            timeout=params.get("timeout"),
            stream_timeout=params.get("stream_timeout"),
            model_info=dict(entry.get("model_info") or {}),
        )
    # a gateway.config.Deployment (same field names)
    return DeploymentSpec(**{f: getattr(entry, f) for f in DeploymentSpec.__struct_fields__})


def _limit(params: Mapping[str, Any], key: str, where: str, *, integer: bool) -> Any:
    value = params.get(key)
    if value is None:
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not number > 0 or (integer and number != int(number)):
        kind = "a whole number > 0" if integer else "a number > 0"
        raise RouterConfigError(f"{where}.litellm_params.{key}", f"must be {kind}, got {value!r}")
    return int(number) if integer else float(number)


class _Deployment:
    __slots__ = (
        "attempt_timeout",
        "error",
        "group",
        "id",
        "max_parallel",
        "provider",
        "provider_model",
        "rpm",
        "spec",
        "stream_timeout",
        "timeout",
        "tpm",
        "track_usage",
        "weight",
    )

    def __init__(self, spec: DeploymentSpec, index: int, custom: Mapping[str, Any]) -> None:
        self.spec = spec
        self.id = str(spec.model_info.get("id") or f"{spec.model_name}/{index}")
        self.group: _Group
        where = f"model_list[{index}]"
        params = spec.params
        self.weight: float | None = _limit(params, "weight", where, integer=False)
        self.rpm: int | None = _limit(params, "rpm", where, integer=True)
        self.tpm: int | None = _limit(params, "tpm", where, integer=True)
        self.max_parallel: int | None = _limit(params, "max_parallel_requests", where, integer=True)
        self.timeout = spec.timeout or _limit(params, "timeout", where, integer=False)
        self.stream_timeout = spec.stream_timeout or _limit(
            params, "stream_timeout", where, integer=False
        )
        self.track_usage = False
        self.attempt_timeout = DEFAULT_TIMEOUT  # set by the router: the timeout that applies
        self.provider: Provider | None = None
        self.error: GatewayError | None = None
        name, _, rest = spec.model.partition("/")
        self.provider_model = rest
        try:
            if params.get("mock_response") is not None:
                # As in LiteLLM: a deployment with a mock_response answers it, whatever
                # its provider, and calls nothing.
                self.provider = registry.provider_for("mock")
                self.provider_model = spec.model
            elif name in custom:
                self.provider = registry.as_provider(custom[name], name)
            else:
                self.provider, self.provider_model, _ = registry.resolve(spec.model)
        except GatewayError as exc:
            # Kept, not raised: the rest of the gateway serves; this model answers the error.
            self.error = GatewayError(
                f"Model `{spec.model_name}` cannot be served: {exc.message}",
                status_code=500,
                type="configuration_error",
            )

    def __repr__(self) -> str:
        return f"<deployment {self.id}>"


class _Group:
    __slots__ = (
        "can_cool",
        "context_fallbacks",
        "deployments",
        "direct",
        "fallbacks",
        "hedge_after",
        "name",
        "simple",
        "weights",
    )

    def __init__(self, name: str, deployments: list[_Deployment]) -> None:
        self.name = name
        self.deployments = deployments
        for d in deployments:
            d.group = self
        self.fallbacks: list[_Group] = []
        self.context_fallbacks: list[_Group] = []
        self.hedge_after: float | None = None
        self.can_cool = False
        # One deployment, nothing to check before using it.
        self.simple = False
        # ... and nothing to do after a failure either: the hot path.
        self.direct = False
        self.weights: list[float] | None = None


class Routed(msgspec.Struct):
    """What a routed call produced, and where."""

    result: Any
    deployment: str
    attempts: int = 1


# -- state ---------------------------------------------------------------------------------


class RouterState:
    """What the router counts, behind one small interface.

    Keys are deployment ids; times come from the router's clock and are passed in, so an
    implementation needs no clock of its own. This one lives in the process. One backed
    by a shared store (many gateway instances) would keep the same methods, answering
    from a local copy it syncs in the background, so the request path never waits on it.
    """

    def __init__(self) -> None:
        self._total = 0
        self._in_flight: dict[str, int] = {}
        self._latency: dict[str, float] = {}
        self._ttft: dict[str, float] = {}
        self._failures: dict[str, deque[float]] = {}
        self._cooldowns: dict[str, float] = {}
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}
        self._token_sums: dict[str, int] = {}

    # in flight: requests under max_in_flight, and attempts per deployment

    def try_admit(self, limit: int) -> bool:
        """Count a request in if fewer than ``limit`` are in flight."""
        if self._total >= limit:
            return False
        self._total += 1
        return True

    def leave(self) -> None:
        self._total -= 1

    @property
    def total_in_flight(self) -> int:
        return self._total

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)

    def start(self, key: str) -> None:
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def finish(self, key: str) -> None:
        self._in_flight[key] -= 1

    # latency: moving averages of whole answers and of time to first chunk

    def record_latency(self, key: str, seconds: float, *, first_token: bool = False) -> None:
        table = self._ttft if first_token else self._latency
        old = table.get(key)
        table[key] = seconds if old is None else old + LATENCY_ALPHA * (seconds - old)

    def latency(self, key: str, *, first_token: bool = False) -> float | None:
        if first_token:
            value = self._ttft.get(key)
            if value is not None:
                return value
        return self._latency.get(key)

    # usage in the last minute

    def record_request(self, key: str, now: float) -> None:
        self._requests.setdefault(key, deque()).append(now)

    def record_tokens(self, key: str, now: float, tokens: int) -> None:
        if tokens > 0:
            self._tokens.setdefault(key, deque()).append((now, tokens))
            self._token_sums[key] = self._token_sums.get(key, 0) + tokens

    def _prune(self, key: str, now: float) -> None:
        start = now - WINDOW
        requests = self._requests.get(key)
        while requests and requests[0] <= start:
            requests.popleft()
        tokens = self._tokens.get(key)
        while tokens and tokens[0][0] <= start:
            self._token_sums[key] -= tokens.popleft()[1]

    def usage(self, key: str, now: float) -> tuple[int, int]:
        """Requests and tokens in the last minute."""
        self._prune(key, now)
        return len(self._requests.get(key) or ()), self._token_sums.get(key, 0)

    def rate_wait(self, key: str, now: float, rpm: int | None, tpm: int | None) -> float:
        """Seconds until the deployment is under its rpm and tpm again (0: it is now)."""
        self._prune(key, now)
        wait = 0.0
        requests = self._requests.get(key)
        if rpm is not None and requests and len(requests) >= rpm:
            wait = requests[len(requests) - rpm] + WINDOW - now
        if tpm is not None and self._token_sums.get(key, 0) >= tpm:
            total = self._token_sums[key]
            for at, tokens in self._tokens[key]:
                total -= tokens
                if total < tpm:
                    wait = max(wait, at + WINDOW - now)
                    break
        return max(wait, 0.0)

    # failures and cooldowns

    def record_failure(self, key: str, now: float) -> int:
        """Count a failure; the number of failures in the last minute."""
        failures = self._failures.setdefault(key, deque())
        failures.append(now)
        while failures[0] <= now - WINDOW:
            failures.popleft()
        return len(failures)

    def cool_down(self, key: str, until: float) -> None:
        self._cooldowns[key] = max(until, self._cooldowns.get(key, until))
        self._failures.pop(key, None)

    def cooldown_remaining(self, key: str, now: float) -> float:
        until = self._cooldowns.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._cooldowns[key]
            return 0.0
        return until - now


# -- helpers --------------------------------------------------------------------------------


class _Request:
    """One routed request: how to call a deployment, its limits, and what it tried
    (deployments and attempts, across groups)."""

    __slots__ = ("attempts", "deadline", "prompt_chars", "run", "stream", "timeout", "tried")

    def __init__(
        self,
        run: Callable[[_Deployment, float], Any],
        stream: bool,
        timeout: float | None,
        prompt_chars: int,
    ) -> None:
        self.run = run  # (deployment, timeout) -> awaitable answer, or a stream's chunks
        self.stream = stream
        self.timeout = timeout
        self.deadline: float | None = None
        self.prompt_chars = prompt_chars
        self.attempts = 0
        self.tried: list[_Deployment] = []


def _retry_after(exc: GatewayError) -> float | None:
    """Seconds from a ``Retry-After`` (or OpenAI's ``retry-after-ms``) header."""
    for name, value in exc.headers.items():
        lowered = name.lower()
        try:
            if lowered == "retry-after-ms":
                return max(float(value) / 1000, 0.0)
            if lowered == "retry-after":
                try:
                    return max(float(value), 0.0)
                except ValueError:
                    when = email.utils.parsedate_to_datetime(str(value))
                    return max(when.timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None
    return None


def _is_context_window(exc: GatewayError) -> bool:
    return isinstance(exc, ContextWindowExceededError) or exc.code == "context_length_exceeded"


def _retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_length(v) for v in value)
    if isinstance(value, dict):
        return sum(_text_length(v) for k, v in value.items() if k in ("content", "text"))
    return 0


def _usage_tokens(usage: Any) -> int | None:
    if usage is None or usage is msgspec.UNSET:
        return None
    total = usage.get("total_tokens") if isinstance(usage, dict) else usage.total_tokens
    return int(total) if isinstance(total, int | float) else None


def _chunk_tokens(chunk: Any) -> tuple[int | None, int]:
    """(reported total tokens, characters of content) in one stream chunk."""
    if isinstance(chunk, msgspec.Raw):  # the HTTP app's pre-encoded text chunks
        chunk = msgspec.json.decode(chunk)
    if isinstance(chunk, dict):
        usage = _usage_tokens(chunk.get("usage"))
        choices = chunk.get("choices") or ()
        chars = sum(_text_length((c.get("delta") or {}).get("content")) for c in choices)
        return usage, chars
    usage = _usage_tokens(getattr(chunk, "usage", None))
    chars = 0
    for choice in getattr(chunk, "choices", ()) or ():
        content = getattr(choice.delta, "content", None)
        if isinstance(content, str):
            chars += len(content)
    return usage, chars


_NOTHING: Any = object()


class RoutedStream:
    """The chunks of a routed stream, the first already received.

    Closing it (``aclose``, also before reading it), running it to the end or a failure
    frees the deployment's slot and records what the router learns from the stream.
    """

    __slots__ = (
        "_chars",
        "_deployment",
        "_done",
        "_first",
        "_gen",
        "_global",
        "_prompt_chars",
        "_rest",
        "_router",
        "_started",
        "_tokens",
    )

    def __init__(
        self,
        router: Router,
        deployment: _Deployment,
        first: Any,
        rest: AsyncIterator[Any],
        started: float,
        prompt_chars: int,
    ) -> None:
        self._router = router
        self._deployment = deployment
        self._first = first
        self._rest = rest
        self._started = started
        self._global = False
        self._done = False
        self._prompt_chars = prompt_chars
        self._chars = 0
        self._tokens: int | None = None
        # Iterated as a native async generator: no Python-level step per chunk here.
        self._gen = self._chunks()
        if first is _NOTHING:
            self._finish(None)
        elif deployment.track_usage:
            self._count(first)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen

    def __anext__(self) -> Awaitable[Any]:
        return self._gen.__anext__()

    async def _chunks(self) -> AsyncIterator[Any]:
        rest = self._rest
        try:
            if self._first is not _NOTHING:
                yield self._first
                self._first = _NOTHING
                if self._deployment.track_usage:
                    async for chunk in rest:
                        self._count(chunk)
                        yield chunk
                else:
                    async for chunk in rest:
                        yield chunk
        except BaseException as exc:
            self._finish(exc)
            raise
        finally:
            self._finish(None)
            await rest.aclose()  # type: ignore[attr-defined]

    def _count(self, chunk: Any) -> None:
        tokens, chars = _chunk_tokens(chunk)
        if tokens is not None:
            self._tokens = tokens
        self._chars += chars

    async def aclose(self) -> None:
        await self._gen.aclose()
        if not self._done:  # closed before it was read: the generator never ran
            self._finish(None)
            await self._rest.aclose()  # type: ignore[attr-defined]

    def _hold_global(self) -> None:
        # The request's max_in_flight slot, freed when the stream ends.
        if self._done:
            self._router._release_global()
        else:
            self._global = True

    def _finish(self, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        router = self._router
        d = self._deployment
        if d.track_usage:
            tokens = self._tokens
            if tokens is None:
                tokens = (self._prompt_chars + self._chars) // 4
            router._state.record_tokens(d.id, router._clock(), tokens)
        if isinstance(exc, GatewayError):
            router._failed(d, exc, router._clock() - self._started, cut=False)
        router._release(d)
        if self._global:
            self._global = False
            router._release_global()


async def _discard(result: Any) -> None:
    if isinstance(result, RoutedStream):
        await result.aclose()


# -- the router -----------------------------------------------------------------------------


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
        router_settings: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        custom = dict(custom_providers)
        self.default_timeout = default_timeout
        self.settings = s = _parse_settings({**(router_settings or {}), **settings})
        self._clock: Callable[[], float] = clock or time.monotonic
        self._sleep: Callable[[float], Awaitable[Any]] = sleep or anyio.sleep
        self._state = state if state is not None else RouterState()
        self._strategy = s.routing_strategy
        self._num_retries = s.num_retries
        self._max_in_flight = s.max_in_flight
        self._record_latency = s.routing_strategy == "latency-based"
        self._waiters: dict[anyio.Event, None] = {}
        self._queued = 0

        groups: dict[str, list[_Deployment]] = {}
        for index, entry in enumerate(model_list):
            spec = _spec(entry)
            d = _Deployment(spec, index, custom)
            if d.max_parallel is None:
                d.max_parallel = s.default_max_parallel_requests
            d.attempt_timeout = d.timeout or s.timeout or default_timeout or DEFAULT_TIMEOUT
            d.track_usage = bool(d.rpm or d.tpm or s.routing_strategy == "usage-based")
            groups.setdefault(spec.model_name, []).append(d)
        self._groups = {name: _Group(name, ds) for name, ds in groups.items()}
        self._link_groups(s)
        self._count_prompts = any(d.track_usage for ds in groups.values() for d in ds)

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

    def _link_groups(self, s: RouterSettings) -> None:
        def group(name: str, key: str) -> _Group:
            found = self._groups.get(name)
            if found is None:
                known = ", ".join(self._groups) or "(none)"
                raise _settings_error(key, f"no model group named {name!r} (groups: {known})")
            return found

        fallbacks = _fallback_map(s.fallbacks)
        context = _fallback_map(s.context_window_fallbacks)
        for setting, table in (("fallbacks", fallbacks), ("context_window_fallbacks", context)):
            for name, targets in table.items():
                group(name, setting)
                for target in targets:
                    group(target, setting)
        defaults = [group(name, "default_fallbacks") for name in s.default_fallbacks]
        hedge = s.hedge_after_ms
        if isinstance(hedge, dict):
            for name in hedge:
                group(name, "hedge_after_ms")

        for g in self._groups.values():
            g.fallbacks = [self._groups[n] for n in fallbacks.get(g.name, ())] or [
                d for d in defaults if d is not g
            ]
            g.context_fallbacks = [self._groups[n] for n in context.get(g.name, ())]
            ms = hedge.get(g.name) if isinstance(hedge, dict) else hedge
            if ms is not None and len(g.deployments) > 1:
                g.hedge_after = ms / 1000
            # A group's only deployment with nowhere to fall back to is never cooled
            # down (as in LiteLLM): refusing it would only turn errors into 503s.
            g.can_cool = not s.disable_cooldowns and (len(g.deployments) > 1 or bool(g.fallbacks))
            ds = g.deployments
            if any(d.weight is not None for d in ds):
                g.weights = list(itertools.accumulate(d.weight or 1.0 for d in ds))
            elif len(ds) > 1 and all(d.rpm for d in ds):
                # As LiteLLM's simple-shuffle: without weights, rpm limits weigh.
                g.weights = list(itertools.accumulate(float(d.rpm or 0) for d in ds))
            only = ds[0]
            g.simple = (
                len(ds) == 1
                and not g.can_cool
                and only.error is None
                and only.max_parallel is None
                and not only.track_usage
            )
            g.direct = (
                g.simple
                and not (s.num_retries or s.max_in_flight)
                and not (g.fallbacks or g.context_fallbacks)
            )

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

    def has_model(self, model_name: str) -> bool:
        return model_name in self._groups

    @property
    def state(self) -> RouterState:
        return self._state

    # picking

    def _group(self, model_name: str) -> _Group:
        group = self._groups.get(model_name)
        if group is None:
            raise NotFoundError(
                f"The model `{model_name}` does not exist",
                param="model",
                code="model_not_found",
            )
        return group

    def _choose(self, group: _Group, ds: list[_Deployment], stream: bool) -> _Deployment:
        if len(ds) == 1:
            return ds[0]
        strategy = self._strategy
        state = self._state
        if strategy == "simple-shuffle":
            if group.weights is None:
                return random.choice(ds)
            if len(ds) == len(group.deployments):
                cumulative = group.weights
            else:
                cumulative = list(itertools.accumulate(_weight(d) for d in ds))
            return ds[bisect.bisect(cumulative, random.random() * cumulative[-1])]
        if strategy == "least-busy":
            scores = [state.in_flight(d.id) for d in ds]
            best = min(scores)
            return random.choice([d for d, n in zip(ds, scores, strict=True) if n == best])
        if strategy == "latency-based":
            lat = [state.latency(d.id, first_token=stream) for d in ds]
            unknown = [d for d, x in zip(ds, lat, strict=True) if x is None]
            if unknown:  # measure every deployment before preferring one
                return random.choice(unknown)
            best = min(lat)  # type: ignore[type-var]
            limit = best * (1 + self.settings.latency_buffer)  # type: ignore[operator]
            return random.choice([d for d, x in zip(ds, lat, strict=True) if x <= limit])  # type: ignore[operator]
        # usage-based: the most headroom under rpm/tpm; without limits, the least used
        now = self._clock()
        scores2 = [self._utilisation(d, now) for d in ds]
        best2 = min(scores2)
        return random.choice([d for d, x in zip(ds, scores2, strict=True) if x == best2])

    def _utilisation(self, d: _Deployment, now: float) -> tuple[float, int, int]:
        requests, tokens = self._state.usage(d.id, now)
        share = 0.0
        if d.rpm:
            share = requests / d.rpm
        if d.tpm:
            share = max(share, tokens / d.tpm)
        limited = 1.0 if (d.rpm or d.tpm) else 0.0
        # Limited deployments compare by share used; unlimited ones by raw use.
        return (share if limited else -1.0, tokens, requests)

    def _take(self, d: _Deployment) -> _Deployment:
        self._state.start(d.id)
        if d.track_usage:
            self._state.record_request(d.id, self._clock())
        return d

    def _release(self, d: _Deployment) -> None:
        self._state.finish(d.id)
        if self._waiters:
            self._wake()

    def _release_global(self) -> None:
        self._state.leave()
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        for event in self._waiters:
            event.set()

    def _try_pick(
        self, group: _Group, tried: list[_Deployment], stream: bool, *, fresh_only: bool = False
    ) -> _Deployment | tuple[float | None, float | None, GatewayError | None]:
        """A deployment (its slot taken), or why none: (cooling wait, busy wait, error)."""
        if group.simple:
            if fresh_only and group.deployments[0] in tried:
                return None, None, None
            return self._take(group.deployments[0])
        state = self._state
        now = self._clock()
        eligible: list[_Deployment] = []
        cooling: float | None = None
        busy: float | None = None
        error: GatewayError | None = None
        for d in group.deployments:
            if d.error is not None:
                error = d.error
                continue
            if group.can_cool:
                remaining = state.cooldown_remaining(d.id, now)
                if remaining > 0:
                    cooling = remaining if cooling is None else min(cooling, remaining)
                    continue
            if d.max_parallel is not None and state.in_flight(d.id) >= d.max_parallel:
                busy = 1.0 if busy is None else min(busy, 1.0)
                continue
            if d.rpm or d.tpm:
                wait = state.rate_wait(d.id, now, d.rpm, d.tpm)
                if wait > 0:
                    busy = wait if busy is None else min(busy, wait)
                    continue
            eligible.append(d)
        if eligible:
            fresh = [d for d in eligible if d not in tried] if tried else eligible
            if fresh:
                return self._take(self._choose(group, fresh, stream))
            if not fresh_only:
                return self._take(self._choose(group, eligible, stream))
        return cooling, busy, error

    async def _acquire(
        self,
        group: _Group,
        req: _Request,
        picked: tuple[float | None, float | None, GatewayError | None],
    ) -> _Deployment:
        """Wait in the queue for a deployment of the group; ``picked`` says why none was free."""
        deadline = req.deadline
        queue_end = anyio.current_time() + self.settings.queue_timeout
        queued = False
        try:
            while True:
                cooling, busy, error = picked
                if busy is None:
                    if cooling is not None:
                        raise ServiceUnavailableError(
                            f"Every deployment of `{group.name}` is cooling down after "
                            f"failures; retry in {math.ceil(cooling)} s",
                            code="deployments_cooling_down",
                            headers=_retry_after_header(cooling),
                        )
                    if error is not None:
                        raise error
                    raise ServiceUnavailableError(f"No deployment of `{group.name}` is available")
                if not queued:
                    self._enter_queue(busy, f"Model `{group.name}` is at capacity")
                    queued = True
                wait = min(queue_end - anyio.current_time(), busy)
                if cooling is not None:
                    wait = min(wait, cooling)
                if deadline is not None:
                    wait = min(wait, deadline - self._clock())
                if wait <= 0 or not await self._wait(wait):
                    if anyio.current_time() >= queue_end or (
                        deadline is not None and self._clock() >= deadline
                    ):
                        raise RateLimitError(
                            f"Model `{group.name}` is at capacity and the request waited "
                            f"{self.settings.queue_timeout:g} s; retry later",
                            code="capacity_exceeded",
                            headers=_retry_after_header(busy),
                        )
                picked = self._try_pick(group, req.tried, req.stream)
                if isinstance(picked, _Deployment):
                    return picked
        finally:
            if queued:
                self._queued -= 1

    def _enter_queue(self, retry_after: float, what: str) -> None:
        if self._queued >= self.settings.max_queue:
            raise RateLimitError(
                f"{what} and its wait queue is full; retry later",
                code="capacity_exceeded",
                headers=_retry_after_header(retry_after),
            )
        self._queued += 1

    async def _wait(self, seconds: float) -> bool:
        """Wait until a slot frees (True) or ``seconds`` pass (False)."""
        event = anyio.Event()
        self._waiters[event] = None
        try:
            with anyio.move_on_after(seconds):
                await event.wait()
                return True
            return False
        finally:
            del self._waiters[event]

    async def _admit(self, deadline: float | None) -> None:
        """Take a slot under ``max_in_flight``, waiting in the queue if needed."""
        state = self._state
        limit = self._max_in_flight
        assert limit is not None
        if state.try_admit(limit):
            return
        self._enter_queue(1.0, "The gateway is at capacity")
        try:
            end = anyio.current_time() + self.settings.queue_timeout
            while not state.try_admit(limit):
                wait = end - anyio.current_time()
                if deadline is not None:
                    wait = min(wait, deadline - self._clock())
                if wait <= 0 or not await self._wait(wait):
                    raise RateLimitError(
                        "The gateway is at capacity and the request waited "
                        f"{self.settings.queue_timeout:g} s; retry later",
                        code="capacity_exceeded",
                        headers=_retry_after_header(1.0),
                    )
        finally:
            self._queued -= 1

    # what failures teach

    def _failed(self, d: _Deployment, exc: GatewayError, elapsed: float, *, cut: bool) -> None:
        """Count a failed attempt toward the deployment's cooldown.

        Only retryable failures count (never 400/401/404: the request, not the
        deployment, was wrong), and not a timeout the caller's own deadline caused.
        """
        if not exc.retryable or cut:
            return
        if self._record_latency:
            # A deployment that fails (fast, or by hanging) must not look fast: a failure
            # counts as at least twice its usual latency.
            state = self._state
            for first_token in (False, True):
                usual = state.latency(d.id, first_token=first_token)
                penalty = max(elapsed, 2 * usual) if usual is not None else max(elapsed, 1.0)
                state.record_latency(d.id, penalty, first_token=first_token)
        if not d.group.can_cool:
            return
        now = self._clock()
        retry_after = _retry_after(exc)
        if exc.status_code == 429 and retry_after:
            self._state.cool_down(d.id, now + retry_after)
            return
        if self._state.record_failure(d.id, now) > self.settings.allowed_fails:
            self._state.cool_down(d.id, now + self.settings.cooldown_time)
            logger.warning(
                "deployment %s cooling down for %g s after repeated failures (last: %s)",
                d.id,
                self.settings.cooldown_time,
                exc.message,
            )

    def _retry_delay(
        self, n: int, exc: GatewayError, group: _Group, tried: list[_Deployment]
    ) -> float | None:
        """Seconds to wait before retry ``n`` (0-based); None: do not retry."""
        # Another deployment that this request has not tried and that is not cooling
        # down: go at once.
        now = self._clock()
        for d in group.deployments:
            if d not in tried and d.error is None:
                if not group.can_cool or self._state.cooldown_remaining(d.id, now) == 0:
                    return 0.0
        s = self.settings
        cap = min(s.retry_backoff_max, s.retry_backoff * 2**n)
        delay = cap / 2 + random.uniform(0, cap / 2)
        retry_after = _retry_after(exc)
        if retry_after is not None:
            if retry_after > s.retry_backoff_max:
                return None
            delay = max(delay, retry_after)
        return delay

    # running attempts

    async def _attempt(self, d: _Deployment, req: _Request) -> Any:
        """One call on a deployment whose slot is taken; the slot is freed when it ends."""
        clock = self._clock
        started = clock()
        timeout = d.attempt_timeout
        stream = req.stream
        if stream and req.timeout is not None and req.timeout < timeout:
            timeout = req.timeout  # a stream's request timeout bounds each chunk wait too
        # The first wait: the whole answer, or a stream's first chunk.
        limit = timeout
        if stream:
            limit = d.stream_timeout or self.settings.stream_timeout or timeout
        cut = False  # whether the caller's deadline, not the deployment's limit, applies
        deadline = req.deadline
        if deadline is not None:
            remaining = deadline - started
            if remaining <= 0:
                self._release(d)
                raise Timeout("Request timed out before a deployment could answer")
            if remaining < limit:
                limit, cut = remaining, True
        try:
            if not stream:
                result = await req.run(d, limit)
            else:
                chunks = req.run(d, timeout)
                if limit < timeout:
                    first = await _first_chunk(chunks, limit)
                else:
                    try:
                        first = await chunks.__anext__()
                    except StopAsyncIteration:
                        first = _NOTHING
        except BaseException as exc:
            self._release(d)
            if isinstance(exc, GatewayError):
                elapsed = clock() - started
                self._failed(d, exc, elapsed, cut=cut and isinstance(exc, Timeout))
            raise
        if stream:
            if self._record_latency:
                self._state.record_latency(d.id, clock() - started, first_token=True)
            return RoutedStream(self, d, first, chunks, started, req.prompt_chars)
        if self._record_latency:
            self._state.record_latency(d.id, clock() - started)
        if d.track_usage:
            usage = getattr(result, "usage", None)
            self._state.record_tokens(d.id, clock(), _usage_tokens(usage) or 0)
        self._release(d)
        return result

    async def _run_group(self, group: _Group, req: _Request) -> tuple[Any, _Deployment]:
        """Attempts on the group's deployments until one answers or retries are spent."""
        n = 0
        last: GatewayError | None = None
        while True:
            picked = self._try_pick(group, req.tried, req.stream)
            if isinstance(picked, _Deployment):
                d = picked
            else:
                try:
                    d = await self._acquire(group, req, picked)
                except GatewayError:
                    if last is not None:  # a retry found no room: report the real failure
                        raise last from None
                    raise
            req.tried.append(d)
            req.attempts += 1
            try:
                if group.hedge_after is not None:
                    return await self._hedged(group, d, req)
                return await self._attempt(d, req), d
            except GatewayError as exc:
                if not exc.retryable or n >= self._num_retries:
                    raise
                last = exc
                delay = self._retry_delay(n, exc, group, req.tried)
                deadline = req.deadline
                if delay is None or (deadline is not None and self._clock() + delay >= deadline):
                    raise
                logger.info("retrying %s after %s: %s", group.name, d.id, exc.message)
                if delay > 0:
                    await self._sleep(delay)
                n += 1

    async def _hedged(
        self, group: _Group, first: _Deployment, req: _Request
    ) -> tuple[Any, _Deployment]:
        """Start a second attempt on another deployment if the first is slow; the first
        to answer wins and the other is cancelled."""
        won: list[tuple[Any, _Deployment]] = []
        errors: list[GatewayError] = []
        settled = anyio.Event()
        running = 1

        async def attempt(d: _Deployment, scope: anyio.CancelScope) -> None:
            nonlocal running
            try:
                result = await self._attempt(d, req)
            except Exception as exc:
                errors.append(as_gateway_error(exc))
                running -= 1
                if running == 0:
                    settled.set()
                return
            if won:
                await _discard(result)
                return
            won.append((result, d))
            settled.set()
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt, first, tg.cancel_scope)
            with anyio.move_on_after(group.hedge_after or 0):
                await settled.wait()
            if not settled.is_set():
                second = self._try_pick(group, req.tried, req.stream, fresh_only=True)
                if isinstance(second, _Deployment):
                    req.tried.append(second)
                    req.attempts += 1
                    running += 1
                    tg.start_soon(attempt, second, tg.cancel_scope)
            await settled.wait()
            tg.cancel_scope.cancel()
        if won:
            return won[0]
        raise errors[-1]

    async def _route(
        self,
        model_name: str,
        run: Callable[[_Deployment, float], Any],
        stream: bool,
        timeout: float | None,
        prompt_chars: int = 0,
    ) -> Routed:
        group = self._group(model_name)
        req = _Request(run, stream, timeout, prompt_chars)
        if timeout is not None:
            req.deadline = self._clock() + timeout
        if group.direct:
            d = self._take(group.deployments[0])
            req.attempts = 1
            return Routed(await self._attempt(d, req), d.id)
        held = False
        if self._max_in_flight is not None:
            await self._admit(req.deadline)
            held = True
        try:
            try:
                result, d = await self._run_group(group, req)
            except GatewayError as exc:
                chain = self._fallbacks(group, exc)
                if not chain:
                    raise
                result, d = await self._fall_back(exc, chain, req)
        except BaseException:
            if held:
                self._release_global()
            raise
        if held:
            if isinstance(result, RoutedStream):
                result._hold_global()
            else:
                self._release_global()
        return Routed(result, d.id, req.attempts)

    def _fallbacks(self, group: _Group, exc: GatewayError) -> list[_Group]:
        if _is_context_window(exc):
            return group.context_fallbacks
        if not exc.retryable and exc.status_code in (400, 404, 413, 422):
            return []  # the request itself is wrong; another model will not fix it
        return group.fallbacks

    async def _fall_back(
        self, original: GatewayError, chain: list[_Group], req: _Request
    ) -> tuple[Any, _Deployment]:
        for group in chain:
            if req.deadline is not None and self._clock() >= req.deadline:
                break
            logger.info("falling back to %s after: %s", group.name, original.message)
            try:
                return await self._run_group(group, req)
            except GatewayError:
                continue
        raise original

    # calls built for a deployment

    def _call(
        self,
        call_type: type[_CallT],
        d: _Deployment,
        optional_params: dict[str, Any],
        headers: dict[str, str] | None,
        timeout: float,
        **payload: Any,
    ) -> _CallT:
        """The provider call for one attempt on ``d``: the request plus the deployment."""
        spec = d.spec
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

    async def chat(
        self,
        model_name: str,
        messages: list[Any],
        optional_params: dict[str, Any],
        *,
        stream: bool = False,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        raw_dicts: bool = True,
    ) -> Routed:
        """A chat completion; with ``stream`` the result is a ``RoutedStream`` whose
        first chunk has already arrived (so failures before it are raised here)."""
        if stream:

            def run(d: _Deployment, t: float) -> Any:
                call = self._call(
                    ChatCall, d, optional_params, headers, t, messages=messages, stream=True
                )
                return astream_chunks(_provider(d), call, model_name, raw_dicts=raw_dicts)

            chars = _text_length(messages) if self._count_prompts else 0
            return await self._route(model_name, run, True, timeout, chars)

        def run_once(d: _Deployment, t: float) -> Any:
            call = self._call(ChatCall, d, optional_params, headers, t, messages=messages)
            return run_acompletion(_provider(d), call, model_name)

        return await self._route(model_name, run_once, False, timeout)

    async def embed(
        self,
        model_name: str,
        input: Any,
        optional_params: dict[str, Any],
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Routed:
        def run(d: _Deployment, t: float) -> Any:
            call = self._call(EmbeddingCall, d, optional_params, headers, t, input=input)
            return run_aembedding(_provider(d), call, model_name)

        return await self._route(model_name, run, False, timeout)

    async def image(
        self,
        model_name: str,
        prompt: str,
        optional_params: dict[str, Any],
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Routed:
        def run(d: _Deployment, t: float) -> Any:
            call = self._call(ImageCall, d, optional_params, headers, t, prompt=prompt)
            return run_aimage_generation(_provider(d), call)

        return await self._route(model_name, run, False, timeout)

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
            return _sync_stream(
                lambda: self.acompletion(
                    model, messages, stream=True, timeout=timeout, headers=headers, **kwargs
                )
            )

        async def run() -> Any:
            return await self.acompletion(
                model, messages, timeout=timeout, headers=headers, **kwargs
            )

        return run_async(run)

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
        async def run() -> Any:
            return await self.aembedding(model, input, timeout=timeout, headers=headers, **kwargs)

        return run_async(run)

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
        async def run() -> Any:
            return await self.aimage_generation(
                prompt, model, timeout=timeout, headers=headers, **kwargs
            )

        return run_async(run)


def _weight(d: _Deployment) -> float:
    if d.weight is not None:
        return d.weight
    return float(d.rpm) if d.rpm else 1.0


def _provider(d: _Deployment) -> Provider:
    if d.provider is None:
        assert d.error is not None
        raise d.error
    return d.provider


def _library_params(
    kwargs: dict[str, Any], headers: dict[str, str] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    optional, _ = _split_kwargs(kwargs)
    merged = dict(headers or {})
    merged.update(optional.pop("extra_headers", None) or {})
    return optional, merged


async def _first_chunk(chunks: AsyncIterator[Any], bound: float) -> Any:
    """A stream's first chunk within ``bound`` seconds, tighter than the per-chunk timeout
    the stream enforces itself."""
    try:
        with anyio.fail_after(bound):
            return await chunks.__anext__()
    except StopAsyncIteration:
        return _NOTHING
    except TimeoutError:
        raise Timeout(f"No first chunk within {bound:g} s") from None


def _sync_stream(open_stream: Callable[[], Awaitable[Any]]) -> Iterator[Any]:
    async def chunks() -> AsyncIterator[Any]:
        stream = await open_stream()
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()

    return iterate_async(chunks)
