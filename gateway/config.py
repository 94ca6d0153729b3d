"""``config.yaml``: decoded once, at start-up, into frozen Structs.

The file is LiteLLM's proxy config: ``model_list``, ``litellm_settings.custom_provider_map``,
``general_settings.master_key``, ``router_settings``, ``environment_variables``, plus this
gateway's own ``gateway_settings``. A broken file raises ``ConfigError`` whose text is one
line naming the file, the key path and what is wrong. Keys the gateway does not use are
warnings, not errors, since LiteLLM configs carry many.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, get_args

import msgspec

from . import _litellm_keys as litellm_keys
from ._handler_modules import ImportFailure, import_handler_module
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

logger = logging.getLogger("gateway.config")

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
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.7)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise error(str(key), f"unknown router setting{hint}")
        data[key] = value
    strategy = data.get("routing_strategy")
    if isinstance(strategy, str):
        data["routing_strategy"] = _STRATEGY_ALIASES.get(strategy, strategy)
    try:
        # strict=False: values from environment variables arrive as strings.
        return msgspec.convert(data, RouterSettings, strict=False)
    except msgspec.ValidationError as exc:
        key, problem = _explain(str(exc))
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


# The file's shape, as far as the gateway reads it. Unknown fields are ignored by msgspec
# here; the warning pass below reports them.


class _Params(msgspec.Struct):
    model: str
    api_key: str | None = None
    api_base: str | None = None
    timeout: _Positive | None = None
    stream_timeout: _Positive | None = None


class _Entry(msgspec.Struct):
    model_name: str
    litellm_params: _Params
    model_info: dict[str, Any] | None = None


class _ProviderEntry(msgspec.Struct):
    provider: str
    # A "module.attribute" string in YAML; a dict config may hold the handler itself.
    custom_handler: Any


class _LiteLLMSettings(msgspec.Struct):
    custom_provider_map: list[_ProviderEntry] | None = None
    # "module.instance" strings (or the objects, in a dict config); one string is a list of one.
    callbacks: list[Any] | str | None = None
    request_timeout: _Positive | None = None
    cache: bool = False
    cache_params: CacheSettings | None = None


class _GeneralSettings(msgspec.Struct):
    master_key: str | None = None
    database_url: str | None = None
    allow_unauthenticated: bool = False


class _File(msgspec.Struct):
    model_list: list[_Entry] | None = None
    litellm_settings: _LiteLLMSettings | None = None
    general_settings: _GeneralSettings | None = None
    router_settings: dict[str, Any] | None = None
    environment_variables: dict[str, Any] | None = None
    gateway_settings: GatewaySettings | None = None


def _fields(cls: type[msgspec.Struct]) -> tuple[str, ...]:
    return cls.__struct_fields__


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _suggest(key: Any, candidates: Any) -> str:
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "null",
}


def _type_name(name: str) -> str:
    # "str | null" -> "a string": null is how YAML spells an empty value, always allowed.
    parts = [p for p in name.split(" | ") if p != "null"] or ["null"]
    return " or ".join(_TYPE_NAMES.get(part, part) for part in parts)


def _explain(text: str) -> tuple[str, str]:
    """``(key path, problem)`` from a msgspec ``ValidationError`` text."""
    message, _, at = text.partition(" - at ")
    in_key = re.fullmatch(r"`key` in `\$(.*)`", at)
    path = (in_key[1] if in_key else at.strip("`")).removeprefix("$").lstrip(".")
    missing = re.fullmatch(r"Object missing required field `(.+)`", message)
    if missing:
        return _join(path, missing[1]), "required key missing"
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", message)
    if unknown:
        return _join(path, unknown[1]), "unknown key"
    expected = re.fullmatch(r"Expected `([^`]+)`(.*)", message)
    if expected:
        rest = re.sub(r"`([^`]+)`", lambda m: _type_name(m[1]), expected[2])
        rest = re.sub(r"(\d)\.0\b", r"\1", rest)  # "> 0.0" -> "> 0"
        problem = f"expected {_type_name(expected[1])}{rest}"
        return path, f"a key: {problem}" if in_key else problem
    return path, message


def _yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


class _Parser:
    def __init__(self, source: str, base_dir: str | None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.warnings: list[str] = []
        self.unknown_top: list[Any] = []

    def error(self, path: str | None, problem: str) -> ConfigError:
        return ConfigError(self.source, path or None, problem)

    def warn(self, path: str, problem: str) -> None:
        self.warnings.append(f"{self.source}: {path}: {problem}")

    # -- decoding ---------------------------------------------------------------------

    def decode(self, data: bytes | str) -> Any:
        try:
            return msgspec.yaml.decode(data)
        except msgspec.DecodeError as exc:
            raise self._yaml_error(str(exc)) from None

    def _yaml_error(self, text: str) -> ConfigError:
        # PyYAML's message: [context, context mark,] problem, problem mark. msgspec keeps
        # only the text, so the position is read back from it.
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        marks = [re.search(r"line (\d+), column (\d+)", line) for line in lines]
        position, problem = None, text.strip()
        for i in range(len(lines) - 1, -1, -1):
            if marks[i] is not None:
                position = marks[i]
                problem = lines[i - 1] if i > 0 else problem
                break
        where = f"line {position[1]}, column {position[2]}" if position else None
        return self.error(where, f"invalid YAML: {problem}")

    # -- environment ------------------------------------------------------------------

    def apply_environment_variables(self, raw: dict[Any, Any]) -> None:
        # LiteLLM exports this section before reading the rest, so os.environ/NAME
        # can name these variables, and handlers see them in os.environ.
        section = raw.get("environment_variables")
        if section is None:
            return
        if not isinstance(section, dict):
            raise self.error(
                "environment_variables", f"expected a mapping, got {_yaml_type(section)}"
            )
        for name, value in section.items():
            path = _join("environment_variables", name)
            if not isinstance(name, str) or not name:
                raise self.error(path, "a variable name must be a non-empty string")
            if isinstance(value, dict | list):
                raise self.error(path, f"expected a string or number, got {_yaml_type(value)}")
            os.environ[name] = "" if value is None else str(value)

    def resolve_env(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            if not value.startswith(ENV_PREFIX):
                return value
            name = value[len(ENV_PREFIX) :]
            if not name:
                raise self.error(path, f"{value!r} names no environment variable")
            resolved = os.environ.get(name)
            if resolved is None:
                raise self.error(path, f"environment variable {name} is not set")
            return resolved
        if isinstance(value, dict):
            return {k: self.resolve_env(v, _join(path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve_env(v, _join(path, i)) for i, v in enumerate(value)]
        return value

    # -- unknown keys -----------------------------------------------------------------

    def _unknown(
        self, section: Any, path: str, known: Any, litellm: frozenset[str] = frozenset()
    ) -> None:
        if not isinstance(section, dict):
            return  # the type check reports it
        for key in section:
            if key in known:
                continue
            where = _join(path, key)
            if key in litellm:
                self.warn(where, "LiteLLM setting not supported by this gateway, ignored")
            else:
                hint = _suggest(key, [*known, *litellm])
                self.warn(where, f"unknown key, ignored{hint}")

    def _strict(self, section: Any, path: str, cls: type[msgspec.Struct]) -> None:
        if not isinstance(section, dict):
            return
        known = _fields(cls)
        for key, value in section.items():
            where = _join(path, key)
            if key not in known:
                raise self.error(where, f"unknown key{_suggest(key, known)}")
            if key == "upstream":
                self._strict(value, where, UpstreamSettings)

    def check_keys(self, raw: dict[Any, Any]) -> None:
        known = _fields(_File)
        self.unknown_top = [k for k in raw if k not in known and k not in litellm_keys.TOP]
        self._unknown(raw, "", known, litellm_keys.TOP)
        models = raw.get("model_list")
        if isinstance(models, list):
            for i, entry in enumerate(models):
                self._unknown(entry, _join("model_list", i), _fields(_Entry))
        settings = raw.get("litellm_settings")
        self._unknown(
            settings, "litellm_settings", _fields(_LiteLLMSettings), litellm_keys.LITELLM_SETTINGS
        )
        if isinstance(settings, dict) and isinstance(settings.get("custom_provider_map"), list):
            for i, entry in enumerate(settings["custom_provider_map"]):
                path = _join("litellm_settings.custom_provider_map", i)
                self._unknown(entry, path, _fields(_ProviderEntry))
        general = raw.get("general_settings")
        self._unknown(
            general, "general_settings", _fields(_GeneralSettings), litellm_keys.GENERAL_SETTINGS
        )
        self._strict(raw.get("gateway_settings"), "gateway_settings", GatewaySettings)

    # -- types ------------------------------------------------------------------------

    def convert(self, raw: dict[Any, Any]) -> _File:
        try:
            # strict=False: values from environment variables are strings ("30" -> 30.0).
            return msgspec.convert(raw, _File, strict=False)
        except msgspec.ValidationError as exc:
            raise self._validation_error(str(exc)) from None

    def _validation_error(self, text: str) -> ConfigError:
        return self.error(*_explain(text))

    # -- handlers ---------------------------------------------------------------------

    def load_object(self, target: str, path: str, kind: str) -> Any:
        """The object a ``module.attribute`` string names (``kind``: "handler",
        "callback", for the error messages)."""
        module_name, dot, attr = target.strip().rpartition(".")
        if not dot or not module_name or not attr or "" in module_name.split("."):
            raise self.error(path, f"expected 'module.attribute', got {target!r}")
        try:
            module = import_handler_module(module_name, self.base_dir)
        except ImportFailure as exc:
            raise self.error(path, str(exc)) from None
        try:
            return getattr(module, attr)
        except AttributeError:
            public = [n for n in vars(module) if not n.startswith("_")]
            where = getattr(module, "__file__", None) or module_name
            raise self.error(
                path, f"{kind} module {where} has no attribute {attr!r}{_suggest(attr, public)}"
            ) from None

    def load_handler(self, target: Any, path: str) -> Any:
        if not isinstance(target, str):
            return target  # a dict config may hold the handler object itself
        handler = self.load_object(target, path, "handler")
        from .custom_llm import HANDLER_METHODS
        from .provider import Provider

        if not isinstance(handler, Provider) and not any(
            callable(getattr(handler, m, None)) for m in HANDLER_METHODS
        ):
            raise self.error(
                path,
                f"{target} is not a handler: it has none of {', '.join(HANDLER_METHODS)}",
            )
        return handler

    def load_callback(self, target: Any, path: str) -> Any:
        """A ``litellm_settings.callbacks`` entry: LiteLLM's built-in integrations (a
        name without a dot, e.g. "prometheus") are warned about; the rest load as handlers do."""
        if isinstance(target, str) and "." not in target.strip():
            self.warn(path, f"LiteLLM built-in callback {target!r} not supported, ignored")
            return None
        if isinstance(target, str):
            callback = self.load_object(target, path, "callback")
        else:
            callback = target  # a dict config may hold the object itself
        from ._callbacks import CALLBACK_METHODS

        if isinstance(callback, type):
            raise self.error(
                path,
                f"{target} is a class; name an instance of it "
                f"(callback_instance = {callback.__name__}())",
            )
        if not any(callable(getattr(callback, m, None)) for m in CALLBACK_METHODS):
            raise self.error(
                path, f"{target} is not a callback: it has none of {', '.join(CALLBACK_METHODS)}"
            )
        return callback

    # -- the whole file ---------------------------------------------------------------

    def parse(self, raw: Any, path: str | None) -> Config:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise self.error("top level", f"expected a mapping, got {_yaml_type(raw)}")
        # An empty section (`litellm_settings:` with nothing under it) is an absent one.
        raw = {k: v for k, v in raw.items() if v is not None}
        raw_general = raw.get("general_settings")
        raw_general = raw_general if isinstance(raw_general, dict) else None
        self.apply_environment_variables(raw)
        raw = {
            k: v if k == "environment_variables" else self.resolve_env(v, _join("", k))
            for k, v in raw.items()
        }
        self.check_keys(raw)
        file = self.convert(raw)

        providers: list[tuple[str, Any]] = []
        litellm_settings = file.litellm_settings or _LiteLLMSettings()
        seen: dict[str, int] = {}
        for i, entry in enumerate(litellm_settings.custom_provider_map or ()):
            where = _join("litellm_settings.custom_provider_map", i)
            name = entry.provider.strip()
            if not name or "/" in name:
                raise self.error(f"{where}.provider", f"invalid provider name {entry.provider!r}")
            if name in seen:
                raise self.error(
                    f"{where}.provider",
                    f"provider {name!r} is already defined at custom_provider_map[{seen[name]}]",
                )
            seen[name] = i
            providers.append(
                (name, self.load_handler(entry.custom_handler, f"{where}.custom_handler"))
            )

        listed = litellm_settings.callbacks or []
        single = isinstance(listed, str)
        callbacks = []
        for i, target in enumerate([listed] if single else listed):
            where = "litellm_settings.callbacks"
            callback = self.load_callback(target, where if single else _join(where, i))
            if callback is not None:
                callbacks.append(callback)

        deployments = []
        for i, (model, raw_entry) in enumerate(
            zip(file.model_list or (), raw.get("model_list") or (), strict=True)
        ):
            where = _join("model_list", i)
            if not model.model_name.strip():
                raise self.error(f"{where}.model_name", "must not be empty")
            params = model.litellm_params
            if not params.model.strip():
                raise self.error(f"{where}.litellm_params.model", "must not be empty")
            merged = dict(raw_entry["litellm_params"])
            # Typed values (timeout "30" from the environment -> 30.0) win over raw ones.
            for name in _fields(_Params):
                if name in merged:
                    merged[name] = getattr(params, name)
            deployments.append(
                Deployment(
                    model_name=model.model_name,
                    model=params.model,
                    params=merged,
                    api_key=params.api_key,
                    api_base=params.api_base,
                    timeout=params.timeout,
                    stream_timeout=params.stream_timeout,
                    model_info=dict(model.model_info or {}),
                )
            )
        if not deployments:
            if self.unknown_top:
                # `model_lst:` and nothing served: a typo, not a deliberately empty gateway.
                key = self.unknown_top[0]
                raise self.error(
                    _join("", key),
                    f"unknown key{_suggest(key, _fields(_File))}, and no model_list: "
                    "the gateway would serve no models",
                )
            self.warn("model_list", "no models configured")

        settings = file.gateway_settings or GatewaySettings()
        gateway_raw = raw.get("gateway_settings") or {}
        if litellm_settings.request_timeout is not None and "default_timeout" not in gateway_raw:
            # LiteLLM's global request timeout, unless our own setting says otherwise.
            settings = msgspec.structs.replace(
                settings, default_timeout=litellm_settings.request_timeout
            )

        router_settings = parse_router_settings(
            file.router_settings or {},
            lambda key, problem: self.error(_join("router_settings", key), problem),
            lambda key: self.warn(
                _join("router_settings", key),
                "LiteLLM setting not supported by this gateway, ignored",
            ),
        )
        general = file.general_settings or _GeneralSettings()
        if general.master_key is not None and not general.master_key.strip():
            # An empty key would switch auth off without a word: never what was meant.
            raw_key = (raw_general or {}).get("master_key")
            if isinstance(raw_key, str) and raw_key.startswith(ENV_PREFIX):
                problem = f"environment variable {raw_key[len(ENV_PREFIX) :]} is empty"
            else:
                problem = "must not be empty (remove it to run without a key)"
            raise self.error("general_settings.master_key", problem)

        if general.database_url is not None:
            if not general.database_url.strip():
                raise self.error("general_settings.database_url", "must not be empty")
            if not general.master_key:
                raise self.error(
                    "general_settings.database_url",
                    "virtual keys need general_settings.master_key (it administers them)",
                )
        cache = None
        if litellm_settings.cache:
            cache = litellm_settings.cache_params or CacheSettings()
            if cache.type == "redis" and not (
                cache.url or cache.host or router_settings.shared_url
            ):
                raise self.error(
                    "litellm_settings.cache_params.type",
                    "a redis cache needs cache_params.url (or host/port) or "
                    "router_settings.redis_url",
                )
        for line in self.warnings:
            logger.warning("%s", line)
        return Config(
            model_list=tuple(deployments),
            custom_providers=tuple(providers),
            callbacks=tuple(callbacks),
            master_key=general.master_key,
            database_url=general.database_url,
            allow_unauthenticated=general.allow_unauthenticated,
            settings=settings,
            router_settings=router_settings,
            cache=cache,
            path=path,
            warnings=tuple(self.warnings),
        )


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
    parser = _Parser(source, os.path.abspath(base_dir) if base_dir else None)
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
