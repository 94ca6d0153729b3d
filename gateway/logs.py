"""Log lines: the access log, request ids on every line, text or JSON.

The access log (logger ``gateway.access``, INFO) has one line per request, written once
the response is sent. It names what an operator needs and never a prompt, an answer or
a key: the time, the request id, route, model group, deployment, status, duration, time
to first token, tokens, attempts, client address and the key's alias.

Every line logged while a request is served carries its id (``RequestIdFilter``): in
text, `` [request_id=...]`` at the end; in JSON, a ``request_id`` field.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

import msgspec

from .record import RequestRecord, current

__all__ = ["JsonFormatter", "RequestIdFilter", "TextFormatter", "access_log", "name_requests"]

access_logger = logging.getLogger("gateway.access")

_encode = msgspec.json.Encoder().encode


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def access_log(record: RequestRecord, scope: Any) -> None:
    """The request's access-log line (only called when the logger is on)."""
    ended = record.ended
    if ended is None:
        ended = record.ended = time.perf_counter()
    grant = scope.get("gateway.key")
    entry = getattr(grant, "entry", None)
    fields = {
        "request_id": record.id,
        "method": scope.get("method"),
        "path": scope.get("path"),
        "route": record.route,
        "model_group": record.model,
        "deployment": record.deployment,
        "status": record.status,
        "duration_ms": _ms(ended - record.started),
        "ttft_ms": _ms(record.ttft),
        "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out,
        "attempts": record.attempts,
        "client": record.client,
        "key_alias": getattr(entry, "alias", None),
    }
    access_logger.info(
        '%s "%s %s" %s %s', record.client or "-", fields["method"], fields["path"],
        record.status, _text(fields), extra={"access": fields},
    )  # fmt: skip


def _text(fields: dict[str, Any]) -> str:
    skip = ("method", "path", "status", "client")
    return " ".join(
        f"{name}={value}"
        for name, value in fields.items()
        if value is not None and name not in skip
    )


class RequestIdFilter(logging.Filter):
    """Gives every record a ``request_id``: the request being served, else ``None``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            served = current.get()
            fields = getattr(record, "access", None)
            if fields is not None:
                record.request_id = fields["request_id"]
            else:
                record.request_id = served.id if served is not None else None
        return True


class TextFormatter(logging.Formatter):
    """uvicorn's look (``INFO:     message``), the request id at the end."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, **_: Any) -> None:
        super().__init__(fmt or "%(levelname)-9s %(message)s", datefmt)

    def format(self, record: logging.LogRecord) -> str:
        if record.levelname and not record.levelname.endswith(":"):
            record = logging.makeLogRecord(record.__dict__)
            record.levelname = record.levelname + ":"
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id is None or hasattr(record, "access"):  # an access line names it
            return line
        first, sep, rest = line.partition("\n")  # a traceback after the first line
        if request_id in first:  # the message names it already
            return line
        return f"{first} [request_id={request_id}]{sep}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id, and an access
    line's fields or an exception's traceback."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if access is not None:
            out.update(access)
        else:
            out["message"] = record.getMessage()
            request_id = getattr(record, "request_id", None)
            if request_id is not None:
                out["request_id"] = request_id
        if record.exc_info:
            out["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return _encode(out).decode()


_FILTER = RequestIdFilter()


def name_requests(*names: str) -> None:
    """Tag records of these loggers with the request id where they are logged (the
    request's context), whatever handlers the application configured."""
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


name_requests(
    "gateway.app",
    "gateway.access",
    "gateway.router",
    "gateway.upstream",
    "gateway.keys",
    "gateway.metrics",
)
