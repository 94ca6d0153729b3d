"""``config.yaml``: decoded once, at start-up, into frozen Structs.

The file is LiteLLM's proxy config: ``model_list``, ``litellm_settings.custom_provider_map``,
``general_settings.master_key``, ``router_settings``, ``environment_variables``, plus this
gateway's own ``gateway_settings``. A broken file raises ``ConfigError`` whose text is one
line naming the file, the key path and what is wrong. Keys the gateway does not use are
warnings, not errors, since LiteLLM configs carry many.

Here: the public Structs every part of the gateway reads (``Config`` and its sections,
``RouterSettings`` included), the errors, ``router_settings``' own parsing (shared with
``gateway.Router``'s keyword arguments) and the entry points. The walk over a file is
in ``gateway/_config_parser.py``, the wording of problems in ``gateway/_config_messages.py``,
the LiteLLM keys we ignore in ``gateway/_litellm_keys.py`` and the import of handler
modules in ``gateway/_handler_modules.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, get_args

import msgspec

from . import _litellm_keys as litellm_keys
from ._config_messages import explain, suggest
from .provider import DEFAULT_TIMEOUT

__all__ = [
    "Config",
    "ConfigError",
    "Deployment",
    "GatewaySettings",
    "RouterConfigError",
    "RouterSettings",
    "UpstreamSettings",
    "load_config",
    "parse_config",
    "parse_router_settings",
]

ENV_PREFIX = "os.environ/"

_Positive = Annotated[float, msgspec.Meta(gt=0)]
_PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0)]
_NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]


class ConfigError(Exception):
    """A broken config. ``str(exc)`` is one line: ``<file>: <key.path>: <what is wrong>``."""

    def __init__(self, source: str, key_path: str | None, problem: str) -> None:
        self.source = source
        self.key_path = key_path
        self.problem = problem
        where = f"{source}: {key_path}" if key_path else source
        super().__init__(f"{where}: {problem}".replace("\n", " "))


class RouterConfigError(ConfigError, ValueError):
    """A bad router setting or deployment limit given to ``gateway.Router`` directly.

    ``config_key`` is its path in config.yaml (``router_settings.num_retries``,
    ``model_list[2].litellm_params.rpm``); the HTTP gateway reports it with the file name.
    """

    def __init__(self, config_key: str, problem: str, *, key: str | None = None) -> None:
        self.config_key = config_key
        super().__init__("gateway.Router", key or config_key, problem)


# The gateway's own settings. Unknown keys here are errors (with a suggestion): this
# section is ours, so a typo in it must not pass silently.


class UpstreamSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The shared HTTP client of the OpenAI-compatible provider."""

    max_connections: _PositiveInt = 1000
    max_keepalive_connections: _NonNegativeInt = 100
    keepalive_expiry: _NonNegative = 30.0
    connect_timeout: _Positive = 5.0
    read_timeout: _Positive = 600.0
    http2: bool = False
    trust_env: bool = False  # proxies (HTTP(S)_PROXY, NO_PROXY) from the environment
    max_response_bytes: _PositiveInt = 32 * 1024 * 1024  # a JSON answer, decompressed
    max_event_bytes: _PositiveInt = 4 * 1024 * 1024  # one line / event of a stream


class GatewaySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``gateway_settings:`` section."""

    sync_worker_threads: _PositiveInt = 64
    # How many of them one model (of one handler) may hold; None: half of them.
    sync_worker_threads_per_model: _PositiveInt | None = None
    max_request_body_bytes: _PositiveInt = 16 * 1024 * 1024
    default_timeout: _Positive = DEFAULT_TIMEOUT
    graceful_timeout: _NonNegative = 30.0
    # The server's own limits (the gateway command; see gateway/_server.py).
    max_url_bytes: _PositiveInt = 16 * 1024
    max_header_bytes: _PositiveInt = 64 * 1024
    header_timeout: _Positive = 10.0
    body_timeout: _Positive = 60.0
    keepalive_timeout: _Positive = 5.0
    max_connections: _PositiveInt = 2048
    upstream: UpstreamSettings = UpstreamSettings()
    # The Responses API's store (previous_response_id, GET /v1/responses/{id}): oldest
    # dropped first past either bound.
    responses_store_max_items: _PositiveInt = 10_000
    responses_store_max_bytes: _PositiveInt = 64 * 1024 * 1024
    # Logging callbacks' events waiting to run; past it they are dropped and counted.
    callback_queue_size: _PositiveInt = 10_000
    # OpenTelemetry traces (pip install 'gateway[otel]'), configured by the OTEL_* variables.
    otel: bool = False
    # GET /metrics asks for the master key (scrapers can send a bearer token).
    metrics_auth: bool = False
    # False: no per-request metrics and no /metrics (404), for a gateway nobody scrapes.
    metrics: bool = True
    # False: no request ids made or echoed (x-request-id, error bodies, log lines,
    # upstream headers), for a gateway behind a proxy that assigns its own. An
    # unexpected 500 still gets one, to match the client's error with the log.
    request_ids: bool = True
    # The gateway command freezes startup's objects and collects young ones every 50,000
    # allocations (gateway/_gc.py: +48% req/s at 256 connections); false: Python's defaults.
    gc_tuning: bool = True


# -- router_settings ------------------------------------------------------------------

_GroupList = list[str] | str
_Fallbacks = list[dict[str, _GroupList]] | dict[str, _GroupList]

Strategy = Literal["simple-shuffle", "least-busy", "latency-based", "usage-based"]


class RouterSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``router_settings``: every key is also a keyword argument of ``gateway.Router``."""

    routing_strategy: Strategy = "simple-shuffle"
    num_retries: _NonNegativeInt = 0
    # Backoff before retrying the same deployment: exponential from retry_backoff,
    # capped at retry_backoff_max, with jitter. A Retry-After longer than the cap
    # ends the retries (the caller gets the error and its Retry-After).
    retry_backoff: _NonNegative = 0.5
    retry_backoff_max: _NonNegative = 10.0
    # The longest wait an upstream's Retry-After (or retry-after-ms) can impose: the
    # cooldown after a 429 and a wait before a retry are never longer. An upstream's
    # header is outside input; `Retry-After: 1e12` must not cool a deployment for ever.
    max_retry_after: _NonNegative = 60.0
    fallbacks: _Fallbacks = msgspec.field(default_factory=list)
    context_window_fallbacks: _Fallbacks = msgspec.field(default_factory=list)
    default_fallbacks: list[str] = msgspec.field(default_factory=list)
    timeout: _Positive | None = None
    stream_timeout: _Positive | None = None
    allowed_fails: _NonNegativeInt = 3
    cooldown_time: _NonNegative = 5.0
    disable_cooldowns: bool = False
    max_in_flight: _PositiveInt | None = None
    default_max_parallel_requests: _PositiveInt | None = None
    max_queue: _NonNegativeInt = 100
    queue_timeout: _NonNegative = 5.0
    hedge_after_ms: _NonNegative | dict[str, _NonNegative] | None = None
    latency_buffer: _NonNegative = 0.0
    # Shared state across instances (cooldowns, rpm/tpm windows, in-flight counts, key
    # counters): a redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL,
    # or LiteLLM's host/port/password. Off when neither is set.
    redis_url: str | None = None
    redis_host: str | None = None
    redis_port: _PositiveInt | None = None
    redis_password: str | None = None
    # Longest wait on Redis before this instance falls back to its own counters.
    redis_timeout: _Positive = 0.02

    @property
    def shared_url(self) -> str | None:
        """The Redis URL of ``redis_url`` or ``redis_host``/``port``/``password``."""
        return redis_url_of(self.redis_url, self.redis_host, self.redis_port, self.redis_password)


def redis_url_of(
    url: str | None, host: str | None, port: int | None, password: str | None
) -> str | None:
    if url:
        return url
    if not host:
        return None
    from urllib.parse import quote

    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port or 6379}"


_STRATEGY_ALIASES = {
    "shuffle": "simple-shuffle",
    "latency-based-routing": "latency-based",
    "usage-based-routing": "usage-based",
    "usage-based-routing-v2": "usage-based",
}


def parse_router_settings(
    raw: Mapping[str, Any],
    error: Callable[[str, str], Exception],
    ignored: Callable[[str], None],
) -> RouterSettings:
    """``router_settings`` (LiteLLM's names and shapes accepted) as ``RouterSettings``.

    ``error(key, problem)`` makes the exception for a bad key; ``ignored(key)`` is told
    about LiteLLM settings this gateway does not implement.
    """
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
        if key in litellm_keys.ROUTER_SETTINGS:
            ignored(key)
            continue
        if key not in known:
            hint = suggest(str(key), known, cutoff=0.7)
            raise error(str(key), f"unknown router setting{hint}")
        data[key] = value
    strategy = data.get("routing_strategy")
    if isinstance(strategy, str):
        data["routing_strategy"] = _STRATEGY_ALIASES.get(strategy, strategy)
    try:
        # strict=False: values from environment variables arrive as strings.
        return msgspec.convert(data, RouterSettings, strict=False)
    except msgspec.ValidationError as exc:
        key, problem = explain(str(exc))
        if key == "routing_strategy":
            problem = f"must be one of {', '.join(get_args(Strategy))}, got {strategy!r}"
        raise error(key, problem) from None


class CacheSettings(msgspec.Struct, frozen=True, kw_only=True):
    """``litellm_settings.cache_params`` (with ``cache: true``): the response cache."""

    type: Literal["local", "redis"] = "local"
    # Seconds an answer is served from the cache; a request's cache.ttl may shorten it.
    ttl: _Positive = 600.0
    namespace: str = "gateway"
    # Entries kept by the local LRU (per process); Redis evicts by its own maxmemory.
    max_size: _PositiveInt = 1000
    # Answers larger than this are not stored (a cache must not become the memory hog).
    max_item_bytes: _PositiveInt = 1 << 20
    # For type redis: its own server, else router_settings' one.
    url: str | None = None
    host: str | None = None
    port: _PositiveInt | None = None
    password: str | None = None


class Deployment(msgspec.Struct, frozen=True):
    """One ``model_list`` entry: the public ``model_name`` and how to call it."""

    model_name: str
    model: str
    # The whole litellm_params, env-resolved: the handler's custom keys are in here.
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    api_key: str | None = None
    api_base: str | None = None
    timeout: float | None = None
    stream_timeout: float | None = None
    model_info: dict[str, Any] = msgspec.field(default_factory=dict)


class Config(msgspec.Struct, frozen=True):
    """A decoded, validated config; handlers are loaded objects."""

    model_list: tuple[Deployment, ...] = ()
    custom_providers: tuple[tuple[str, Any], ...] = ()
    # litellm_settings.callbacks: loaded CustomLogger-like objects.
    callbacks: tuple[Any, ...] = ()
    master_key: str | None = None
    # Virtual keys and spend live here (sqlite:///path.db or postgresql://...); off if None.
    database_url: str | None = None
    # No master_key on a non-loopback address: the CLI refuses to start unless this is set.
    allow_unauthenticated: bool = False
    settings: GatewaySettings = GatewaySettings()
    router_settings: RouterSettings = RouterSettings()
    # The response cache (litellm_settings.cache: true); off if None.
    cache: CacheSettings | None = None
    path: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def model_names(self) -> list[str]:
        """The public model names, each once, in file order."""
        return list(dict.fromkeys(d.model_name for d in self.model_list))


# -- public entry points --------------------------------------------------------------


def parse_config(
    data: bytes | str | dict[str, Any],
    *,
    source: str = "<config>",
    base_dir: str | None = None,
    path: str | None = None,
) -> Config:
    """Decode and validate a config from YAML text or an already-decoded mapping.

    ``base_dir`` is where ``custom_handler: module.attr`` modules are looked for first
    (the config file's folder); ``source`` names the config in error messages.
    """
    from ._config_parser import Parser  # it imports this module's Structs

    parser = Parser(source, os.path.abspath(base_dir) if base_dir else None)
    raw = data if isinstance(data, dict) else parser.decode(data)
    return parser.parse(raw, path)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, decode and validate a ``config.yaml``; ``ConfigError`` if anything is wrong."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(source, None, "file not found") from None
    except IsADirectoryError:
        raise ConfigError(source, None, "is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror or exc}") from None
    absolute = os.path.abspath(source)
    return parse_config(data, source=source, base_dir=os.path.dirname(absolute), path=absolute)
