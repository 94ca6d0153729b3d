"""Upstream failures as gateway errors, mapped once.

The client gets the status and a short message with secrets and addresses taken out;
the whole story (URL, upstream body, low-level error) goes to the log.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import msgspec

from gateway._h1 import (
    ConnectError,
    ConnectTimeout,
    PoolTimeout,
    ReadTimeout,
    ServerDisconnected,
    UpstreamError,
)
from gateway.errors import (
    APIConnectionError,
    BadGatewayError,
    ContextWindowExceededError,
    GatewayError,
    GatewayTimeoutError,
    error_for_status,
)

if TYPE_CHECKING:
    from gateway._h1 import Response

    from ._target import Target

__all__ = [
    "event_error",
    "is_error",
    "log",
    "logger",
    "mapped",
    "public",
    "redact",
    "transport_error",
    "upstream_error",
]

_decoder = msgspec.json.Decoder()

_SECRETS = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{3,}|(?<=Bearer )\S+", re.IGNORECASE)
# URLs, IPv4 and bracketed IPv6 addresses (with ports): an upstream's message may name
# internal hosts the client must not learn.
_ADDRESSES = re.compile(
    r"\b[a-z][a-z0-9+.-]*://\S+|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\[[0-9a-f:.]+\](?::\d+)?",
    re.IGNORECASE,
)
_MESSAGE_CAP = 300  # characters of an upstream's message a client gets

logger = logging.getLogger("gateway.upstream")


def redact(text: str, api_key: str | None) -> str:
    if api_key:
        text = text.replace(api_key, "[REDACTED]")
    return _SECRETS.sub("[REDACTED]", text)


def public(text: str, target: Target) -> str:
    """An upstream's message as a client may see it: no secrets, no addresses, short."""
    text = redact(text, target.api_key)
    host = target.host
    if host:
        text = re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w-])", "[UPSTREAM]", text, flags=re.I)
    text = _ADDRESSES.sub("[ADDRESS]", text)
    if len(text) > _MESSAGE_CAP:
        text = text[: _MESSAGE_CAP - 3] + "..."
    return text


def log(level: int, what: str, target: Target, path: str, detail: str) -> None:
    if logger.isEnabledFor(level):
        url = target.url(path)
        logger.log(level, "%s from %s: %s", what, url, redact(detail, target.api_key))


def upstream_error(response: Response, body: bytes, target: Target, path: str) -> GatewayError:
    status = response.status
    message: Any = None
    param = code = None
    try:
        data = _decoder.decode(body) if body else None
    except msgspec.DecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or error.get("msg")
            param, code = error.get("param"), error.get("code")
        elif error is not None:
            message = error
    detail = body[:2000].decode("utf-8", "replace")
    location = response.headers.get("location")
    if location:
        detail = f"Location: {location}; {detail}"
    level = logging.WARNING if status >= 500 or status < 400 else logging.INFO
    log(level, f"upstream answered HTTP {status}", target, path, detail)
    if not message or 300 <= status < 400:
        # Not an API error object (an HTML page, a proxy's text, a redirect): its text is
        # the upstream's business, not the client's.
        message = f"upstream answered HTTP {status} {response.reason or ''}".strip()
    if not isinstance(message, str):
        message = msgspec.json.encode(message).decode()
    kwargs: dict[str, Any] = {
        "param": param if isinstance(param, str) else None,
        "code": public(str(code), target) if code is not None else None,
    }
    retry_after = response.headers.get("retry-after")
    if retry_after is not None:
        kwargs["headers"] = {"Retry-After": retry_after}
    message = public(message, target)
    if status == 400 and code == "context_length_exceeded":
        return ContextWindowExceededError(message, **kwargs)
    if 300 <= status < 400:
        return BadGatewayError(
            f"upstream answered a redirect ({status}); redirects are not followed"
        )
    return error_for_status(status, message, **kwargs)


def transport_error(exc: UpstreamError, target: Target, path: str) -> GatewayError:
    # The class names are httpx's words for the same failures: what operators know.
    name = type(exc).__name__
    log(logging.WARNING, f"upstream call failed ({name})", target, path, str(exc) or name)
    if isinstance(exc, ConnectTimeout | ReadTimeout | PoolTimeout):
        return GatewayTimeoutError(f"upstream timed out ({name})")
    if isinstance(exc, ConnectError):
        return APIConnectionError(f"cannot connect to the upstream ({name})")
    if isinstance(exc, ServerDisconnected):
        return BadGatewayError(f"upstream closed the connection mid-response ({name})")
    return BadGatewayError(f"upstream call failed ({name})")


class mapped:
    """Every transport failure of one upstream call as a gateway error, mapped once.

    A class, not ``contextlib.contextmanager``: its generator, made and driven per
    call, cost ~70 bytecodes a request more than these two methods."""

    __slots__ = ("path", "target")

    def __init__(self, target: Target, path: str) -> None:
        self.target = target
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, UpstreamError):
            raise transport_error(exc, self.target, self.path) from None


def event_error(item: Any, target: Target) -> GatewayError:
    error = item.get("error") if isinstance(item, dict) else item
    if isinstance(error, dict):
        message = error.get("message") or msgspec.json.encode(error).decode()
        code = error.get("code")
    else:
        message, code = str(error), None
    status = code if isinstance(code, int) else None
    if status is None and isinstance(code, str) and code.isdigit():
        status = int(code)
    message = public(str(message), target)
    if status is not None and 400 <= status < 600:
        return error_for_status(status, message)
    return BadGatewayError(f"upstream stream error: {message}")


def is_error(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and data.get("error") is not None
        and not data.get("choices")
        and not data.get("data")
    )
