"""Which provider serves a model string.

Looked up in this order: ``gateway.custom_provider_map`` (read at call time, as in
LiteLLM), providers added with ``register_provider``, the built-in providers, and
providers that installed packages declare under the ``gateway.providers`` entry-point
group.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from typing import Any

from .errors import BadRequestError
from .provider import Provider

__all__ = [
    "get_llm_provider",
    "known_providers",
    "provider_for",
    "register_provider",
    "resolve",
    "unregister_provider",
]

ENTRY_POINT_GROUP = "gateway.providers"

# name -> "module:attribute"; imported on first use so `import gateway` stays fast.
_BUILTINS: dict[str, str] = {
    "mock": "gateway_providers.mock:MockProvider",
    "openai": "gateway_providers.openai:OpenAIProvider",
    "hosted_vllm": "gateway_providers.openai:OpenAIProvider",
    "openai_like": "gateway_providers.openai:OpenAIProvider",
}

_lock = threading.Lock()
_registered: dict[str, Provider] = {}
_builtin_instances: dict[str, Provider] = {}
_entry_points: dict[str, Any] | None = None
# id(handler) -> (handler, provider): the handler is kept alive so its id stays unique.
_wrapped: dict[int, tuple[Any, Provider]] = {}


def as_provider(handler: Any, name: str) -> Provider:
    """A ``Provider`` for a handler object (cached), or the provider itself."""
    if isinstance(handler, Provider):
        return handler
    key = id(handler)
    entry = _wrapped.get(key)
    if entry is None or entry[0] is not handler:
        # A class (from a config or an entry point) is instantiated once, here.
        instance = handler() if isinstance(handler, type) else handler
        if isinstance(instance, Provider):
            provider = instance
        else:
            from .handlers import CustomProvider

            provider = CustomProvider(instance, name)
        entry = _wrapped[key] = (handler, provider)
    return entry[1]


def register_provider(name: str, handler: Any) -> None:
    """Serve ``name/<model>`` with ``handler``: a CustomLLM-style handler or a Provider."""
    if not name or "/" in name:
        raise ValueError(f"invalid provider name {name!r}")
    with _lock:
        _registered[name] = as_provider(handler, name)


def unregister_provider(name: str) -> None:
    with _lock:
        _registered.pop(name, None)


def _custom_map() -> list[dict[str, Any]]:
    package = sys.modules.get("gateway")
    return list(getattr(package, "custom_provider_map", None) or ())


def _load_entry_points() -> dict[str, Any]:
    global _entry_points
    if _entry_points is None:
        # Imported here: importlib.metadata costs ~15 ms, a tenth of `import gateway`.
        from importlib.metadata import entry_points

        _entry_points = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return _entry_points


def _builtin(name: str) -> Provider | None:
    target = _BUILTINS.get(name)
    if target is None:
        return None
    with _lock:
        provider = _builtin_instances.get(name)
        if provider is None:
            module_name, _, attr = target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                return None
            provider = getattr(module, attr)()
            provider.name = name
            _builtin_instances[name] = provider
        return provider


def _importable(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ImportError:
        return False


def known_providers() -> list[str]:
    """Every provider name that can serve a call right now."""
    names = [entry.get("provider") for entry in _custom_map()]
    names += list(_registered)
    names += [n for n, target in _BUILTINS.items() if _importable(target.partition(":")[0])]
    names += list(_load_entry_points())
    return list(dict.fromkeys(n for n in names if n))


def provider_for(name: str) -> Provider:
    """The provider registered under ``name``; a clear error naming the known ones if none."""
    for entry in _custom_map():
        if entry.get("provider") == name:
            return as_provider(entry["custom_handler"], name)
    provider = _registered.get(name) or _builtin(name)
    if provider is not None:
        return provider
    ep = _load_entry_points().get(name)
    if ep is not None:
        with _lock:
            if name not in _registered:
                _registered[name] = as_provider(ep.load(), name)
            return _registered[name]
    raise BadRequestError(
        f"Unknown provider {name!r}. Registered providers: "
        f"{', '.join(known_providers()) or '(none)'}. Register one with "
        "gateway.custom_provider_map or gateway.register_provider().",
        param="model",
        code="unknown_provider",
    )


def _split(model: str, custom_llm_provider: str | None) -> tuple[str, str]:
    if custom_llm_provider:
        prefix = custom_llm_provider + "/"
        return custom_llm_provider, model.removeprefix(prefix)
    name, sep, rest = model.partition("/")
    if not sep or not name:
        raise BadRequestError(
            f"Model {model!r} names no provider: use '<provider>/<model>'. Registered "
            f"providers: {', '.join(known_providers()) or '(none)'}.",
            param="model",
            code="unknown_provider",
        )
    return name, rest


def resolve(model: str, custom_llm_provider: str | None = None) -> tuple[Provider, str, str]:
    """``(provider, model without prefix, provider name)`` for a model string."""
    name, rest = _split(model, custom_llm_provider)
    return provider_for(name), rest, name


def get_llm_provider(
    model: str,
    custom_llm_provider: str | None = None,
    api_base: str | None = None,
    api_key: str | None = None,
) -> tuple[str, str, str | None, str | None]:
    """``("my-model", "my-custom-llm", api_key, api_base)`` for ``"my-custom-llm/my-model"``."""
    name, rest = _split(model, custom_llm_provider)
    provider_for(name)
    return rest, name, api_key, api_base
