"""What a logging callback is handed: LiteLLM's ``(kwargs, response_obj, start_time,
end_time)`` with its ``standard_logging_object``, built only as far as some callback can
read it (``reads``); and which of ``CustomLogger``'s methods a callback has of its own.
"""

from __future__ import annotations

import datetime
import dis
import inspect
import logging
import random
import sys
import types
from typing import Any

import msgspec

from .errors import GatewayError, as_gateway_error
from .integrations.custom_logger import CustomLogger

__all__ = ["CALLBACK_METHODS", "Event", "build_kwargs", "new_call_id", "reads"]

logger = logging.getLogger("gateway.callbacks")

_getrandbits = random.getrandbits  # ids to match log lines, not secrets

_LOG_METHODS = (
    "log_success_event",
    "log_failure_event",
    "async_log_success_event",
    "async_log_failure_event",
)
CALLBACK_METHODS = (*_LOG_METHODS, "async_pre_call_hook", "async_post_call_success_hook")


def _overrides(callback: Any, name: str) -> bool:
    """Whether ``callback`` has its own ``name`` (not CustomLogger's no-op)."""
    method = getattr(type(callback), name, None)
    if method is None:
        return callable(getattr(callback, name, None))  # duck-typed, or set on the instance
    return method is not getattr(CustomLogger, name, None)


# A frame's locals are visible to code that names one of these: a method that does
# reads all its arguments as far as we can tell.
_INTROSPECTION = frozenset(
    {"locals", "vars", "eval", "exec", "_getframe", "currentframe", "stack", "f_locals"}
)
_ALL_READ = (True, True, True, True)


def reads(method: Any) -> tuple[bool, bool, bool, bool]:
    """Which of ``(kwargs, response_obj, start_time, end_time)`` a logging method can
    read. A plain Python function that never loads a parameter (no ``LOAD_FAST`` of it,
    no closure over it, no ``locals()`` or frame access) cannot observe it, so the event
    skips building it: a no-op callback costs no kwargs. Anything else reads all four."""
    func = getattr(method, "__func__", method)
    code = getattr(func, "__code__", None)
    if code is None or not isinstance(func, types.FunctionType):
        return _ALL_READ
    bound = 1 if inspect.ismethod(method) else 0
    params = code.co_varnames[: code.co_argcount]
    if len(params) < bound + 4 or code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
        return _ALL_READ
    if _INTROSPECTION.intersection(code.co_names):
        return _ALL_READ
    loaded: set[str] = set(code.co_cellvars)
    for ins in dis.get_instructions(code):
        if ins.opname.startswith(("LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE", "DELETE_FAST")):
            arg = ins.argval
            loaded.update(arg if isinstance(arg, tuple) else (arg,))
    return tuple(name in loaded for name in params[bound : bound + 4])  # type: ignore[return-value]


def new_call_id() -> str:
    """A random (version 4) UUID string, as LiteLLM's call ids: uuid.uuid4() reads
    os.urandom, a system call, and costs several times this."""
    bits = (_getrandbits(128) & ~(0xF000 << 64) & ~(0xC << 60)) | (0x4000 << 64) | (0x8 << 60)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _datetime(epoch: float) -> datetime.datetime:
    # LiteLLM hands callbacks naive local datetimes (datetime.datetime.now()).
    return datetime.datetime.fromtimestamp(epoch)


def _plain(value: Any) -> Any:
    """A response as plain data, for the logging object."""
    if value is None or isinstance(value, dict | list | str | int | float):
        return value
    if isinstance(value, msgspec.Raw):
        return msgspec.json.decode(value)
    try:
        return msgspec.to_builtins(value)
    except (TypeError, msgspec.EncodeError):
        return repr(value)


class Event:
    """One finished call, as handed to logging callbacks: ``(kwargs, response, start,
    end)``, the times being ``kwargs``' own ``start_time`` and ``end_time``."""

    __slots__ = ("args", "prefer_async", "success")

    def __init__(
        self,
        success: bool,
        kwargs: dict[str, Any] | None,
        response: Any,
        prefer_async: bool = True,
        times: tuple[datetime.datetime | None, datetime.datetime | None] | None = None,
    ) -> None:
        self.success = success
        self.prefer_async = prefer_async
        if times is None:
            times = (kwargs["start_time"], kwargs["end_time"])  # type: ignore[index]
        self.args = (kwargs, response, times[0], times[1])

    @property
    def kwargs(self) -> dict[str, Any] | None:
        """None where no logger reads it (see ``reads``)."""
        return self.args[0]

    @property
    def response(self) -> Any:
        return self.args[1]

    def resolve(self) -> Event:
        """The event (a queued ``RequestLog`` builds its own when it is run)."""
        return self


def _methods(callback: Any, event: Event) -> tuple[str, str]:
    if event.success:
        return "async_log_success_event", "log_success_event"
    return "async_log_failure_event", "log_failure_event"


def _pick(callback: Any, success: bool) -> tuple[str, bool]:
    """(method name, is async) a logging event of that outcome calls; ("", False): none."""
    kind = "success" if success else "failure"
    if _overrides(callback, f"async_log_{kind}_event"):
        return f"async_log_{kind}_event", True
    if _overrides(callback, f"log_{kind}_event"):
        return f"log_{kind}_event", False
    return "", False


def _report(callback: Any, name: str) -> None:
    logger.warning("callback %s.%s failed", type(callback).__name__, name, exc_info=sys.exc_info())


_NOT_OPTIONAL = frozenset({"model", "messages", "input", "prompt", "metadata"})


def build_kwargs(
    *,
    call_id: str,
    call_type: str,
    model: str | None,
    group: str | None,
    deployment: str | None,
    api_base: str | None,
    messages: Any,
    optional: dict[str, Any],
    requester_metadata: dict[str, Any],
    stream: bool,
    status: int,
    error: BaseException | None,
    response: Any,
    prompt: int,
    completion: int,
    cost: float,
    started: float,
    ended: float,
    first_token_at: float | None,
    request_id: str | None,
    key_alias: str | None,
    key_hash: str | None = None,
    custom_llm_provider: str | None = None,
    cache_hit: bool = False,
) -> dict[str, Any]:
    """The ``kwargs`` LiteLLM gives logging callbacks, with its ``standard_logging_object``.

    Built for every event of every request: one pass of dict literals, no helpers."""
    error_info = None
    if error is not None:
        mapped = error if isinstance(error, GatewayError) else as_gateway_error(error)
        error_info = {
            "error_code": str(mapped.status_code),
            "error_class": type(error).__name__,
            "error_message": mapped.message,
        }
    metadata = {
        **requester_metadata,
        "user_api_key_alias": key_alias,
        "user_api_key_hash": key_hash,
        "model_group": group,
        "deployment": deployment,
    }
    end_time = _datetime(ended)
    # LiteLLM's accounting of a cache hit: it cost nothing, and saved what it would have.
    saved = 0.0
    if cache_hit:
        saved, cost = cost, 0.0
    first = first_token_at if first_token_at is not None else ended
    return {
        "model": model,
        "messages": messages,
        "optional_params": optional,
        "litellm_params": {
            "metadata": metadata,
            "model_info": {"id": deployment},
            "api_base": api_base,
            "custom_llm_provider": custom_llm_provider,
            "litellm_call_id": call_id,
        },
        "call_type": call_type,
        "stream": stream,
        "response_cost": cost,
        "cache_hit": cache_hit,
        "litellm_call_id": call_id,
        "start_time": _datetime(started),
        "end_time": end_time,
        "completion_start_time": end_time if first_token_at is None else _datetime(first),
        "exception": error,
        "standard_logging_object": {
            "id": call_id,
            "trace_id": request_id or call_id,
            "request_id": request_id,
            "call_type": call_type,
            "stream": stream,
            "status": "success" if error is None else "failure",
            "status_code": status,
            "model": model,
            "model_group": group,
            "model_id": deployment,
            "deployment": deployment,
            "api_base": api_base,
            "custom_llm_provider": custom_llm_provider,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "response_cost": cost,
            "cache_hit": cache_hit,
            "saved_cache_cost": saved,
            "startTime": started,
            "endTime": ended,
            "completionStartTime": first,
            "metadata": {
                "user_api_key_alias": key_alias,
                "user_api_key_hash": key_hash,
                "requester_metadata": requester_metadata,
            },
            "messages": messages,
            "response": _plain(response) if error is None else None,
            "model_parameters": optional,
            "error_str": None if error is None else str(error),
            "error_information": error_info,
            "hidden_params": {"model_id": deployment, "api_base": api_base},
        },
    }
