"""The gateway's OpenAPI 3.1 document, made from the msgspec Structs it decodes and encodes.

The request and response schemas come from the very types the endpoints use
(``msgspec.json.schema_components``), so the document cannot drift from the wire. The
paths come from the app's own route table: a route whose endpoint has no description
here is an error when the document is built (and in the tests), not a silent gap.
Built once per app on the first ``GET /openapi.json`` and served as cached bytes; it
is never imported on the request path of the other routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from . import __version__
from .app import ChatRequest, EmbeddingRequest, ImageRequest
from .frontdoors.completions import CompletionRequest
from .frontdoors.messages import CountTokensRequest, MessagesRequest
from .frontdoors.responses import ResponsesRequest
from .keys.admin import DeleteRequest, GenerateRequest, UpdateRequest
from .types import EmbeddingResponse, ImageResponse, ModelResponse, ModelResponseStream, Usage

__all__ = ["build_document"]

_REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"{(\w+)(?::\w+)?}")


# Shapes the endpoints write as dicts or constants: described here as Structs so their
# schemas come from the same generator as the rest.


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None
    request_id: str | None = None  # the id the server's log lines carry too


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


class AnthropicErrorDetail(msgspec.Struct):
    type: str
    message: str


class AnthropicError(msgspec.Struct):
    """Errors of /v1/messages, Anthropic's shape (its SDK maps them to its exceptions)."""

    type: str
    error: AnthropicErrorDetail


class InputTokens(msgspec.Struct):
    input_tokens: int


_REQUESTS: tuple[type[msgspec.Struct], ...] = (
    ChatRequest,
    EmbeddingRequest,
    ImageRequest,
    ResponsesRequest,
    MessagesRequest,
    CountTokensRequest,
    CompletionRequest,
)
# The admin API's bodies: no model, and unknown fields refused.
_ADMIN_REQUESTS: tuple[type[msgspec.Struct], ...] = (GenerateRequest, UpdateRequest, DeleteRequest)
_RESPONSES: tuple[type[msgspec.Struct], ...] = (
    ModelResponse,
    ModelResponseStream,
    EmbeddingResponse,
    ImageResponse,
    ModelList,
    Readiness,
    ErrorResponse,
    AnthropicError,
    InputTokens,
    Model,
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

# The front doors' answers, built as dicts by their translations: the fields every
# answer has.
_RESPONSE_OBJECT = {
    "type": "object",
    "required": ["id", "object", "created_at", "status", "model", "output"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "response"},
        "created_at": {"type": "integer"},
        "status": {"type": "string"},
        "model": {"type": "string"},
        "output": {"type": "array", "items": {"type": "object"}},
    },
}
_DELETED = {
    "type": "object",
    "required": ["id", "object", "deleted"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "response.deleted"},
        "deleted": {"const": True},
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "message"},
        "role": {"const": "assistant"},
        "model": {"type": "string"},
        "content": {"type": "array", "items": {"type": "object"}},
        "stop_reason": {"type": ["string", "null"]},
        "usage": {"type": "object"},
    },
}
_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "text_completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
        "usage": _ref(Usage),
    },
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

_ID_ERRORS = {"401": _ERROR, "404": _ERROR}
_ANTHROPIC_ERROR = {"$ref": "#/components/responses/AnthropicError"}
_ANTHROPIC_ERRORS = {
    status: _ANTHROPIC_ERROR for status in ("400", "401", "404", "408", "413", "429", "4XX", "5XX")
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


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _routed_json(schema: dict[str, Any], description: str, *, stream: str) -> dict[str, Any]:
    """A model call's 200: JSON, or with `stream: true` its API's server-sent events."""
    return {
        "description": description,
        "headers": _ROUTED,
        "content": {
            "application/json": {"schema": schema},
            "text/event-stream": {
                "schema": {
                    "description": f"{stream} stream: one server-sent event per step, its "
                    "data JSON",
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "event": {"type": "string"},
                        "data": {"type": "string"},
                    },
                }
            },
        },
    }


def _admin(
    operation_id: str,
    summary: str,
    request: type[msgspec.Struct] | None = None,
    query: tuple[str, ...] = (),
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "operationId": operation_id,
        "summary": f"{summary} (master key only)",
        "admin": True,
        "responses": {
            "200": _json({"type": "object"}, "The answer"),
            "400": _ERROR,
            "401": _ERROR,
            "403": _ERROR,
            "404": _ERROR,
            "503": _ERROR,
        },
    }
    if request is not None:
        spec["request"] = request
    if query:
        spec["parameters"] = [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in query
        ]
    return spec


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
        "Responses": {
            "operationId": "createResponse",
            "summary": "OpenAI's Responses API, answered through the chat handlers",
            "request": ResponsesRequest,
            "responses": {
                "200": _routed_json(_RESPONSE_OBJECT, "The response", stream="A response.*"),
                **_CALL_ERRORS,
            },
        },
        "ResponseById": {
            "operationId": "getResponse",
            "summary": "A stored response (GET) or its deletion (DELETE)",
            "parameters": [_path("response_id")],
            "responses": {"200": _json(_RESPONSE_OBJECT, "The response"), **_ID_ERRORS},
            "by_method": {
                "DELETE": {"200": _json(_DELETED, "Deleted"), **_ID_ERRORS},
            },
        },
        "Messages": {
            "operationId": "createMessage",
            "summary": "Anthropic's Messages API, answered through the chat handlers",
            "request": MessagesRequest,
            "responses": {
                "200": _routed_json(_MESSAGE, "The message", stream="An Anthropic message"),
                **_ANTHROPIC_ERRORS,
            },
        },
        "CountTokens": {
            "operationId": "countMessageTokens",
            "summary": "Anthropic's token count of a Messages request (an estimate)",
            "request": CountTokensRequest,
            "responses": {"200": _json(_ref(InputTokens), "The count"), **_ANTHROPIC_ERRORS},
        },
        "Completions": {
            "operationId": "createCompletion",
            "summary": "Legacy completions, answered through the chat handlers",
            "request": CompletionRequest,
            "responses": {
                "200": _routed_json(_COMPLETION, "The completion", stream="A completion"),
                **_CALL_ERRORS,
            },
        },
        "ModelById": {
            "operationId": "retrieveModel",
            "summary": "One model this gateway serves",
            "parameters": [_path("model_id")],
            "responses": {"200": _json(_ref(Model), "The model"), **_ID_ERRORS},
        },
        "KeyGenerate": _admin("generateKey", "Create a virtual key", GenerateRequest),
        "KeyUpdate": _admin("updateKey", "Change a virtual key", UpdateRequest),
        "KeyDelete": _admin("deleteKeys", "Delete virtual keys", DeleteRequest),
        "KeyInfo": _admin("keyInfo", "A key's settings and spend", query=("key",)),
        "KeyList": _admin(
            "listKeys",
            "Keys, a page at a time",
            query=("page", "size", "key_alias", "user_id", "team_id", "return_full_object"),
        ),
        "SpendLogs": _admin(
            "spendLogs",
            "Calls and their cost",
            query=("page", "page_size", "api_key", "key", "model", "start_date", "end_date"),
        ),
        "SpendReport": _admin(
            "spendReport",
            "Spend per day",
            query=("api_key", "key", "model", "start_date", "end_date"),
        ),
        "AdminPage": {
            "operationId": "adminPage",
            "summary": "The admin page's files (public; its data needs the master key)",
            "responses": {"200": {"description": "The file"}},
        },
        "RouterStateEndpoint": {
            "operationId": "routerState",
            "summary": "Every deployment as this worker's router sees it (master key only)",
            "admin": True,
            "responses": {
                "200": _json({"type": "object"}, "The router's state"),
                "401": _ERROR,
                "403": _ERROR,
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
    _, components = msgspec.json.schema_components(
        _REQUESTS + _ADMIN_REQUESTS + _RESPONSES, ref_template=_REF
    )
    _always_sent(components)
    components["ChatCompletionStreamEvent"] = _STREAM_EVENT
    if model_names:
        for request in _REQUESTS:
            components[request.__name__]["properties"]["model"]["examples"] = model_names
    operations = _operations()
    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for route_path, endpoint in routes:
        name = type(endpoint).__name__
        if name not in operations:
            raise LookupError(f"no OpenAPI description for {name} at {route_path}")
        spec = operations[name]
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
                parameters.append(_TIMEOUT_HEADER)
            if parameters:
                op["parameters"] = parameters
            if "request" in spec:
                op["requestBody"] = {
                    "required": not spec.get("admin"),
                    "content": {"application/json": {"schema": _ref(spec["request"])}},
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
                "Error": _json(_ref(ErrorResponse), "An error, in OpenAI's shape"),
                "AnthropicError": _json(_ref(AnthropicError), "An error, in Anthropic's shape"),
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
