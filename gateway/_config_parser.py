"""The config file's parser: ``config.yaml`` text or a mapping -> a ``Config``.

In order: YAML decoding, ``environment_variables`` exported, ``os.environ/NAME`` values
resolved, unknown keys warned about (errors in ``gateway_settings``), types converted
into the file's shape (the private Structs below), handler and callback modules
imported, then each section checked and turned into the public Structs of
``gateway.config``. ``gateway.config.parse_config`` and ``load_config`` are the way in.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import msgspec

from . import _litellm_keys as litellm_keys
from ._config_messages import explain, join, suggest, yaml_type
from ._handler_modules import ImportFailure, import_handler_module
from .config import (
    ENV_PREFIX,
    CacheSettings,
    Config,
    ConfigError,
    Deployment,
    GatewaySettings,
    UpstreamSettings,
    _Positive,
    parse_router_settings,
)

logger = logging.getLogger("gateway.config")


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


class Parser:
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
                "environment_variables", f"expected a mapping, got {yaml_type(section)}"
            )
        for name, value in section.items():
            path = join("environment_variables", name)
            if not isinstance(name, str) or not name:
                raise self.error(path, "a variable name must be a non-empty string")
            if isinstance(value, dict | list):
                raise self.error(path, f"expected a string or number, got {yaml_type(value)}")
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
            return {k: self.resolve_env(v, join(path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve_env(v, join(path, i)) for i, v in enumerate(value)]
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
            where = join(path, key)
            if key in litellm:
                self.warn(where, "LiteLLM setting not supported by this gateway, ignored")
            else:
                hint = suggest(key, [*known, *litellm])
                self.warn(where, f"unknown key, ignored{hint}")

    def _strict(self, section: Any, path: str, cls: type[msgspec.Struct]) -> None:
        if not isinstance(section, dict):
            return
        known = _fields(cls)
        for key, value in section.items():
            where = join(path, key)
            if key not in known:
                raise self.error(where, f"unknown key{suggest(key, known)}")
            if key == "upstream":
                self._strict(value, where, UpstreamSettings)

    def check_keys(self, raw: dict[Any, Any]) -> None:
        known = _fields(_File)
        self.unknown_top = [k for k in raw if k not in known and k not in litellm_keys.TOP]
        self._unknown(raw, "", known, litellm_keys.TOP)
        models = raw.get("model_list")
        if isinstance(models, list):
            for i, entry in enumerate(models):
                self._unknown(entry, join("model_list", i), _fields(_Entry))
        settings = raw.get("litellm_settings")
        self._unknown(
            settings, "litellm_settings", _fields(_LiteLLMSettings), litellm_keys.LITELLM_SETTINGS
        )
        if isinstance(settings, dict) and isinstance(settings.get("custom_provider_map"), list):
            for i, entry in enumerate(settings["custom_provider_map"]):
                path = join("litellm_settings.custom_provider_map", i)
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
        return self.error(*explain(text))

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
                path, f"{kind} module {where} has no attribute {attr!r}{suggest(attr, public)}"
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
            raise self.error("top level", f"expected a mapping, got {yaml_type(raw)}")
        # An empty section (`litellm_settings:` with nothing under it) is an absent one.
        raw = {k: v for k, v in raw.items() if v is not None}
        raw_general = raw.get("general_settings")
        raw_general = raw_general if isinstance(raw_general, dict) else None
        self.apply_environment_variables(raw)
        raw = {
            k: v if k == "environment_variables" else self.resolve_env(v, join("", k))
            for k, v in raw.items()
        }
        self.check_keys(raw)
        file = self.convert(raw)

        providers: list[tuple[str, Any]] = []
        litellm_settings = file.litellm_settings or _LiteLLMSettings()
        seen: dict[str, int] = {}
        for i, entry in enumerate(litellm_settings.custom_provider_map or ()):
            where = join("litellm_settings.custom_provider_map", i)
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
            callback = self.load_callback(target, where if single else join(where, i))
            if callback is not None:
                callbacks.append(callback)

        deployments = []
        for i, (model, raw_entry) in enumerate(
            zip(file.model_list or (), raw.get("model_list") or (), strict=True)
        ):
            where = join("model_list", i)
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
                    join("", key),
                    f"unknown key{suggest(key, _fields(_File))}, and no model_list: "
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
            lambda key, problem: self.error(join("router_settings", key), problem),
            lambda key: self.warn(
                join("router_settings", key),
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
