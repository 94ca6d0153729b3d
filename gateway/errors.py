"""The gateway's one error hierarchy.

Providers and handlers raise these; only the HTTP edge renders them as OpenAI's
``{"error": {"message", "type", "param", "code"}}`` body.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "ContextWindowExceededError",
    "CustomLLMError",
    "GatewayError",
    "GatewayTimeoutError",
    "InternalServerError",
    "NotFoundError",
    "NotImplementedByHandlerError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "ServiceUnavailableError",
    "Timeout",
    "UnprocessableEntityError",
    "as_gateway_error",
    "error_for_status",
]


class GatewayError(Exception):
    """Base of every error the gateway reports to a caller.

    ``retryable`` tells the router whether another attempt (or deployment) may succeed.
    """

    status_code: int = 500
    type: str = "internal_server_error"
    retryable: bool = False
    # The message is an unexpected exception's text: for the server's log, never a client.
    internal: bool = False

    def __init__(
        self,
        message: str = "",
        *,
        status_code: int | None = None,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if type is not None:
            self.type = type
        if retryable is not None:
            self.retryable = retryable
        self.param = param
        self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code if self.code is not None else str(self.status_code),
            }
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, message={self.message!r})"


class BadRequestError(GatewayError):
    status_code = 400
    type = "invalid_request_error"


class ContextWindowExceededError(BadRequestError):
    """The prompt does not fit the model; the router may try ``context_window_fallbacks``."""

    def __init__(self, message: str = "", **kwargs: Any) -> None:
        kwargs.setdefault("code", "context_length_exceeded")
        super().__init__(message, **kwargs)


class AuthenticationError(GatewayError):
    status_code = 401
    type = "authentication_error"


class PermissionDeniedError(GatewayError):
    status_code = 403
    type = "permission_error"


class NotFoundError(GatewayError):
    status_code = 404
    type = "invalid_request_error"


class Timeout(GatewayError):
    status_code = 408
    type = "timeout_error"
    retryable = True


class RequestTooLargeError(GatewayError):
    status_code = 413
    type = "invalid_request_error"


class UnprocessableEntityError(GatewayError):
    status_code = 422
    type = "invalid_request_error"


class RateLimitError(GatewayError):
    status_code = 429
    type = "rate_limit_error"
    retryable = True


class InternalServerError(GatewayError):
    status_code = 500
    type = "internal_server_error"
    retryable = True


class NotImplementedByHandlerError(GatewayError):
    status_code = 501
    type = "not_implemented_error"


class BadGatewayError(GatewayError):
    status_code = 502
    type = "upstream_error"
    retryable = True


class APIConnectionError(BadGatewayError):
    """The upstream could not be reached at all."""

    type = "api_connection_error"


class ServiceUnavailableError(GatewayError):
    status_code = 503
    type = "service_unavailable_error"
    retryable = True


class GatewayTimeoutError(GatewayError):
    status_code = 504
    type = "timeout_error"
    retryable = True


class CustomLLMError(GatewayError):
    """The error a handler raises; it keeps the status code it was given.

    Same signature as LiteLLM's ``CustomLLMError(status_code, message)``. A status that
    is not an error (outside 400-599) becomes 500: an error never answers 200.
    """

    def __init__(self, status_code: int, message: str, **kwargs: Any) -> None:
        status_code = int(status_code)
        if not 400 <= status_code <= 599:
            status_code = 500
        base = _BY_STATUS.get(status_code) or (
            InternalServerError if status_code >= 500 else BadRequestError
        )
        kwargs.setdefault("type", base.type)
        kwargs.setdefault("retryable", base.retryable)
        super().__init__(str(message), status_code=status_code, **kwargs)


_BY_STATUS: dict[int, type[GatewayError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: Timeout,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    500: InternalServerError,
    501: NotImplementedByHandlerError,
    502: BadGatewayError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def error_for_status(status_code: int, message: str, **kwargs: Any) -> GatewayError:
    """The gateway error that an HTTP status means, e.g. from an upstream reply."""
    cls = _BY_STATUS.get(status_code)
    if cls is None:
        cls = InternalServerError if status_code >= 500 else BadRequestError
        kwargs.setdefault("status_code", status_code)
    return cls(message, **kwargs)


def as_gateway_error(exc: BaseException) -> GatewayError:
    """Map any exception raised by a handler or provider onto the hierarchy.

    Duck-typed: LiteLLM's exceptions and others carry an integer ``status_code``. Any
    other exception is unexpected: a 500 marked ``internal``, so the HTTP edge logs its
    text and answers a generic message.
    """
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, TimeoutError):
        return Timeout(str(exc) or "Request timed out")
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(status, int) and 400 <= status < 600:
        return error_for_status(status, str(message))
    error = InternalServerError(str(message))
    error.internal = True
    return error
