"""The admin API, with LiteLLM's paths and field names, and the ``/ui`` page.

Every endpoint here needs the master key. Keys are shown once, in the answer to
``/key/generate``; afterwards a key is named by its ``token`` (the SHA-256 of the key,
hex), and any endpoint taking a key also takes the key itself.
"""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, date, datetime
from typing import Annotated, Any
from urllib.parse import parse_qs

import msgspec
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..bodies import _decode_body
from ..edge import _Endpoint, _send_json
from ..errors import (
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from ..runtime import Runtime
from .cache import Grant, hash_key, new_key, parse_duration
from .entry import _iso
from .store import StoreError

__all__ = ["admin_routes"]

_encode = msgspec.json.Encoder().encode
UNSET = msgspec.UNSET
_Money = Annotated[float, msgspec.Meta(ge=0)]
_Count = Annotated[int, msgspec.Meta(ge=1)]
_Name = Annotated[str, msgspec.Meta(max_length=256)]


class GenerateRequest(msgspec.Struct, forbid_unknown_fields=True):
    models: list[_Name] = []
    max_budget: _Money | None = None
    budget_duration: str | None = None
    duration: str | None = None
    rpm_limit: _Count | None = None
    tpm_limit: _Count | None = None
    max_parallel_requests: _Count | None = None
    key_alias: _Name | None = None
    metadata: dict[str, Any] = {}
    user_id: _Name | None = None
    team_id: _Name | None = None


class UpdateRequest(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    models: list[_Name] | msgspec.UnsetType = UNSET
    max_budget: _Money | msgspec.UnsetType | None = UNSET
    budget_duration: str | msgspec.UnsetType | None = UNSET
    duration: str | msgspec.UnsetType | None = UNSET
    rpm_limit: _Count | msgspec.UnsetType | None = UNSET
    tpm_limit: _Count | msgspec.UnsetType | None = UNSET
    max_parallel_requests: _Count | msgspec.UnsetType | None = UNSET
    key_alias: _Name | msgspec.UnsetType | None = UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = UNSET
    user_id: _Name | msgspec.UnsetType | None = UNSET
    team_id: _Name | msgspec.UnsetType | None = UNSET
    spend: _Money | msgspec.UnsetType = UNSET


class DeleteRequest(msgspec.Struct, forbid_unknown_fields=True):
    keys: list[str] = []
    key_aliases: list[str] = []


def _token(key: str) -> str:
    """A key or its token -> the token."""
    key = key.strip()
    if key.startswith("sk-"):
        return hash_key(key)
    if len(key) == 64 and all(c in "0123456789abcdef" for c in key):
        return key
    raise BadRequestError("`key` must be a key (sk-...) or its token", param="key")


def _seconds(text: str, param: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise BadRequestError(str(exc), param=param) from None


def key_info(row: dict[str, Any], spend: float | None = None) -> dict[str, Any]:
    return {
        "token": row["token"],
        "key_name": row["key_name"],
        "key_alias": row["key_alias"],
        "models": msgspec.json.decode(row["models"]),
        "spend": row["spend"] if spend is None else max(spend, row["spend"]),
        "max_budget": row["max_budget"],
        "budget_duration": row["budget_duration"],
        "budget_reset_at": _iso(row["budget_reset_at"]),
        "expires": _iso(row["expires"]),
        "rpm_limit": row["rpm_limit"],
        "tpm_limit": row["tpm_limit"],
        "max_parallel_requests": row["max_parallel_requests"],
        "metadata": msgspec.json.decode(row["metadata"]),
        "user_id": row["user_id"],
        "team_id": row["team_id"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}


def _int(query: dict[str, str], name: str, default: int, high: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or not 1 <= int(text) <= high:
        raise BadRequestError(f"`{name}` must be a whole number in 1..{high}", param=name)
    return int(text)


def _when(text: str, name: str, *, end: bool) -> float:
    """A date (YYYY-MM-DD, the whole day), an ISO time, or epoch seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
            return start + 86400 if end else start
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(
            f"`{name}` must be YYYY-MM-DD, an ISO 8601 time or epoch seconds", param=name
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class _Admin(_Endpoint):
    """Master key only."""

    route = "admin"

    @property
    def keys(self) -> Any:
        return self.runtime.keys

    def check_master(self, scope: Scope) -> None:
        grant: Grant | None = scope.get("gateway.key")
        if grant is None or not grant.is_master:
            raise PermissionDeniedError(
                "Only the master key may use the admin API", code="master_key_required"
            )

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.check_master(scope)
        try:
            payload = await self.answer(scope, receive)
        except StoreError as exc:
            raise ServiceUnavailableError(f"Key store unavailable: {exc}") from None
        await _send_json(send, 200, _encode(payload))

    async def answer(self, scope: Scope, receive: Receive) -> Any:
        raise NotImplementedError

    async def body(self, scope: Scope, receive: Receive, kind: type[Any]) -> Any:
        raw = await self.runtime.read_body(scope, receive)
        try:
            return _decode_body(raw or b"{}", kind)[0]
        except BadRequestError as exc:
            if exc.param is None and "unknown field `" in exc.message:
                exc.param = exc.message.split("`")[1]
                exc.message += " (not supported here)"
            raise

    def check_models(self, models: list[str]) -> None:
        known = set(self.runtime.router.model_names())
        for name in models:
            if name not in known:
                raise BadRequestError(
                    f"Unknown model `{name}` in models; configured: {', '.join(sorted(known))}",
                    param="models",
                )


class KeyGenerate(_Admin):
    async def answer(self, scope: Scope, receive: Receive) -> Any:
        request: GenerateRequest = await self.body(scope, receive, GenerateRequest)
        self.check_models(request.models)
        now = self.keys.clock()
        period = (
            _seconds(request.budget_duration, "budget_duration")
            if request.budget_duration
            else None
        )
        expires = now + _seconds(request.duration, "duration") if request.duration else None
        key = new_key()
        row = {
            "token": hash_key(key),
            "key_name": f"sk-...{key[-4:]}",
            "key_alias": request.key_alias,
            "models": _encode(request.models).decode(),
            "max_budget": request.max_budget,
            "budget_duration": request.budget_duration,
            "budget_reset_at": now + period if period else None,
            "spend": 0.0,
            "expires": expires,
            "rpm_limit": request.rpm_limit,
            "tpm_limit": request.tpm_limit,
            "max_parallel_requests": request.max_parallel_requests,
            "metadata": _encode(request.metadata).decode(),
            "user_id": request.user_id,
            "team_id": request.team_id,
            "created_at": now,
            "updated_at": now,
        }
        await self.keys.store.insert_key(row)
        self.keys.invalidate(row["token"])  # forget "unknown" if it was tried before
        return {"key": key, **key_info(row)}


class KeyUpdate(_Admin):
    async def answer(self, scope: Scope, receive: Receive) -> Any:
        request: UpdateRequest = await self.body(scope, receive, UpdateRequest)
        token = _token(request.key)
        store = self.keys.store
        row = await store.get_key(token)
        if row is None:
            raise NotFoundError("No such key", param="key", code="key_not_found")
        now = self.keys.clock()
        fields: dict[str, Any] = {"updated_at": now}
        for name in UpdateRequest.__struct_fields__:
            value = getattr(request, name)
            if name == "key" or value is UNSET:
                continue
            if name == "models":
                self.check_models(value)
                fields[name] = _encode(value).decode()
            elif name == "metadata":
                fields[name] = _encode(value).decode()
            elif name == "duration":
                fields["expires"] = now + _seconds(value, "duration") if value else None
            elif name == "budget_duration":
                fields[name] = value
                fields["budget_reset_at"] = now + _seconds(value, name) if value else None
            else:
                fields[name] = value
        await store.update_key(token, fields)
        row = await store.get_key(token)
        if row is None:
            raise NotFoundError("No such key", param="key", code="key_not_found")
        if "spend" in fields:
            self.keys.invalidate(token)  # an operator's correction replaces our count
        else:
            self.keys.reload(row)
        return {"key": request.key, **key_info(row)}


class KeyDelete(_Admin):
    async def answer(self, scope: Scope, receive: Receive) -> Any:
        request: DeleteRequest = await self.body(scope, receive, DeleteRequest)
        if not request.keys and not request.key_aliases:
            raise BadRequestError("Give `keys` (or `key_aliases`) to delete", param="keys")
        tokens = [_token(k) for k in request.keys]
        store = self.keys.store
        for alias in request.key_aliases:
            rows, _ = await store.list_keys({"key_alias =": alias}, 0, 1000)
            tokens.extend(r["token"] for r in rows)
        deleted = await store.delete_keys(tokens)
        for token in tokens:
            self.keys.invalidate(token)
        if not deleted:
            raise NotFoundError("No such key", param="keys", code="key_not_found")
        by_token = {_token(k): k for k in request.keys}
        return {"deleted_keys": [by_token.get(t, t) for t in deleted]}


class KeyInfo(_Admin):
    methods = ("GET",)

    async def answer(self, scope: Scope, receive: Receive) -> Any:
        key = _query(scope).get("key")
        if not key:
            raise BadRequestError("Give the key: /key/info?key=sk-...", param="key")
        token = _token(key)
        row = await self.keys.store.get_key(token)
        if row is None:
            raise NotFoundError("No such key", param="key", code="key_not_found")
        return {"key": key, "info": key_info(row, self.keys.spend_now(token))}


class KeyList(_Admin):
    methods = ("GET",)

    async def answer(self, scope: Scope, receive: Receive) -> Any:
        query = _query(scope)
        page = _int(query, "page", 1, 1_000_000)
        size = _int(query, "size", 100, 1000)
        filters = {
            f"{name} =": query[name]
            for name in ("key_alias", "user_id", "team_id")
            if query.get(name)
        }
        rows, total = await self.keys.store.list_keys(filters, (page - 1) * size, size)
        full = query.get("return_full_object", "").lower() in ("1", "true", "yes")
        keys = self.keys
        return {
            "keys": [key_info(r, keys.spend_now(r["token"])) if full else r["token"] for r in rows],
            "total_count": total,
            "current_page": page,
            "total_pages": max(1, math.ceil(total / size)),
        }


def _spend_filters(query: dict[str, str], *, by_day: bool) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    key = query.get("api_key") or query.get("key")
    if key:
        filters["api_key ="] = _token(key)
    if query.get("model"):
        filters["model_group ="] = query["model"]
    for name, op, end in (("start_date", ">=", False), ("end_date", "<", True)):
        if query.get(name):
            when = _when(query[name], name, end=end)
            if by_day:
                day = time.strftime("%Y-%m-%d", time.gmtime(when - (1 if end else 0)))
                filters[f"day {'>=' if not end else '<='}"] = day
            else:
                filters[f"start_time {op}"] = when
    return filters


def _log(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": row["request_id"],
        "api_key": row["api_key"],
        "key_alias": row["key_alias"],
        "model_group": row["model_group"],
        "model": row["deployment"],
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"],
        "total_tokens": row["total_tokens"],
        "tokens_estimated": bool(row["tokens_estimated"]),
        "spend": row["spend"],
        "status": row["status"],
        "status_code": row["status_code"],
        "startTime": _iso(row["start_time"]),
        "endTime": _iso(row["end_time"]),
        "ttft": row["ttft"],
    }


class SpendLogs(_Admin):
    methods = ("GET",)

    async def answer(self, scope: Scope, receive: Receive) -> Any:
        query = _query(scope)
        page = _int(query, "page", 1, 1_000_000)
        size = _int(query, "page_size", 50, 1000)
        filters = _spend_filters(query, by_day=False)
        rows, total = await self.keys.store.spend_logs(filters, (page - 1) * size, size)
        return {
            "data": [_log(r) for r in rows],
            "total": total,
            "page": page,
            "page_size": size,
            "total_pages": max(1, math.ceil(total / size)),
        }


class SpendReport(_Admin):
    methods = ("GET",)

    async def answer(self, scope: Scope, receive: Receive) -> Any:
        filters = _spend_filters(_query(scope), by_day=True)
        rows = await self.keys.store.spend_report(filters)
        return [
            {
                "group_by_day": r["day"],
                "api_key": r["api_key"],
                "key_alias": r["key_alias"],
                "model_group": r["model_group"],
                "spend": float(r["spend"]),
                "requests": int(r["requests"]),
                "prompt_tokens": int(r["prompt_tokens"]),
                "completion_tokens": int(r["completion_tokens"]),
                "total_tokens": int(r["total_tokens"]),
            }
            for r in rows
        ]


_UI_DIR = os.path.join(os.path.dirname(__file__), "ui")
_UI_FILES = {
    "/ui": ("index.html", b"text/html; charset=utf-8"),
    "/ui/": ("index.html", b"text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", b"text/css; charset=utf-8"),
}
# Nothing from elsewhere: scripts, styles and requests only to this gateway.
_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


class AdminPage(_Endpoint):
    """The admin page's files. Public, like a login page: the data behind it is not."""

    methods = ("GET", "HEAD")
    auth = False
    route = "ui"

    def __init__(self, runtime: Runtime, name: str, content_type: bytes) -> None:
        super().__init__(runtime)
        with open(os.path.join(_UI_DIR, name), "rb") as f:
            self.payload = f.read()
        self.headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(self.payload)).encode()),
            (b"content-security-policy", _CSP),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-cache"),
        ]

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        body = b"" if scope["method"] == "HEAD" else self.payload
        await send({"type": "http.response.body", "body": body})


def admin_routes(runtime: Runtime) -> list[Route]:
    routes = [
        Route("/key/generate", KeyGenerate(runtime)),
        Route("/key/update", KeyUpdate(runtime)),
        Route("/key/delete", KeyDelete(runtime)),
        Route("/key/info", KeyInfo(runtime)),
        Route("/key/list", KeyList(runtime)),
        Route("/spend/logs", SpendLogs(runtime)),
        Route("/spend/report", SpendReport(runtime)),
    ]
    for path, (name, content_type) in _UI_FILES.items():
        routes.append(Route(path, AdminPage(runtime, name, content_type)))
    return routes
