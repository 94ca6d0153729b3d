"""Deployments and the groups they form: built once from ``model_list`` and the settings.

A deployment knows its provider, its limits (weight, rpm, tpm, parallel requests) and
the timeouts that apply to it; a group knows its deployments, where it falls back to,
whether it hedges, and which shortcuts its shape allows on the request path.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from .. import registry
from ..config import Deployment as DeploymentSpec
from ..config import RouterConfigError, RouterSettings
from ..errors import GatewayError
from ..provider import DEFAULT_TIMEOUT, Provider

__all__ = [
    "Deployment",
    "Group",
    "build_groups",
    "fallback_map",
    "provider_of",
    "settings_error",
]


def settings_error(key: str, problem: str) -> RouterConfigError:
    return RouterConfigError(f"router_settings.{key}", problem, key=key)


def _group_names(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def fallback_map(value: Any) -> dict[str, list[str]]:
    """``fallbacks`` in any of its LiteLLM shapes, as ``{group: [groups to try]}``."""
    result: dict[str, list[str]] = {}
    for item in [value] if isinstance(value, dict) else value:
        for group, targets in item.items():
            result.setdefault(group, []).extend(_group_names(targets))
    return result


def _spec(entry: Any) -> DeploymentSpec:
    """A ``model_list`` entry as a ``gateway.config.Deployment``: one from a config, or a
    LiteLLM-style mapping given to ``Router`` directly."""
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
    # Anything else with the same fields (e.g. an older copy of the Struct).
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


class Deployment:
    """One ``model_list`` entry, ready to serve: its provider and its limits."""

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
        self.group: Group
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
        self.attempt_timeout = DEFAULT_TIMEOUT  # set by build_groups: the timeout that applies
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


def provider_of(d: Deployment) -> Provider:
    """The deployment's provider, or the error that kept it from being built."""
    if d.provider is None:
        assert d.error is not None
        raise d.error
    return d.provider


def weight_of(d: Deployment) -> float:
    if d.weight is not None:
        return d.weight
    return float(d.rpm) if d.rpm else 1.0


class Group:
    """The deployments of one ``model_name`` and what the settings say about them."""

    __slots__ = (
        "can_cool",
        "context_fallbacks",
        "deployments",
        "direct",
        "fallbacks",
        "hedge_after",
        "ids",
        "name",
        "simple",
        "weights",
    )

    def __init__(self, name: str, deployments: list[Deployment]) -> None:
        self.name = name
        self.deployments = deployments
        self.ids = [d.id for d in deployments]
        for d in deployments:
            d.group = self
        self.fallbacks: list[Group] = []
        self.context_fallbacks: list[Group] = []
        self.hedge_after: float | None = None
        self.can_cool = False
        # One deployment, nothing to check before using it.
        self.simple = False
        # ... and nothing to do after a failure either: the hot path.
        self.direct = False
        self.weights: list[float] | None = None


def build_groups(
    model_list: Iterable[Any],
    custom: Mapping[str, Any],
    s: RouterSettings,
    default_timeout: float | None,
) -> dict[str, Group]:
    """The groups of ``model_list``, linked to each other as the settings say."""
    members: dict[str, list[Deployment]] = {}
    for index, entry in enumerate(model_list):
        spec = _spec(entry)
        d = Deployment(spec, index, custom)
        if d.max_parallel is None:
            d.max_parallel = s.default_max_parallel_requests
        d.attempt_timeout = d.timeout or s.timeout or default_timeout or DEFAULT_TIMEOUT
        d.track_usage = bool(d.rpm or d.tpm or s.routing_strategy == "usage-based")
        members.setdefault(spec.model_name, []).append(d)
    groups = {name: Group(name, ds) for name, ds in members.items()}
    _link(groups, s)
    return groups


def _link(groups: dict[str, Group], s: RouterSettings) -> None:
    def group(name: str, key: str) -> Group:
        found = groups.get(name)
        if found is None:
            known = ", ".join(groups) or "(none)"
            raise settings_error(key, f"no model group named {name!r} (groups: {known})")
        return found

    fallbacks = fallback_map(s.fallbacks)
    context = fallback_map(s.context_window_fallbacks)
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

    for g in groups.values():
        g.fallbacks = [groups[n] for n in fallbacks.get(g.name, ())] or [
            d for d in defaults if d is not g
        ]
        g.context_fallbacks = [groups[n] for n in context.get(g.name, ())]
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
