"""Model groups: which deployment serves a request for a ``model_name``.

The HTTP gateway and library users call the router; it picks a deployment, builds the
provider call and runs it.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import msgspec

from . import registry
from .calls import astream_chunks, run_acompletion, run_aembedding, run_aimage_generation
from .errors import GatewayError, NotFoundError
from .provider import ChatCall, EmbeddingCall, ImageCall, Provider

__all__ = ["DeploymentSpec", "Routed", "Router"]


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


class _Deployment:
    __slots__ = ("error", "id", "provider", "provider_model", "spec")

    def __init__(self, spec: DeploymentSpec, index: int, custom: Mapping[str, Any]) -> None:
        self.spec = spec
        self.id = f"{spec.model_name}/{index}"
        self.provider: Provider | None = None
        self.error: GatewayError | None = None
        name, _, rest = spec.model.partition("/")
        self.provider_model = rest
        try:
            if name in custom:
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


class Routed(msgspec.Struct):
    """What a routed call produced, and where."""

    result: Any
    deployment: str
    attempts: int = 1


class Router:
    """Serves model groups from a ``model_list``.

    Settings are keyword arguments (``router_settings`` in config.yaml).
    """

    def __init__(
        self,
        model_list: Iterable[Any] = (),
        *,
        custom_providers: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
        default_timeout: float | None = None,
        **settings: Any,
    ) -> None:
        custom = dict(custom_providers)
        self.default_timeout = default_timeout
        self.settings = settings
        self._groups: dict[str, list[_Deployment]] = {}
        for index, entry in enumerate(model_list):
            spec = _spec(entry)
            self._groups.setdefault(spec.model_name, []).append(_Deployment(spec, index, custom))

    # introspection

    def model_names(self) -> list[str]:
        return list(self._groups)

    def providers(self) -> list[Provider]:
        seen: dict[int, Provider] = {}
        for group in self._groups.values():
            for d in group:
                if d.provider is not None:
                    seen[id(d.provider)] = d.provider
        return list(seen.values())

    def has_model(self, model_name: str) -> bool:
        return model_name in self._groups

    # picking

    def _pick(self, model_name: str) -> _Deployment:
        group = self._groups.get(model_name)
        if group is None:
            raise NotFoundError(
                f"The model `{model_name}` does not exist",
                param="model",
                code="model_not_found",
            )
        deployment = group[0] if len(group) == 1 else random.choice(group)
        if deployment.error is not None:
            raise deployment.error
        return deployment

    def _timeout(self, deployment: _Deployment, timeout: float | None) -> float | None:
        if timeout is not None:
            return timeout
        if deployment.spec.timeout is not None:
            return deployment.spec.timeout
        return self.default_timeout

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
    ) -> Routed:
        """A chat completion; with ``stream`` the result is an async iterator of chunks
        whose first chunk has already arrived (so failures before it are raised here)."""
        d = self._pick(model_name)
        spec = d.spec
        call = ChatCall(
            model=d.provider_model,
            messages=messages,
            optional_params=optional_params,
            litellm_params=spec.params,
            api_key=spec.api_key,
            api_base=spec.api_base,
            headers=headers if headers is not None else {},
            timeout=self._timeout(d, timeout),
            stream=stream,
        )
        assert d.provider is not None
        if stream:
            chunks = astream_chunks(d.provider, call, model_name, raw_dicts=True)
            return Routed(await _primed(chunks), d.id)
        return Routed(await run_acompletion(d.provider, call, model_name), d.id)

    async def embed(
        self,
        model_name: str,
        input: Any,
        optional_params: dict[str, Any],
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Routed:
        d = self._pick(model_name)
        spec = d.spec
        call = EmbeddingCall(
            model=d.provider_model,
            input=input,
            optional_params=optional_params,
            litellm_params=spec.params,
            api_key=spec.api_key,
            api_base=spec.api_base,
            headers=headers if headers is not None else {},
            timeout=self._timeout(d, timeout),
        )
        assert d.provider is not None
        return Routed(await run_aembedding(d.provider, call, model_name), d.id)

    async def image(
        self,
        model_name: str,
        prompt: str,
        optional_params: dict[str, Any],
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Routed:
        d = self._pick(model_name)
        spec = d.spec
        call = ImageCall(
            model=d.provider_model,
            prompt=prompt,
            optional_params=optional_params,
            litellm_params=spec.params,
            api_key=spec.api_key,
            api_base=spec.api_base,
            headers=headers if headers is not None else {},
            timeout=self._timeout(d, timeout),
        )
        assert d.provider is not None
        return Routed(await run_aimage_generation(d.provider, call), d.id)


async def _primed(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Wait for the first chunk now; hand back an iterator that yields it, then the rest."""
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await chunks.aclose()  # type: ignore[attr-defined]
        raise
    return _chain(first, chunks)


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        if first is not None:
            yield first
            async for chunk in rest:
                yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
