"""GET /openapi.json: a valid OpenAPI 3.1 document of every route, agreeing with the SDK.

Served by a real uvicorn on loopback with a custom handler and the mock provider. The
document is checked three ways: by the OpenAPI 3.1 validator; against the live server
(every route and method it answers is in the document, and nothing else); and against
the official ``openai`` SDK (the request bodies the SDK sends fit the request schemas,
the gateway's real answers fit the response schemas and parse as the SDK's types, and
responses built from the SDK's own types fit them too).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import jsonschema
import msgspec
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012 as _SPEC

import gateway
from gateway import CustomLLM
from gateway.app import create_app
from tests.fake_upstream import serve_in_thread

if TYPE_CHECKING:
    import openai
    import openai.types as openai_types
    import openai.types.chat as openai_chat_types
else:  # imported on first use (tests/lazy_import.py says why)
    from tests.lazy_import import openai, openai_chat_types, openai_types

MASTER_KEY = "sk-openapi-1234"
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


class AnyInputLLM(CustomLLM):
    """Answers every call, whatever the request holds: a fuzzer's 5xx is then the gateway's."""

    async def acompletion(self, *args: Any, **kwargs: Any) -> gateway.ModelResponse:
        return gateway.ModelResponse(
            choices=[{"message": {"content": f"{len(kwargs['messages'])} messages"}}],
            usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        )

    async def astreaming(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        yield "one "
        yield {
            "text": "two",
            "tool_use": None,
            "is_finished": True,
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            "index": 0,
        }

    async def aembedding(self, *args: Any, **kwargs: Any) -> Any:
        inputs = kwargs["input"]
        count = 1 if isinstance(inputs, str) or isinstance(inputs[0], int) else len(inputs)
        return [[0.5, -0.25] for _ in range(count)]

    async def aimage_generation(self, *args: Any, **kwargs: Any) -> gateway.ImageResponse:
        return gateway.ImageResponse(data=[gateway.ImageObject(b64_json="aW1n")])


MODELS = ("custom", "mock")


def app_config() -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": "custom", "litellm_params": {"model": "any-input/m"}},
            {"model_name": "mock", "litellm_params": {"model": "mock/m"}},
        ],
        "litellm_settings": {
            "custom_provider_map": [{"provider": "any-input", "custom_handler": AnyInputLLM()}]
        },
        "general_settings": {"master_key": MASTER_KEY},
        "gateway_settings": {"max_request_body_bytes": 65536},
    }


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(create_app(app_config())) as handle:
        yield handle.url


@pytest.fixture(scope="module")
def document(server: str) -> dict[str, Any]:
    r = httpx.get(f"{server}/openapi.json")  # no key: the document holds no secret
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    return r.json()


def validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for the component ``name``, resolving the document's own refs."""
    registry = Registry().with_resource(
        "urn:gateway-openapi", Resource.from_contents(document, default_specification=_SPEC)
    )
    schema = {"$ref": f"urn:gateway-openapi#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def check(document: dict[str, Any], name: str, instance: Any) -> None:
    errors = sorted(validator(document, name).iter_errors(instance), key=str)
    assert not errors, f"{name}: {[f'{list(e.absolute_path)}: {e.message}' for e in errors]}"


# The document itself


def validate_spec(document: dict[str, Any]) -> None:
    # Imported by the three tests that call it: at collection, every xdist worker paid its
    # 0.19 s of CPU (test_fuzz imports this module too).
    from openapi_spec_validator import validate

    validate(document)


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate_spec(document)
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
    }
    assert {"bearer": []} in document["security"]


def test_document_is_built_once(server: str) -> None:
    first = httpx.get(f"{server}/openapi.json")
    second = httpx.get(f"{server}/openapi.json")
    assert first.content == second.content
    assert httpx.head(f"{server}/openapi.json").status_code == 200


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ROUTES = ["/health/liveliness", "/health/liveness", "/health/readiness", "/metrics"]
ROUTES += ["/router/state"]
ROUTES += ["/openapi.json"]
for _path in (
    "/chat/completions",
    "/embeddings",
    "/images/generations",
    "/models",
    "/responses",
    "/responses/{response_id}",
    "/messages",
    "/messages/count_tokens",
    "/completions",
    "/models/{model_id:path}",
):
    ROUTES += [_path, "/v1" + _path]


def documented(route: str) -> str:
    return route.replace(":path}", "}")


def test_every_served_route_and_method_is_documented(server: str, document: dict[str, Any]) -> None:
    app = create_app(app_config())
    assert {route.path for route in app.routes} == set(ROUTES)  # a new route: add it here
    endpoints = {route.path: route.endpoint for route in app.routes}  # type: ignore[attr-defined]
    for path in ("/chat/completions", "/embeddings", "/images/generations", "/models"):
        assert endpoints[path] is endpoints["/v1" + path]  # aliases: test_fuzz runs /v1 only
    assert set(document["paths"]) == {documented(route) for route in ROUTES}
    with httpx.Client(base_url=server, headers=AUTH) as client:
        for route in ROUTES:
            url = route.replace("{response_id}", "resp_x").replace("{model_id:path}", "custom")
            for method in METHODS:
                served = client.request(method, url, json={}).status_code != 405
                assert served == (method.lower() in document["paths"][documented(route)]), (
                    method,
                    route,
                )


def test_admin_routes_are_documented_when_keys_are_on(tmp_path: Any) -> None:
    config = app_config()
    config["general_settings"]["database_url"] = f"sqlite:///{tmp_path}/keys.db"
    with serve_in_thread(create_app(config)) as handle:
        doc = httpx.get(f"{handle.url}/openapi.json").json()
    validate_spec(doc)
    admin = {"/key/generate", "/key/update", "/key/delete", "/key/info", "/key/list"}
    admin |= {"/spend/logs", "/spend/report"}
    assert admin <= set(doc["paths"])
    assert doc["paths"]["/key/generate"]["post"]["security"] == [{"bearer": []}]
    assert doc["paths"]["/ui"]["get"]["security"] == []
    body = doc["paths"]["/key/generate"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/GenerateRequest"}


def test_operations_name_their_bodies_errors_and_auth(document: dict[str, Any]) -> None:
    paths = document["paths"]
    ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ids) == len(set(ids))
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["operationId"] == "createChatCompletion"
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatRequest"}
    content = chat["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream"}
    event = content["text/event-stream"]["schema"]
    assert event == {"$ref": "#/components/schemas/ChatCompletionStreamEvent"}
    error = document["components"]["responses"]["Error"]["content"]["application/json"]
    assert error["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert chat["responses"]["401"] == {"$ref": "#/components/responses/Error"}
    assert "security" not in chat  # the document-wide key requirement
    for path in ("/health/liveliness", "/health/readiness", "/metrics", "/openapi.json"):
        assert paths[path]["get"]["security"] == []
    model = document["components"]["schemas"]["ChatRequest"]["properties"]["model"]
    assert model["examples"] == list(MODELS)


def test_mounted_document_names_its_prefix() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    host = Starlette(routes=[Mount("/llm", app=create_app(app_config()))])
    with serve_in_thread(host) as handle:
        doc = httpx.get(f"{handle.url}/llm/openapi.json").json()
        assert doc["servers"] == [{"url": "/llm"}]
        r = httpx.get(handle.url + doc["servers"][0]["url"] + "/v1/models", headers=AUTH)
        assert r.status_code == 200


def test_no_key_configured_means_no_security() -> None:
    config = app_config()
    del config["general_settings"]
    with serve_in_thread(create_app(config)) as handle:
        doc = httpx.get(f"{handle.url}/openapi.json").json()
    assert "security" not in doc
    validate_spec(doc)


# Errors


def test_errors_fit_the_error_schema(server: str, document: dict[str, Any]) -> None:
    with httpx.Client(base_url=server) as client:
        answers = [
            client.post("/v1/chat/completions", json={"model": "custom", "messages": []}),
            client.post("/v1/chat/completions", headers=AUTH, content=b"{"),
            client.post("/v1/chat/completions", headers=AUTH, json={"model": "custom"}),
            client.post(
                "/v1/chat/completions", headers=AUTH, json={"model": "nope", "messages": []}
            ),
            client.post("/v1/embeddings", headers=AUTH, json={"model": "custom", "input": []}),
            client.post("/v1/images/generations", headers=AUTH, content=b"x" * 70000),
            client.get("/v1/nothing-here", headers=AUTH),
        ]
    assert [r.status_code for r in answers] == [401, 400, 400, 404, 400, 413, 404]
    for r in answers:
        check(document, "ErrorResponse", r.json())


# Agreement with the official SDK


def _capturing_client(server: str, sent: list[dict[str, Any]]) -> openai.OpenAI:
    def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    http = httpx.Client(event_hooks={"request": [record]})
    return openai.OpenAI(
        base_url=f"{server}/v1", api_key=MASTER_KEY, max_retries=0, http_client=http
    )


SDK_CHAT_CALLS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "hi"}]},
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "really brief"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,aW1n", "detail": "low"},
                    },
                ],
                "name": "ann",
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"q": "x"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a picture"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "look",
                    "description": "Look something up",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
        "parallel_tool_calls": False,
        "temperature": 0.2,
        "top_p": 0.9,
        "n": 1,
        "max_completion_tokens": 50,
        "max_tokens": 40,
        "stop": ["\n\n", "END"],
        "presence_penalty": 0.1,
        "frequency_penalty": -0.1,
        "seed": 42,
        "user": "u-1",
        "logit_bias": {"50256": -100},
        "logprobs": True,
        "top_logprobs": 2,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        },
        "metadata": {"team": "a"},
        "store": False,
        "reasoning_effort": "low",
        "service_tier": "auto",
        "modalities": ["text"],
        "prediction": {"type": "content", "content": "maybe"},
        "extra_body": {"my_backend_flag": True},
    },
    {
        "messages": [{"role": "user", "content": "hi"}],
        "stop": "END",
        "tool_choice": "none",
        "response_format": {"type": "json_object"},
        "timeout": 30,
    },
]


@pytest.mark.parametrize("model", MODELS)
def test_sdk_chat_requests_and_answers_fit_the_schemas(
    server: str, document: dict[str, Any], model: str
) -> None:
    sent: list[dict[str, Any]] = []
    with _capturing_client(server, sent) as client:
        for params in SDK_CHAT_CALLS:
            raw = client.chat.completions.with_raw_response.create(model=model, **params)
            check(document, "ModelResponse", raw.http_response.json())
            completion = raw.parse()
            assert isinstance(completion, openai_chat_types.ChatCompletion)
            openai_chat_types.ChatCompletion.model_validate(
                raw.http_response.json()
            )  # strict, not construct
            assert completion.model == model
    assert len(sent) == len(SDK_CHAT_CALLS)
    for body in sent:
        check(document, "ChatRequest", body)


@pytest.mark.parametrize("model", MODELS)
def test_sdk_stream_chunks_fit_the_item_schema(
    server: str, document: dict[str, Any], model: str
) -> None:
    sent: list[dict[str, Any]] = []
    with _capturing_client(server, sent) as client:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    check(document, "ChatRequest", sent[0])
    assert chunks and chunks[-1].usage is not None
    for chunk in chunks:
        data = chunk.model_dump(mode="json", exclude_unset=True)
        check(document, "ModelResponseStream", data)
        openai_chat_types.ChatCompletionChunk.model_validate(data)
    # The raw events too, as the document describes them: an object per event, its
    # data [DONE] or JSON that fits the chunk (or error) schema.
    r = httpx.post(f"{server}/v1/chat/completions", headers=AUTH, json={**sent[0], "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [{"data": block.removeprefix("data: ")} for block in r.text.split("\n\n") if block]
    assert events[-1] == {"data": "[DONE]"}
    event_schema = document["components"]["schemas"]["ChatCompletionStreamEvent"]
    payload = event_schema["properties"]["data"]["anyOf"][1]
    assert payload["contentMediaType"] == "application/json"
    for event in events:
        check(document, "ChatCompletionStreamEvent", event)
        if event["data"] != "[DONE]":
            check(document, "ModelResponseStream", json.loads(event["data"]))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "params",
    [
        {"input": "one text"},
        {"input": ["a", "b"], "encoding_format": "float", "dimensions": 2, "user": "u"},
        {"input": [1, 2, 3]},
        {"input": [[1, 2], [3]]},
    ],
)
def test_sdk_embeddings_fit_the_schemas(
    server: str, document: dict[str, Any], model: str, params: dict[str, Any]
) -> None:
    sent: list[dict[str, Any]] = []
    with _capturing_client(server, sent) as client:
        raw = client.embeddings.with_raw_response.create(model=model, **params)
    check(document, "EmbeddingRequest", sent[0])
    check(document, "EmbeddingResponse", raw.http_response.json())
    if sent[0].get("encoding_format") != "base64":  # the SDK asks base64 and decodes it
        openai_types.CreateEmbeddingResponse.model_validate(raw.http_response.json())
    embeddings = raw.parse().data
    assert embeddings and all(isinstance(x, float) for x in embeddings[0].embedding)


@pytest.mark.parametrize("model", MODELS)
def test_sdk_images_fit_the_schemas(server: str, document: dict[str, Any], model: str) -> None:
    sent: list[dict[str, Any]] = []
    with _capturing_client(server, sent) as client:
        raw = client.images.with_raw_response.generate(
            model=model,
            prompt="an otter",
            n=1,
            size="1024x1024",
            quality="standard",
            style="vivid",
            response_format="b64_json",
            user="u",
        )
    check(document, "ImageRequest", sent[0])
    check(document, "ImageResponse", raw.http_response.json())
    openai_types.ImagesResponse.model_validate(raw.http_response.json())
    assert raw.parse().data


def test_models_list_and_health_fit_the_schemas(server: str, document: dict[str, Any]) -> None:
    with openai.OpenAI(base_url=f"{server}/v1", api_key=MASTER_KEY, max_retries=0) as client:
        assert [m.id for m in client.models.list()] == list(MODELS)
    check(document, "ModelList", httpx.get(f"{server}/v1/models", headers=AUTH).json())
    check(document, "Readiness", httpx.get(f"{server}/health/readiness").json())


# Responses as OpenAI sends them (built with the SDK's own types): the gateway's types
# decode them (as the OpenAI provider does), and what the gateway then sends fits the
# document and parses as the SDK's type again, nothing the SDK needs lost on the way.


def _through_gateway(document: dict[str, Any], answer: Any, ours: type[Any]) -> dict[str, Any]:
    data = msgspec.to_builtins(msgspec.convert(answer.model_dump(mode="json"), ours))
    check(document, ours.__name__, data)
    assert type(answer).model_validate(data) is not None
    return data


def _openai_chat_completion() -> openai_chat_types.ChatCompletion:
    return openai_chat_types.ChatCompletion.model_validate(
        {
            "id": "chatcmpl-abc",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "gpt-4o-2024-08-06",
            "system_fingerprint": "fp_1",
            "service_tier": "default",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "refusal": None,
                        "annotations": [],
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "look", "arguments": "{}"},
                            }
                        ],
                    },
                    "logprobs": {
                        "content": [
                            {
                                "token": "Hi",
                                "logprob": -0.1,
                                "bytes": [72, 105],
                                "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": None}],
                            }
                        ],
                        "refusal": None,
                    },
                }
            ],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 12,
                "total_tokens": 21,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
        }
    )


def test_openai_shaped_responses_fit_the_schemas(document: dict[str, Any]) -> None:
    completion = _openai_chat_completion()
    check(document, "ModelResponse", completion.model_dump(mode="json"))  # even as it is
    data = _through_gateway(document, completion, gateway.ModelResponse)
    assert data["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "look"
    assert data["choices"][0]["logprobs"]["content"][0]["token"] == "Hi"
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    chunk = openai_chat_types.ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-abc",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o",
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "role": "assistant",
                        "content": "Hi",
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "look", "arguments": ""},
                            }
                        ],
                    },
                    "finish_reason": None,
                    "logprobs": None,
                }
            ],
            "usage": None,
        }
    )
    check(document, "ModelResponseStream", chunk.model_dump(mode="json"))
    data = _through_gateway(document, chunk, gateway.ModelResponseStream)
    assert data["choices"][0]["delta"]["tool_calls"][0]["id"] == "call_1"
    embeddings = openai_types.CreateEmbeddingResponse.model_validate(
        {
            "object": "list",
            "model": "text-embedding-3-small",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        }
    )
    data = _through_gateway(document, embeddings, gateway.EmbeddingResponse)
    assert data["data"][0]["embedding"] == [0.1, -0.2]
    images = openai_types.ImagesResponse.model_validate(
        {
            "created": 1700000000,
            "data": [{"b64_json": "aW1n", "revised_prompt": "an otter, swimming"}],
            "background": "opaque",
            "output_format": "png",
            "quality": "high",
            "size": "1024x1024",
            "usage": {
                "input_tokens": 10,
                "output_tokens": 20,
                "total_tokens": 30,
                "input_tokens_details": {"image_tokens": 0, "text_tokens": 10},
            },
        }
    )
    check(document, "ImageResponse", images.model_dump(mode="json"))
    data = _through_gateway(document, images, gateway.ImageResponse)
    assert data["data"][0]["revised_prompt"] == "an otter, swimming"
    assert data["usage"]["total_tokens"] == 30


def test_an_undescribed_route_fails_the_build() -> None:
    from gateway.openapi import build_document

    class Unknown:
        methods = ("GET",)
        auth = True

    with pytest.raises(LookupError, match="no OpenAPI description for Unknown at /x"):
        build_document([("/x", Unknown())], model_names=[], auth=True)
