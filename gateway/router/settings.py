"""``router_settings``: decoded and checked once, when a ``Router`` is made."""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

import msgspec

from ..config import ConfigError

__all__ = ["RouterConfigError", "RouterSettings", "Strategy", "fallback_map", "parse_settings"]

logger = logging.getLogger("gateway.router")

_NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
_PosInt = Annotated[int, msgspec.Meta(ge=1)]
_NonNeg = Annotated[float, msgspec.Meta(ge=0)]
_Pos = Annotated[float, msgspec.Meta(gt=0)]
_GroupList = list[str] | str
_Fallbacks = list[dict[str, _GroupList]] | dict[str, _GroupList]

Strategy = Literal["simple-shuffle", "least-busy", "latency-based", "usage-based"]


class RouterSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``router_settings``: every key is also a keyword argument of ``Router``."""

    routing_strategy: Strategy = "simple-shuffle"
    num_retries: _NonNegInt = 0
    # Backoff before retrying the same deployment: exponential from retry_backoff,
    # capped at retry_backoff_max, with jitter. A Retry-After longer than the cap
    # ends the retries (the caller gets the error and its Retry-After).
    retry_backoff: _NonNeg = 0.5
    retry_backoff_max: _NonNeg = 10.0
    # The longest wait an upstream's Retry-After (or retry-after-ms) can impose: the
    # cooldown after a 429 and a wait before a retry are never longer. An upstream's
    # header is outside input; `Retry-After: 1e12` must not cool a deployment for ever.
    max_retry_after: _NonNeg = 60.0
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


def settings_error(key: str, problem: str) -> RouterConfigError:
    return RouterConfigError(f"router_settings.{key}", problem, key=key)


def parse_settings(raw: Mapping[str, Any]) -> RouterSettings:
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
            raise settings_error(str(key), f"unknown router setting{hint}")
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
        raise settings_error(key, message) from None


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


def fallback_map(value: Any) -> dict[str, list[str]]:
    """``fallbacks`` in any of its LiteLLM shapes, as ``{group: [groups to try]}``."""
    result: dict[str, list[str]] = {}
    for item in [value] if isinstance(value, dict) else value:
        for group, targets in item.items():
            result.setdefault(group, []).extend(_group_names(targets))
    return result
