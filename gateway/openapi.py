"""The gateway's OpenAPI 3.1 document, made from the msgspec Structs it decodes and encodes.

The request and response schemas come from the very types the endpoints use
(``msgspec.json.schema_components``), so the document cannot drift from the wire. The
paths come from the app's own route table: a route whose endpoint has no description
here is an error when the document is built (and in the tests), not a silent gap.
What each endpoint's entry says is in ``gateway/_openapi_operations.py``; this module
assembles the document.
Built once per app on the first ``GET /openapi.json`` and served as cached bytes; it
is never imported on the request path of the other routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from . import __version__
from ._openapi_operations import (
    ADMIN_REQUESTS,
    REF,
    REQUESTS,
    RESPONSES,
    STREAM_EVENT,
    TIMEOUT_HEADER,
    AnthropicError,
    ErrorResponse,
    json_content,
    operations,
    ref,
)

__all__ = ["build_document"]

_PARAM = re.compile(r"{(\w+)(?::\w+)?}")


def _always_sent(components: dict[str, Any]) -> None:
    """Mark the response fields the encoder always writes as required.

    msgspec calls a field with a default optional, which is right for decoding but not
    for what the gateway sends: every field is written except an ``UNSET`` one or, in an
    ``omit_defaults`` Struct, one at its default. So the fields a default instance
    encodes are the ones always there, and clients generated from the document see
    ``id``, ``choices``, ``usage`` ... as required.
    """
    seen: set[type[Any]] = set()
    for info in msgspec.inspect.multi_type_info(RESPONSES):
        _walk(info, seen)
    for cls in seen:
        fields = msgspec.inspect.type_info(cls).fields  # type: ignore[attr-defined]
        if not any(f.required for f in fields):
            components[cls.__name__]["required"] = list(msgspec.to_builtins(cls()))


def _walk(info: msgspec.inspect.Type, seen: set[type[Any]]) -> None:
    if isinstance(info, msgspec.inspect.StructType):
        if info.cls in seen:
            return
        seen.add(info.cls)
        for f in info.fields:
            _walk(f.type, seen)
    elif isinstance(info, msgspec.inspect.UnionType):
        for t in info.types:
            _walk(t, seen)
    elif isinstance(info, msgspec.inspect.ListType):
        _walk(info.item_type, seen)
    elif isinstance(info, msgspec.inspect.DictType):
        _walk(info.value_type, seen)


def build_document(
    routes: Iterable[tuple[str, Any]], *, model_names: list[str], auth: bool, root_path: str = ""
) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` (path, endpoint), as a dict."""
    _, components = msgspec.json.schema_components(
        REQUESTS + ADMIN_REQUESTS + RESPONSES, ref_template=REF
    )
    _always_sent(components)
    components["ChatCompletionStreamEvent"] = STREAM_EVENT
    if model_names:
        for request in REQUESTS:
            components[request.__name__]["properties"]["model"]["examples"] = model_names
    described = operations()
    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for route_path, endpoint in routes:
        name = type(endpoint).__name__
        if name not in described:
            raise LookupError(f"no OpenAPI description for {name} at {route_path}")
        spec = described[name]
        path = _PARAM.sub(r"{\1}", route_path)  # Starlette's {id:path} is OpenAPI's {id}
        operation_id = spec["operationId"]
        if operation_id in used_ids:  # the same endpoint at a second path (/v1 aliases)
            operation_id += "_" + re.sub(r"\W+", "_", path.strip("/"))
        used_ids.add(operation_id)
        item: dict[str, Any] = {}
        for method in endpoint.methods:
            op: dict[str, Any] = {"operationId": operation_id, "summary": spec["summary"]}
            if method != "GET" and len(endpoint.methods) > 1:
                op["operationId"] = f"{operation_id}_{method.lower()}"
            if not endpoint.auth or not auth:
                op["security"] = []
            elif spec.get("admin"):
                op["security"] = [{"bearer": []}]
            parameters = list(spec.get("parameters", ()))
            if "request" in spec and not spec.get("admin"):
                parameters.append(TIMEOUT_HEADER)
            if parameters:
                op["parameters"] = parameters
            if "request" in spec:
                op["requestBody"] = {
                    "required": not spec.get("admin"),
                    "content": {"application/json": {"schema": ref(spec["request"])}},
                }
            responses = spec.get("by_method", {}).get(method, spec["responses"])
            if method == "HEAD":  # GET's statuses, no body
                op["responses"] = {
                    status: {"description": "As GET, without a body"} for status in responses
                }
            else:
                op["responses"] = responses
            item[method.lower()] = op
        paths[path] = item
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway",
            "version": __version__,
            "description": "An OpenAI-compatible gateway for your own LLM handlers.",
        },
        "servers": [{"url": root_path or "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {
                "Error": json_content(ref(ErrorResponse), "An error, in OpenAI's shape"),
                "AnthropicError": json_content(
                    ref(AnthropicError), "An error, in Anthropic's shape"
                ),
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "api-key": {"type": "apiKey", "in": "header", "name": "api-key"},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }
    if auth:
        document["security"] = [{"bearer": []}, {"api-key": []}, {"x-api-key": []}]
    return document
