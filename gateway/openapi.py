"""The gateway's OpenAPI 3.1 document, made from the msgspec Structs it decodes and encodes.

The request and response schemas come from the very types the endpoints use
(``msgspec.json.schema_components``), so the document cannot drift from the wire. The
paths come from the app's own route table: a route whose endpoint has no description
here is an error when the document is built (and in the tests), not a silent gap.
Built once per app on the first ``GET /openapi.json`` and served as cached bytes; it
is never imported on the request path of the other routes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from . import __version__
from .app import ChatRequest, EmbeddingRequest, ImageRequest
from .types import EmbeddingResponse, ImageResponse, ModelResponse, ModelResponseStream

__all__ = ["build_document"]

_REF = "#/components/schemas/{name}"


# Shapes the endpoints write as dicts or constants: described here as Structs so their
# schemas come from the same generator as the rest.


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(msgspec.Struct):
    """Every error the gateway answers, OpenAI's shape."""

    error: ErrorDetail


class Model(msgspec.Struct):
    id: str
    object: str
    created: int
    owned_by: str


class ModelList(msgspec.Struct):
    object: str
    data: list[Model]


class Readiness(msgspec.Struct):
    status: str
    models: list[str]


_REQUESTS: tuple[type[msgspec.Struct], ...] = (ChatRequest, EmbeddingRequest, ImageRequest)
_RESPONSES: tuple[type[msgspec.Struct], ...] = (
    ModelResponse,
    ModelResponseStream,
    EmbeddingResponse,
    ImageResponse,
    ModelList,
    Readiness,
    ErrorResponse,
)


def _ref(cls: type[Any]) -> dict[str, str]:
    return {"$ref": _REF.format(name=cls.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = {"$ref": "#/components/responses/Error"}

# Which deployment answered a model call, and after how many attempts (retries and
# fallbacks count).
_ROUTED = {
    "x-gateway-deployment": {
        "required": True,
        "description": "The deployment that answered",
        "schema": {"type": "string"},
    },
    "x-gateway-attempts": {
        "required": True,
        "description": "Attempts made, retries and fallbacks included",
        "schema": {"type": "integer", "minimum": 1},
    },
}

# A request's deadline as a header, for clients that cannot add a body field; the
# body's `timeout` wins when both are given.
_TIMEOUT_HEADER = {
    "name": "x-gateway-timeout",
    "in": "header",
    "required": False,
    "description": "Seconds the whole request may take (the body's `timeout` wins)",
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e7},
}

# The statuses a model call answers besides 200; "4XX"/"5XX" cover a handler's own
# CustomLLMError status and an upstream's.
_CALL_ERRORS = {
    "400": _ERROR,
    "401": _ERROR,
    "404": _ERROR,
    "408": _ERROR,
    "413": _ERROR,
    "429": _ERROR,
    "4XX": _ERROR,
    "5XX": _ERROR,
}

# One server-sent event of a stream, as Open API 3.2 describes events (and tools read a
# 3.1 document's text/event-stream schema): an object whose `data` is the payload.
_STREAM_EVENT = {
    "description": (
        "One server-sent event of a streamed completion (`stream: true`): its `data` is a "
        "chat.completion.chunk, then `[DONE]`; a failure after the stream started is sent "
        "as an error (the error response's shape) instead of `[DONE]`."
    ),
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"anyOf": [_ref(ModelResponseStream), _ref(ErrorResponse)]},
                },
            ]
        }
    },
}


def _operations() -> dict[str, dict[str, Any]]:
    """Per endpoint class name: operationId, summary, request schema, GET/POST responses."""
    return {
        "ChatCompletions": {
            "operationId": "createChatCompletion",
            "summary": "Create a chat completion (streamed with `stream: true`)",
            "request": ChatRequest,
            "responses": {
                "200": {
                    "description": "The completion, or its stream of chunks",
                    "headers": _ROUTED,
                    "content": {
                        "application/json": {"schema": _ref(ModelResponse)},
                        "text/event-stream": {
                            "schema": {"$ref": _REF.format(name="ChatCompletionStreamEvent")}
                        },
                    },
                },
                **_CALL_ERRORS,
            },
        },
        "Embeddings": {
            "operationId": "createEmbedding",
            "summary": "Create embeddings",
            "request": EmbeddingRequest,
            "responses": {
                "200": {**_json(_ref(EmbeddingResponse), "The embeddings"), "headers": _ROUTED},
                **_CALL_ERRORS,
            },
        },
        "ImageGenerations": {
            "operationId": "createImage",
            "summary": "Generate images",
            "request": ImageRequest,
            "responses": {
                "200": {**_json(_ref(ImageResponse), "The images"), "headers": _ROUTED},
                **_CALL_ERRORS,
            },
        },
        "Models": {
            "operationId": "listModels",
            "summary": "The model names this gateway serves",
            "responses": {"200": _json(_ref(ModelList), "The models"), "401": _ERROR},
        },
        "Liveliness": {
            "operationId": "liveliness",
            "summary": "Liveness probe: answers while the process serves HTTP",
            "responses": {"200": _json({"type": "string"}, "Alive")},
        },
        "Readiness": {
            "operationId": "readiness",
            "summary": "Readiness probe, with the model names",
            "responses": {"200": _json(_ref(Readiness), "Ready")},
        },
        "MetricsEndpoint": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (text exposition format)",
            "responses": {
                "200": {
                    "description": "The metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        },
        "OpenAPIEndpoint": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document")},
        },
    }


def _always_sent(components: dict[str, Any]) -> None:
    """Mark the response fields the encoder always writes as required.

    msgspec calls a field with a default optional, which is right for decoding but not
    for what the gateway sends: every field is written except an ``UNSET`` one or, in an
    ``omit_defaults`` Struct, one at its default. So the fields a default instance
    encodes are the ones always there, and clients generated from the document see
    ``id``, ``choices``, ``usage`` ... as required.
    """
    seen: set[type[Any]] = set()
    for info in msgspec.inspect.multi_type_info(_RESPONSES):
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
    _, components = msgspec.json.schema_components(_REQUESTS + _RESPONSES, ref_template=_REF)
    _always_sent(components)
    components["ChatCompletionStreamEvent"] = _STREAM_EVENT
    if model_names:
        for request in _REQUESTS:
            components[request.__name__]["properties"]["model"]["examples"] = model_names
    operations = _operations()
    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for path, endpoint in routes:
        name = type(endpoint).__name__
        if name not in operations:
            raise LookupError(f"no OpenAPI description for {name} at {path}")
        spec = operations[name]
        operation_id = spec["operationId"]
        if operation_id in used_ids:  # the same endpoint at a second path (/v1 aliases)
            operation_id += "_" + path.strip("/").replace("/", "_").replace(".", "_")
        used_ids.add(operation_id)
        item: dict[str, Any] = {}
        for method in endpoint.methods:
            op: dict[str, Any] = {"operationId": operation_id, "summary": spec["summary"]}
            if method != "GET" and len(endpoint.methods) > 1:
                op["operationId"] = f"{operation_id}_{method.lower()}"
            if not endpoint.auth or not auth:
                op["security"] = []
            if "request" in spec:
                op["parameters"] = [_TIMEOUT_HEADER]
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(spec["request"])}},
                }
            if method == "HEAD":  # GET's statuses, no body
                op["responses"] = {
                    status: {"description": "As GET, without a body"}
                    for status in spec["responses"]
                }
            else:
                op["responses"] = spec["responses"]
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
                "Error": _json(_ref(ErrorResponse), "An error, in OpenAI's shape"),
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
