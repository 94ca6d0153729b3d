"""What the OpenAPI document says of each endpoint: the shapes the endpoints write as dicts
(as Structs, so their schemas come from msgspec like the rest), the shared pieces
(headers, error statuses, the stream event), and ``operations()``, keyed by endpoint class
name. ``gateway.openapi.build_document`` assembles them with the app's route table."""

from __future__ import annotations

from typing import Any

import msgspec

from .bodies import ChatRequest, EmbeddingRequest, ImageRequest
from .frontdoors.completions import CompletionRequest
from .frontdoors.messages import CountTokensRequest, MessagesRequest
from .frontdoors.responses import ResponsesRequest
from .keys.admin import DeleteRequest, GenerateRequest, UpdateRequest
from .types import EmbeddingResponse, ImageResponse, ModelResponse, ModelResponseStream, Usage

REF = "#/components/schemas/{name}"


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


REQUESTS: tuple[type[msgspec.Struct], ...] = (
    ChatRequest,
    EmbeddingRequest,
    ImageRequest,
    ResponsesRequest,
    MessagesRequest,
    CountTokensRequest,
    CompletionRequest,
)
# The admin API's bodies: no model, and unknown fields refused.
ADMIN_REQUESTS: tuple[type[msgspec.Struct], ...] = (GenerateRequest, UpdateRequest, DeleteRequest)
RESPONSES: tuple[type[msgspec.Struct], ...] = (
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


def ref(cls: type[Any]) -> dict[str, str]:
    return {"$ref": REF.format(name=cls.__name__)}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
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
TIMEOUT_HEADER = {
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
        "usage": ref(Usage),
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
STREAM_EVENT = {
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
                    "contentSchema": {"anyOf": [ref(ModelResponseStream), ref(ErrorResponse)]},
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
            "200": json_content({"type": "object"}, "The answer"),
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


def operations() -> dict[str, dict[str, Any]]:
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
                        "application/json": {"schema": ref(ModelResponse)},
                        "text/event-stream": {
                            "schema": {"$ref": REF.format(name="ChatCompletionStreamEvent")}
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
                "200": {
                    **json_content(ref(EmbeddingResponse), "The embeddings"),
                    "headers": _ROUTED,
                },
                **_CALL_ERRORS,
            },
        },
        "ImageGenerations": {
            "operationId": "createImage",
            "summary": "Generate images",
            "request": ImageRequest,
            "responses": {
                "200": {**json_content(ref(ImageResponse), "The images"), "headers": _ROUTED},
                **_CALL_ERRORS,
            },
        },
        "Models": {
            "operationId": "listModels",
            "summary": "The model names this gateway serves",
            "responses": {"200": json_content(ref(ModelList), "The models"), "401": _ERROR},
        },
        "Liveliness": {
            "operationId": "liveliness",
            "summary": "Liveness probe: answers while the process serves HTTP",
            "responses": {"200": json_content({"type": "string"}, "Alive")},
        },
        "Readiness": {
            "operationId": "readiness",
            "summary": "Readiness probe, with the model names",
            "responses": {"200": json_content(ref(Readiness), "Ready")},
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
            "responses": {"200": json_content(_RESPONSE_OBJECT, "The response"), **_ID_ERRORS},
            "by_method": {
                "DELETE": {"200": json_content(_DELETED, "Deleted"), **_ID_ERRORS},
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
            "responses": {"200": json_content(ref(InputTokens), "The count"), **_ANTHROPIC_ERRORS},
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
            "responses": {"200": json_content(ref(Model), "The model"), **_ID_ERRORS},
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
                "200": json_content({"type": "object"}, "The router's state"),
                "401": _ERROR,
                "403": _ERROR,
            },
        },
        "OpenAPIEndpoint": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {"200": json_content({"type": "object"}, "The OpenAPI document")},
        },
    }
