"""Where and how one upstream call goes: URL, credentials, headers, body, timeout."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from gateway import http as gateway_http
from gateway.errors import AuthenticationError
from gateway.provider import ChatCall, EmbeddingCall, ImageCall, Provider

__all__ = ["DEFAULT_API_BASE", "GATEWAY_KEYS", "Target"]

DEFAULT_API_BASE = "https://api.openai.com/v1"

# Keys that steer the gateway and must never reach the upstream's request body.
GATEWAY_KEYS = frozenset(
    {
        "api_base",
        "api_key",
        "api_version",
        "base_url",
        "caching",
        "context_window_fallbacks",
        "custom_llm_provider",
        "drop_params",
        "extra_body",
        "extra_headers",
        "fallbacks",
        "litellm_call_id",
        "litellm_logging_obj",
        "logger_fn",
        "max_retries",
        "mock_delay",
        "mock_response",
        "model_info",
        "num_retries",
        "proxy_server_request",
        "request_timeout",
        "timeout",
    }
)

# Headers that describe one hop or the body we build; never copied from anyone.
HOP_HEADERS = frozenset(
    {
        "accept-encoding",
        "connection",
        "content-length",
        "content-type",
        "host",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# A caller's headers never carry credentials upstream: the deployment's key is the one.
CALLER_BLOCKED_HEADERS = HOP_HEADERS | {
    "api-key",
    "authorization",
    "cookie",
    "openai-organization",
    "openai-project",
    "x-api-key",
}


def _env(value: Any) -> Any:
    # Library callers may pass config-style ``os.environ/NAME`` values too.
    if isinstance(value, str) and value.startswith("os.environ/"):
        return os.environ.get(value[len("os.environ/") :])
    return value


def _strip(params: dict[str, Any]) -> dict[str, Any]:
    if GATEWAY_KEYS.isdisjoint(params):  # the usual case: a copy made in C
        return params.copy()
    return {k: v for k, v in params.items() if k not in GATEWAY_KEYS}


def _is_openai(base: str) -> bool:
    return urlsplit(base).hostname == "api.openai.com"


class _Fixed:
    """What a deployment's params and a call's own ``api_base``/``api_key`` fix: the same
    for every call with them, so worked out once (see ``Target``)."""

    __slots__ = ("api_key", "base", "cacheable", "deployment_extra", "headers", "params", "timeout")

    def __init__(self, provider: Provider, call: ChatCall | EmbeddingCall | ImageCall):
        params = self.params = call.litellm_params
        # Values read from the environment are read again on every call.
        self.cacheable = not any(
            isinstance(value, str) and value.startswith("os.environ/")
            for value in (
                call.api_base,
                call.api_key,
                params.get("api_base"),
                params.get("base_url"),
                params.get("api_key"),
            )
        )
        env = provider.name.upper() if provider.name else "OPENAI"
        base = _env(call.api_base) or _env(params.get("api_base")) or _env(params.get("base_url"))
        if not base:
            self.cacheable = False
            base = (
                os.environ.get(f"{env}_API_BASE")
                or (os.environ.get("OPENAI_BASE_URL") if env == "OPENAI" else None)
                or DEFAULT_API_BASE
            )
        self.base = str(base).rstrip("/")
        key = _env(call.api_key) or _env(params.get("api_key"))
        if not key and _is_openai(self.base):
            # The environment's key is OpenAI's: a self-hosted upstream gets only the key
            # its deployment names (api_key: os.environ/NAME), never this one by default.
            self.cacheable = False
            key = os.environ.get("OPENAI_API_KEY")
        self.api_key: str | None = str(key) if key else None
        if self.api_key is None and self.base == DEFAULT_API_BASE:
            raise AuthenticationError(
                "No API key for OpenAI: set api_key in the deployment's litellm_params "
                "(e.g. api_key: os.environ/OPENAI_API_KEY) or the OPENAI_API_KEY "
                "environment variable, or point api_base at an OpenAI-compatible server.",
                code="missing_api_key",
            )
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        if params.get("organization"):
            headers["openai-organization"] = str(params["organization"])
        # The deployment's headers are the operator's (an Azure-style api-key included);
        # a caller's never set credentials or hop headers.
        for name, value in (params.get("extra_headers") or {}).items():
            if name.lower() not in HOP_HEADERS:
                headers[name.lower()] = str(value)
        self.headers = headers
        extra = params.get("extra_body")
        self.deployment_extra: dict[str, Any] = extra if isinstance(extra, dict) else {}
        self.timeout = params.get("timeout") or params.get("request_timeout")


_FIXED_CACHE = 256  # deployments x call-level bases and keys: few; library calls: many


class Target:
    """Where and how one call goes: URL, headers, timeout and extra body fields.

    What the deployment fixes is worked out once per deployment (``_Fixed``, kept by
    the provider, keyed by the params' identity and the call's base and key): made per
    call, it cost ~200 bytecodes a request. Per call: the caller's headers, its
    extra_body and timeout.
    """

    __slots__ = ("api_key", "base", "client_extra", "deployment_extra", "headers", "timeout")

    def __init__(
        self,
        provider: Provider,
        call: ChatCall | EmbeddingCall | ImageCall,
        cache: dict[tuple[int, Any, Any], _Fixed] | None = None,
    ):
        params = call.litellm_params
        fixed = None
        if cache is not None:
            key = (id(params), call.api_base, call.api_key)
            fixed = cache.get(key)
            if fixed is None or fixed.params is not params:  # (an id reused: a new dict)
                fixed = _Fixed(provider, call)
                if fixed.cacheable:
                    if len(cache) >= _FIXED_CACHE:
                        cache.clear()
                    cache[key] = fixed  # holds params: its id is not reused while here
        else:
            fixed = _Fixed(provider, call)
        self.base = fixed.base
        self.api_key = fixed.api_key
        headers = fixed.headers.copy()
        for name, value in call.headers.items():
            if name.lower() not in CALLER_BLOCKED_HEADERS:
                headers[name.lower()] = str(value)
        if gateway_http.trace_headers is not None:  # OpenTelemetry on: this attempt's span
            gateway_http.trace_headers(headers)
        self.headers = headers
        self.deployment_extra = fixed.deployment_extra
        extra = call.optional_params.get("extra_body")
        self.client_extra: dict[str, Any] = extra if isinstance(extra, dict) else {}
        timeout = call.timeout
        if timeout is None:
            timeout = fixed.timeout
        self.timeout = float(timeout) if timeout is not None else None

    @property
    def host(self) -> str | None:
        return urlsplit(self.base).hostname

    def url(self, path: str) -> str:
        return self.base + path

    def body(self, optional_params: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
        """The request body: the caller's parameters, the deployment's extra_body over
        them, the caller's extra_body only where it adds a field, and ``fixed`` (model,
        messages/input/prompt) over everything: a request never picks another model."""
        body = _strip(optional_params)
        body.update(self.deployment_extra)
        for name, value in self.client_extra.items():
            if name not in body and name not in GATEWAY_KEYS:
                body[name] = value
        body.update(fixed)
        return body
