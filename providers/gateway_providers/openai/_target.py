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
    return {k: v for k, v in params.items() if k not in GATEWAY_KEYS}


def _is_openai(base: str) -> bool:
    return urlsplit(base).hostname == "api.openai.com"


class Target:
    """Where and how one call goes: URL, headers, timeout and extra body fields."""

    __slots__ = ("api_key", "base", "client_extra", "deployment_extra", "headers", "timeout")

    def __init__(self, provider: Provider, call: ChatCall | EmbeddingCall | ImageCall):
        params = call.litellm_params
        env = provider.name.upper() if provider.name else "OPENAI"
        base = (
            _env(call.api_base)
            or _env(params.get("api_base"))
            or _env(params.get("base_url"))
            or os.environ.get(f"{env}_API_BASE")
            or (os.environ.get("OPENAI_BASE_URL") if env == "OPENAI" else None)
            or DEFAULT_API_BASE
        )
        self.base = str(base).rstrip("/")
        key = _env(call.api_key) or _env(params.get("api_key"))
        if not key and _is_openai(self.base):
            # The environment's key is OpenAI's: a self-hosted upstream gets only the key
            # its deployment names (api_key: os.environ/NAME), never this one by default.
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
        for name, value in call.headers.items():
            if name.lower() not in CALLER_BLOCKED_HEADERS:
                headers[name.lower()] = str(value)
        if gateway_http.trace_headers is not None:  # OpenTelemetry on: this attempt's span
            gateway_http.trace_headers(headers)
        self.headers = headers
        extra = params.get("extra_body")
        self.deployment_extra: dict[str, Any] = extra if isinstance(extra, dict) else {}
        extra = call.optional_params.get("extra_body")
        self.client_extra: dict[str, Any] = extra if isinstance(extra, dict) else {}
        timeout = call.timeout
        if timeout is None:
            timeout = params.get("timeout") or params.get("request_timeout")
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
