"""``CustomLogger``: the base class of callbacks, as LiteLLM's
``litellm.integrations.custom_logger.CustomLogger``.

Subclass it and override what you need; a LiteLLM callback class runs with its import
changed from ``litellm`` to ``gateway``. Logging events run off the request path (see
``gateway.callbacks``); the proxy hooks run on it, in the order the callbacks are listed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CustomLogger"]


class CustomLogger:
    """Callbacks for requests: override any of these methods.

    Logging events get ``(kwargs, response_obj, start_time, end_time)``: ``kwargs`` holds
    ``model``, ``messages``, ``optional_params``, ``litellm_params`` (with ``metadata``),
    ``response_cost``, ``litellm_call_id``, ``standard_logging_object`` and more; the
    times are ``datetime``s. In async contexts (the HTTP gateway, ``acompletion``) the
    ``async_`` method runs if overridden, else the sync one on a worker thread; after a
    sync library call the sync method runs if overridden, else the ``async_`` one.
    """

    def __init__(self, message_logging: bool = True, **kwargs: Any) -> None:
        self.message_logging = message_logging

    # -- logging events (off the request path) --------------------------------------

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        pass

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        pass

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        pass

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        pass

    # LiteLLM calls these around each upstream call; kept so subclasses that call
    # ``super()`` work. The gateway does not fire them.

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        pass

    def log_post_api_call(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        pass

    def log_stream_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        pass

    # -- proxy hooks (on the request path of the HTTP gateway) ------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> Any:
        """Before routing: return a changed ``data`` (the request body) or None to keep
        it; raise to reject the request (the exception's ``status_code``, else 400)."""
        return None

    async def async_post_call_success_hook(
        self, data: dict[str, Any], user_api_key_dict: Any, response: Any
    ) -> Any:
        """After a non-streaming answer, before it is sent: return a response to send
        instead, or None to keep it."""
        return None

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> Any:
        """A request failed (before its answer started); the client gets the error."""
        return None
