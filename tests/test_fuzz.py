"""Schemathesis against a live gateway, driven by its own GET /openapi.json.

A real uvicorn on loopback serves a custom handler and the mock provider (the handlers of
test_openapi.py) behind the master key. Every operation of the document gets a bounded,
deterministic run of valid and invalid requests (schemathesis' examples, coverage and
fuzzing phases). Checked for every answer: never a 5xx, the status and content type the
document names, the body fits its schema (each SSE event's data too), invalid data is
rejected with a 4xx and valid data is not, and every error is in OpenAI's shape; for the
front doors' POST routes only no 5xx and errors in their API's shape (see FRONT_DOORS).
After the run, the server still answers its health routes and a real completion.

Select it alone with ``-m fuzz``; it runs with the rest by default.
"""

from __future__ import annotations

import copy
import re
import unittest
from collections.abc import Callable, Iterator
from functools import cache, partial
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from tests.fake_upstream import ServerHandle, serve_in_thread
from tests.test_openapi import AUTH, MASTER_KEY, MODELS, app_config

if TYPE_CHECKING:
    import requests
    import schemathesis

pytestmark = pytest.mark.fuzz

# Per operation: enough to cover every field in valid and invalid forms, bounded so the
# whole run stays well under a minute on two cores. Counted by (method, path, status,
# error param, code, type) of every answer of the three model calls' runs: 75 distinct at
# 150 examples (932 requests, 12.9 s of CPU in one process), 74 at 100 (782, 9.3 s; the
# one missing is messages[1].role, the same check as messages[0].role), 74 at 75 (707),
# the same 74 at 50 (632 requests), 72 at 40 (602): 50 it is.
MAX_EXAMPLES = 50
SEED = 20261201


@pytest.fixture(scope="module")
def live_gateway() -> Iterator[ServerHandle]:
    # uvloop and httptools, as the gateway command serves: less CPU for the same requests.
    with serve_in_thread(create_app(app_config()), loop="uvloop", http="httptools") as handle:
        yield handle


def _served_models_only(document: dict[str, Any]) -> dict[str, Any]:
    """The document with ``model`` narrowed to the served names.

    The gateway's own document says ``model`` is any string (an unknown one is a 404);
    fuzzing that would almost never reach a handler. The test narrows it so valid cases
    are answered by the handlers, and invalid ones still send other strings.
    """
    bodies = ("ChatRequest", "EmbeddingRequest", "ImageRequest", "ResponsesRequest")
    for name in (*bodies, "MessagesRequest", "CountTokensRequest", "CompletionRequest"):
        model = document["components"]["schemas"][name]["properties"]["model"]
        model["enum"] = list(MODELS)
    return document


def _document() -> dict[str, Any]:
    """The document the app serves, read in-process: the tests are made from it when the
    module is collected, before any server runs. The fuzz run checks that the live server
    serves the same one."""
    with TestClient(create_app(app_config())) as client:
        return client.get("/openapi.json").json()


DOCUMENT = _document()


@cache
def _schema() -> schemathesis.BaseSchema:
    """The schema the fuzz tests draw from, loaded by the first one a worker runs."""
    import schemathesis

    return schemathesis.openapi.from_dict(
        _served_models_only(copy.deepcopy(DOCUMENT)),
        config=schemathesis.Config.from_dict(
            {
                # Every scheme the document names, so schemathesis also sends each one
                # alone, wrong, and none (401 expected).
                "auth": {
                    "openapi": {
                        "bearer": {"bearer": MASTER_KEY},
                        "api-key": {"api_key": MASTER_KEY},
                        "x-api-key": {"api_key": MASTER_KEY},
                    }
                },
                "seed": SEED,
                "generation": {
                    "mode": "all",
                    "deterministic": True,
                    # An undeclared header is not invalid HTTP: servers ignore them.
                    "allow-extra-parameters": False,
                },
                "request-timeout": 10,
                "checks": {
                    # A valid request can still time out: its own `timeout` may be 5e-324 s.
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "401", "404", "408", "429"]
                    }
                },
            }
        ),
    )


def test_served_document_is_the_fuzzed_one(live_gateway: ServerHandle) -> None:
    assert httpx.get(f"{live_gateway.url}/openapi.json").json() == DOCUMENT


# The model calls get the long run. The unversioned aliases are the same endpoint objects
# as their /v1 routes (test_openapi checks that), so they are not run again; the GET routes
# take no input but headers: a short run.
MODEL_CALLS = r"^/v1/(chat/completions|embeddings|images/generations)$"
ALIASES = r"^/(?!v1/|health/|metrics|openapi)"
# The front doors' POST routes get the checks that hold for them: no 5xx, and every
# error in its API's shape. Not yet the rest (their first run found `background: true`
# refused with a 400 while the schema allows it: their Structs allow more than their
# code accepts, so "valid data is accepted" and "the body fits" need that care first).
FRONT_DOORS = r"^/v1/(responses|messages|messages/count_tokens|completions)$"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace", "query")


def _operations(include: str = "", exclude: tuple[str, ...] = ()) -> list[str]:
    """``METHOD /path`` of each operation of the document whose path matches ``include``
    and none of ``exclude``, in the document's order: schemathesis' own order and labels
    (``test_fuzzed_operations_are_schemathesis_own`` checks), which the test ids keep."""
    return [
        f"{method.upper()} {path}"
        for path, item in DOCUMENT["paths"].items()
        if re.search(include, path) and not any(re.search(regex, path) for regex in exclude)
        for method in item
        if method in HTTP_METHODS
    ]


MODEL_CALL_OPERATIONS = _operations(MODEL_CALLS)
OTHER_OPERATIONS = _operations(exclude=(MODEL_CALLS, ALIASES, FRONT_DOORS))
FRONT_DOOR_OPERATIONS = _operations(FRONT_DOORS)


def test_fuzzed_operations_are_schemathesis_own() -> None:
    schema = _schema()
    for selected, operations in [
        (schema.include(path_regex=MODEL_CALLS), MODEL_CALL_OPERATIONS),
        (
            schema.exclude(path_regex=MODEL_CALLS)
            .exclude(path_regex=ALIASES)
            .exclude(path_regex=FRONT_DOORS),
            OTHER_OPERATIONS,
        ),
        (schema.include(path_regex=FRONT_DOORS), FRONT_DOOR_OPERATIONS),
    ]:
        assert [result.ok().label for result in selected.get_all_operations()] == operations


def _fuzz(label: str, check: Callable[..., None], max_examples: int, **fixtures: Any) -> None:
    """Run the schemathesis test of one operation, built here rather than at collection.

    ``build_operation_test`` is what schemathesis' pytest plugin calls for each operation
    of a ``schema.parametrize()`` test when it collects it (its ``from_fixture`` schemas
    too, at run time): the same examples, coverage and fuzzing phases, seed and settings.
    Built at collection, every xdist worker built all 24 operations' tests (their
    coverage cases: 1-2 s of CPU a worker) to run a few; here a worker builds those it runs.
    """
    from hypothesis import settings
    from schemathesis.core.control import SkipTest
    from schemathesis.core.failures import FailureGroup, as_reported_failure
    from schemathesis.generation.feedback import FeedbackSources
    from schemathesis.generation.hypothesis import builder
    from schemathesis.pytest._test_builder import build_operation_test
    from schemathesis.python._constants.orchestrator import make_constants_value_source

    schema = _schema().clone()
    feedback = FeedbackSources(constants_value_source=make_constants_value_source(schema))
    explicit = settings(max_examples=max_examples, deadline=None, database=None, derandomize=True)

    def build(label: str) -> Callable[..., None]:
        operation = schema.find_operation_by_label(label)
        assert operation is not None, label
        return build_operation_test(
            config=schema.config,
            operation=operation,
            test_func=check,
            given_kwargs={},
            feedback=feedback,
            explicit_settings=explicit,
        )

    # The coverage phase sends the methods a path does not declare (PUT, TRACE, ...) once
    # a schema: with the first of the path's operations that the schema builds a test for.
    # At collection that was the document's first; building the path's earlier operations
    # on this fresh clone first keeps it so, whichever worker runs which, in any order.
    path = label.split(" ", 1)[1]
    for earlier in _operations(f"^{re.escape(path)}$"):
        if earlier == label:
            break
        build(earlier)
    test = build(label)
    try:
        with pytest.MonkeyPatch.context() as patch:
            transport = schema.transport
            patch.setattr(transport, "send", partial(_send_on_kept_session, transport.send))
            test(**fixtures)
    except FailureGroup as exc:  # one message per distinct failure, as the plugin shows
        raise as_reported_failure(exc) from None
    except (SkipTest, unittest.SkipTest) as exc:
        # The plugin turned these into a skip (or a schema error): coverage lost quietly.
        pytest.fail(f"{label}: schemathesis skipped the run: {exc}")
    # What the plugin reports after a run: parts of the operation left untested.
    for mark in (
        builder.UnserializablePayloadMark,
        builder.InvalidHeadersExampleMark,
        builder.MissingPathParameters,
    ):
        assert not mark.is_set(test), (mark.attr_name, mark.get(test))


@pytest.mark.parametrize("label", MODEL_CALL_OPERATIONS)
def test_fuzz_model_calls(label: str, live_gateway: ServerHandle) -> None:
    _fuzz(label, _call_and_check, MAX_EXAMPLES, live_gateway=live_gateway)


@pytest.mark.parametrize("label", OTHER_OPERATIONS)
def test_fuzz_other_routes(label: str, live_gateway: ServerHandle) -> None:
    _fuzz(label, _call_and_check, 10, live_gateway=live_gateway)


@pytest.mark.parametrize("label", FRONT_DOOR_OPERATIONS)
def test_fuzz_front_doors(label: str, live_gateway: ServerHandle) -> None:
    _fuzz(label, _call_front_door, 40, live_gateway=live_gateway)


@cache
def _session() -> requests.Session:
    """One connection pool for the whole run."""
    import requests

    session = requests.Session()
    # Loopback only: no proxy settings from the environment (requests read them on every call).
    session.trust_env = False
    return session


@cache
def _kept_session() -> requests.Session:
    """The session of the requests schemathesis' checks send on their own."""
    from schemathesis.transport.requests import SameHostRedirectsSession

    session = SameHostRedirectsSession()  # the class schemathesis makes for them
    session.trust_env = False
    # Its default headers would be merged into the request; a session it makes sends none.
    session.headers.clear()
    return session


def _send_on_kept_session(
    send: Callable[..., schemathesis.Response],
    case: schemathesis.Case,
    *,
    session: requests.Session | None = None,
    **kwargs: Any,
) -> schemathesis.Response:
    """``send``, on one kept-alive session where the caller passes none.

    The checks that send a case again without its credentials (``ignored_auth``: 1,136
    requests a run, as many as 60% of the cases) pass no session, and schemathesis then
    makes one per request: a new ``requests.Session``, a new TCP connection that the
    server accepts and tears down, the environment read. The same requests reach the same
    server, on one connection: 2-3 s less CPU of the run's ~22 (measured in the commit).
    Cookies are cleared each time, as a new session would have none.
    """
    if session is None:
        session = _kept_session()
        session.cookies.clear()
    return send(case, session=session, **kwargs)


def _call_front_door(case: schemathesis.Case, live_gateway: ServerHandle) -> None:
    from schemathesis.checks import not_a_server_error

    response = case.call_and_validate(
        base_url=live_gateway.url, session=_session(), checks=[not_a_server_error]
    )
    if response.status_code < 400:
        return
    if case.path.startswith("/v1/messages"):  # Anthropic's error shape, for its SDK
        assert response.headers.get("content-type") == ["application/json"], response.headers
        body = response.json()
        assert set(body) <= {"type", "error", "request_id"} and body["type"] == "error", body
        assert {"type", "message"} == set(body["error"]), body
        assert "Traceback" not in body["error"]["message"]
    else:
        _assert_openai_error(response)


def _call_and_check(case: schemathesis.Case, live_gateway: ServerHandle) -> None:
    # Every check schemathesis has: no 5xx, documented status and content type, the body
    # (and each SSE event) fits its schema, invalid data rejected and valid data accepted,
    # wrong or missing keys refused, other methods 405.
    response = case.call_and_validate(base_url=live_gateway.url, session=_session())
    if response.status_code >= 400 and case.method != "HEAD":
        _assert_openai_error(response)


def _assert_openai_error(response: schemathesis.Response) -> None:
    assert response.headers.get("content-type") == ["application/json"], response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert (
        {"message", "type", "param", "code"}
        <= set(error)
        <= {
            "message",
            "type",
            "param",
            "code",
            "request_id",
        }
    ), error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert "Traceback" not in error["message"]


def test_alive_after_fuzz(live_gateway: ServerHandle) -> None:
    url = live_gateway.url
    assert httpx.get(f"{url}/health/liveliness").status_code == 200
    assert httpx.get(f"{url}/health/readiness").json()["status"] == "healthy"
    for model in MODELS:
        r = httpx.post(
            f"{url}/v1/chat/completions",
            headers=AUTH,
            json={"model": model, "messages": [{"role": "user", "content": "still there?"}]},
        )
        assert r.status_code == 200, r.text
    metrics = httpx.get(f"{url}/metrics").text
    assert 'status="500"' not in metrics


# What the fuzzer found, pinned.

M = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        # Counts a client chooses: OpenAI's bounds, in the document and enforced (the mock
        # built 18,534,524-dimension embeddings and 3,591,831 images when asked).
        ("/v1/images/generations", {"prompt": "x", "n": 11}, "n"),
        ("/v1/images/generations", {"prompt": "x", "n": 0}, "n"),
        ("/v1/embeddings", {"input": "x", "dimensions": 65537}, "dimensions"),
        ("/v1/embeddings", {"input": "x", "dimensions": 0}, "dimensions"),
        ("/v1/chat/completions", {"messages": M, "n": 129}, "n"),
        ("/v1/chat/completions", {"messages": M, "n": 0}, "n"),
        ("/v1/chat/completions", {"messages": M, "top_logprobs": 21}, "top_logprobs"),
    ],
)
@pytest.mark.parametrize("model", MODELS)
def test_client_chosen_counts_are_bounded(
    live_gateway: ServerHandle, route: str, body: dict[str, Any], param: str, model: str
) -> None:
    r = httpx.post(f"{live_gateway.url}{route}", headers=AUTH, json={"model": model, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    # ... and the document says so.
    request = {"/v1/images/generations": "ImageRequest", "/v1/embeddings": "EmbeddingRequest"}
    schema = DOCUMENT["components"]["schemas"][request.get(route, "ChatRequest")]
    bounds = schema["properties"][param]["anyOf"][0]
    assert not bounds["minimum"] <= body[param] <= bounds["maximum"]


@pytest.mark.parametrize("model", MODELS)
def test_counts_at_the_bounds_answer(live_gateway: ServerHandle, model: str) -> None:
    url = live_gateway.url
    r = httpx.post(
        f"{url}/v1/images/generations", headers=AUTH, json={"model": model, "prompt": "x", "n": 10}
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{url}/v1/embeddings",
        headers=AUTH,
        json={"model": model, "input": "x", "dimensions": 65536},
    )
    assert r.status_code == 200, r.text
    body = {"model": model, "messages": M, "n": 128, "top_logprobs": 20}
    assert httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json=body).status_code == 200


@pytest.mark.parametrize(
    ("route", "raw"),
    [
        # JSON's 8.0 is its 8 (JSON Schema's integer takes both): it was a 400.
        ("/v1/images/generations", b'{"model": "mock", "prompt": "x", "n": 2.0}'),
        ("/v1/embeddings", b'{"model": "mock", "input": "x", "dimensions": 3.0}'),
        ("/v1/embeddings", b'{"model": "mock", "input": [1.0, 2], "dimensions": 3}'),
        ("/v1/embeddings", b'{"model": "mock", "input": [[1.0], [2, 3.0]]}'),
        (
            "/v1/chat/completions",
            b'{"model": "mock", "messages": [{"role": "user", "content": "x"}],'
            b' "n": 1.0, "max_tokens": 16.0, "seed": -3.0, "top_logprobs": 2.0}',
        ),
    ],
)
def test_integral_floats_are_integers(live_gateway: ServerHandle, route: str, raw: bytes) -> None:
    r = httpx.post(f"{live_gateway.url}{route}", headers=AUTH, content=raw)
    assert r.status_code == 200, r.text


def test_integral_floats_reach_handlers_as_ints(live_gateway: ServerHandle) -> None:
    r = httpx.post(
        f"{live_gateway.url}/v1/embeddings",
        headers=AUTH,
        content=b'{"model": "mock", "input": [[1.0], [2.0]], "dimensions": 2.0}',
    )
    assert [d["embedding"] for d in r.json()["data"]] == [[0.1, 0.1], [0.2, 0.2]]


@pytest.mark.parametrize(
    ("route", "raw", "param"),
    [
        ("/v1/images/generations", b'{"model": "mock", "prompt": "x", "n": 2.5}', "n"),
        ("/v1/images/generations", b'{"model": "mock", "prompt": "x", "n": 1e300}', "n"),
        ("/v1/embeddings", b'{"model": "mock", "input": [1.5]}', "input"),
        ("/v1/embeddings", b'{"model": "mock", "input": [[1], [2.5]]}', "input"),
        ("/v1/embeddings", b'{"model": "mock", "input": [1.0, "a"]}', "input"),
    ],
)
def test_other_floats_are_still_refused(
    live_gateway: ServerHandle, route: str, raw: bytes, param: str
) -> None:
    r = httpx.post(f"{live_gateway.url}{route}", headers=AUTH, content=raw)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_bad_timeout_header_is_refused_even_beside_a_body_timeout(
    live_gateway: ServerHandle,
) -> None:
    # It was ignored when the body had a timeout: a 200 for a request with a bad header.
    body = {"model": "custom", "prompt": "x", "timeout": 30}
    for value in ("bifb", "0", "-1", "nan", "inf"):
        r = httpx.post(
            f"{live_gateway.url}/v1/images/generations",
            headers={**AUTH, "x-gateway-timeout": value},
            json=body,
        )
        assert r.status_code == 400, (value, r.text)
        assert r.json()["error"]["param"] == "timeout"
    r = httpx.post(
        f"{live_gateway.url}/v1/images/generations",
        headers={**AUTH, "x-gateway-timeout": "0.000001"},  # the body's 30 s wins
        json=body,
    )
    assert r.status_code == 200, r.text
