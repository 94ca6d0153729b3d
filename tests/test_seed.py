"""The user's seed document runs here with only ``litellm`` -> ``gateway`` changed.

The document is kept verbatim in ``tests/seed_blocks/`` (CI may not have ``../shared``);
its code blocks are extracted and exec'd from that text at test time.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

import httpx
import msgspec
import pytest

import gateway

SEED_NAME = "000_b48b9bf35cf9fd50.txt"
SEED_PATH = Path(__file__).parent / "seed_blocks" / SEED_NAME
SEED_TEXT = SEED_PATH.read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[str]:
    return [body for tag, body in FENCE.findall(SEED_TEXT) if tag == lang]


PY = blocks("python")
QUICK_START, PROXY_HANDLER, UNIXTIME, IMAGE_HANDLER, HANDLER_SPEC = range(5)


def to_gateway(source: str) -> str:
    """The only edit the contract allows: the package name in imports and attributes."""
    source = source.replace("litellm.types.utils", "gateway.types")
    return re.sub(r"\blitellm\b", "gateway", source)


class HTTPHandler:
    """Stands in for ``litellm.llms.custom_httpx.http_handler.HTTPHandler``."""


class AsyncHTTPHandler:
    """Stands in for ``litellm.llms.custom_httpx.http_handler.AsyncHTTPHandler``."""


# Names the document's snippets use without importing them: they were cut out of
# LiteLLM modules where these are module globals. The image handler's and the spec's
# annotations are evaluated when the ``def`` runs, so they must exist; providing
# them is not an edit of the code.
DOC_CONTEXT: dict[str, Any] = {
    "Any": Any,
    "Optional": Optional,
    "Union": Union,
    "httpx": httpx,
    "time": time,
    "HTTPHandler": HTTPHandler,
    "AsyncHTTPHandler": AsyncHTTPHandler,
}


def run_block(index: int, *, context: bool = True) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"seed_block_{index}"}
    if context:
        namespace.update(DOC_CONTEXT)
    # dont_inherit: this module's `from __future__ import annotations` must not leak
    # into the document's code (its annotations are evaluated, as written).
    source = to_gateway(PY[index])
    code = compile(source, f"<seed python block {index}>", "exec", dont_inherit=True)
    exec(code, namespace)
    return namespace


def register(name: str, handler: Any) -> None:
    gateway.custom_provider_map = [{"provider": name, "custom_handler": handler}]


class Recorder:
    """Wraps a seed handler's class to record which of its methods served a call."""

    @staticmethod
    def subclass(base: type[Any], calls: list[str]) -> type[Any]:
        overrides: dict[str, Any] = {}
        for name in gateway.custom_llm.HANDLER_METHODS:
            if name not in vars(base):
                continue
            original = vars(base)[name]

            def make(name: str = name, original: Any = original) -> Any:
                if name.startswith("a"):
                    if "streaming" in name:

                        @functools.wraps(original)
                        async def agen(self: Any, *args: Any, **kwargs: Any) -> Any:
                            calls.append(name)
                            async for item in original(self, *args, **kwargs):
                                yield item

                        return agen

                    @functools.wraps(original)
                    async def acall(self: Any, *args: Any, **kwargs: Any) -> Any:
                        calls.append(name)
                        return await original(self, *args, **kwargs)

                    return acall

                @functools.wraps(original)
                def call(self: Any, *args: Any, **kwargs: Any) -> Any:
                    calls.append(name)
                    return original(self, *args, **kwargs)

                return call

            overrides[name] = make()
        return type(f"Recording{base.__name__}", (base,), overrides)


# The document itself


def test_copy_matches_the_shared_seed() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "seed" / SEED_NAME
    if not shared.exists():
        pytest.skip("../shared/seed is not beside this checkout")
    assert shared.read_bytes() == SEED_PATH.read_bytes()


def test_every_code_block_is_accounted_for() -> None:
    # Five python blocks, each exercised below; yaml/bash/JSON blocks are the proxy's.
    assert len(PY) == 5
    assert "assert resp.choices[0].message.content" in PY[QUICK_START]
    assert "async def acompletion" in PY[PROXY_HANDLER]
    assert "class UnixTimeLLM" in PY[UNIXTIME]
    assert "async def aimage_generation" in PY[IMAGE_HANDLER]
    assert "class CustomLLMError" in PY[HANDLER_SPEC]
    assert len(blocks("yaml")) == 2
    assert len(blocks("bash")) == 4
    assert len(blocks("")) == 2  # the two "Expected Response" bodies


def test_port_changes_only_the_package_name() -> None:
    for source in PY:
        ported = to_gateway(source)
        back = re.sub(
            r"\bgateway\b", "litellm", ported.replace("gateway.types", "litellm.types.utils")
        )
        assert back == source
        for line in source.splitlines():
            for match in re.finditer(r"\blitellm\b", line):
                in_import = re.match(r"\s*(from|import)\s", line) is not None
                attribute = line[match.end() : match.end() + 1] == "."
                assert in_import or attribute, line


def test_context_names_are_really_missing_from_the_doc() -> None:
    for index in (IMAGE_HANDLER, HANDLER_SPEC):
        with pytest.raises(NameError) as info:
            run_block(index, context=False)
        assert info.value.name in DOC_CONTEXT


# Quick Start


def test_quick_start_runs_and_asserts() -> None:
    namespace = run_block(QUICK_START)
    resp = namespace["resp"]
    assert resp.choices[0].message.content == "Hi!"
    assert isinstance(resp, gateway.ModelResponse)
    assert gateway.custom_provider_map[0]["provider"] == "my-custom-llm"


def test_expected_response_has_the_documented_shape() -> None:
    resp = run_block(QUICK_START)["resp"]
    expected = json.loads(blocks("")[0])
    got = json.loads(msgspec.json.encode(resp))

    def keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: keys(v) for k, v in value.items()}
        if isinstance(value, list):
            return [keys(v) for v in value]
        return type(value).__name__ if value is not None else None

    assert keys(got) == keys(expected)
    assert got["choices"] == expected["choices"]
    assert got["usage"] == expected["usage"]
    assert got["object"] == expected["object"]
    assert got["id"].startswith("chatcmpl-")


# custom_handler.py for the proxy


async def test_proxy_handler_serves_sync_async_and_stream() -> None:
    namespace = run_block(PROXY_HANDLER)
    calls: list[str] = []
    handler = Recorder.subclass(type(namespace["my_custom_llm"]), calls)()
    register("my-custom-llm", handler)
    messages = [{"role": "user", "content": 'Say "this is a test" in JSON!'}]

    resp = await gateway.acompletion(model="my-custom-llm/my-model", messages=messages)
    assert resp.choices[0].message.content == "Hi!"
    assert calls == ["acompletion"]

    resp = gateway.completion(model="my-custom-llm/my-model", messages=messages)
    assert resp.choices[0].message.content == "Hi!"
    assert calls == ["acompletion", "completion"]

    # No streaming method: the whole answer is streamed.
    stream = await gateway.acompletion(
        model="my-custom-llm/my-model", messages=messages, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert gateway.stream_chunk_builder(chunks).choices[0].message.content == "Hi!"
    assert calls[-1] == "acompletion"


def test_proxy_handler_loads_as_a_module_file(tmp_path: Path) -> None:
    # The proxy form: custom_handler.py on disk, attribute my_custom_llm.
    (tmp_path / "custom_handler.py").write_text(to_gateway(PY[PROXY_HANDLER]))
    spec = importlib.util.spec_from_file_location(
        "seed_custom_handler", tmp_path / "custom_handler.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        register("my-custom-llm", module.my_custom_llm)
        resp = gateway.completion("my-custom-llm/my-model", [{"role": "user", "content": "x"}])
        assert resp.choices[0].message.content == "Hi!"
    finally:
        sys.modules.pop("seed_custom_handler", None)


# UnixTimeLLM streaming


def _unixtime() -> tuple[Any, list[str]]:
    calls: list[str] = []
    cls = run_block(UNIXTIME)["UnixTimeLLM"]
    handler = Recorder.subclass(cls, calls)()
    register("unixtime", handler)
    return handler, calls


def _is_now(text: str | None, before: int) -> bool:
    return text is not None and text.isdigit() and before <= int(text) <= int(time.time())


def test_unixtime_sync_completion_and_streaming() -> None:
    _, calls = _unixtime()
    before = int(time.time())
    resp = gateway.completion(model="unixtime/now", messages=[{"role": "user", "content": "t?"}])
    assert _is_now(resp.choices[0].message.content, before)

    # `streaming` returns one GenericStreamingChunk dict, not an iterator.
    chunks = list(
        gateway.completion(
            model="unixtime/now",
            messages=[{"role": "user", "content": "t?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert calls == ["completion", "streaming"]
    assert len({c.id for c in chunks}) == 1
    built = gateway.stream_chunk_builder(chunks)
    assert _is_now(built.choices[0].message.content, before)
    assert built.choices[0].finish_reason == "stop"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 0


async def test_unixtime_async_completion_and_streaming() -> None:
    _, calls = _unixtime()
    before = int(time.time())
    resp = await gateway.acompletion(model="unixtime/now", messages=[])
    assert _is_now(resp.choices[0].message.content, before)

    stream = await gateway.acompletion(model="unixtime/now", messages=[], stream=True)
    chunks = [chunk async for chunk in stream]
    assert calls == ["acompletion", "astreaming"]
    assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"]
    assert _is_now(gateway.stream_chunk_builder(chunks).choices[0].message.content, before)


# Image generation with the seed's exact aimage_generation signature


def _image_handler() -> None:
    register("my-custom-llm", run_block(IMAGE_HANDLER)["my_custom_llm"])


async def test_image_handler_via_aimage_generation() -> None:
    _image_handler()
    # api_key/api_base/headers and extras must not reach the explicit signature.
    image = await gateway.aimage_generation(
        prompt="A cute baby sea otter",
        model="my-custom-llm/my-model",
        api_key="sk-1234",
        api_base="http://127.0.0.1:1",
        headers={"x-test": "1"},
        size="256x256",
    )
    assert isinstance(image, gateway.ImageResponse)
    assert image.data[0].url == "https://example.com/image.png"
    expected = json.loads(re.sub(r",\s*}", "}", blocks("")[1]))
    got = json.loads(msgspec.json.encode(image))
    assert got.keys() == expected.keys()
    assert got["data"] == expected["data"]


def test_image_handler_via_sync_image_generation() -> None:
    _image_handler()
    image = gateway.image_generation(
        prompt="A cute baby sea otter", model="my-custom-llm/my-model", api_key="sk-1234"
    )
    assert image.data[0].url == "https://example.com/image.png"


# The handler spec: LiteLLM's own CustomLLM base, as a stand-in for a handler
# written against LiteLLM.


def test_spec_base_class_is_recognised_as_unimplemented() -> None:
    namespace = run_block(HANDLER_SPEC)
    base, error = namespace["CustomLLM"], namespace["CustomLLMError"]
    assert issubclass(base, gateway.llms.base.BaseLLM)
    with pytest.raises(error, match="Not implemented yet!"):
        base().completion()

    class OnlyAsync(base):
        async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
            return {"choices": [{"message": {"role": "assistant", "content": kwargs["model"]}}]}

    register("litellm-style", OnlyAsync())
    # Sync call -> the async method (the inherited sync default is not "served").
    assert gateway.completion("litellm-style/m1", []).choices[0].message.content == "m1"
    chunks = list(gateway.completion("litellm-style/m2", [], stream=True))
    assert gateway.stream_chunk_builder(chunks).choices[0].message.content == "m2"


def test_spec_error_keeps_its_status() -> None:
    namespace = run_block(HANDLER_SPEC)

    class Limited(namespace["CustomLLM"]):
        def completion(self, *args: Any, **kwargs: Any) -> Any:
            raise namespace["CustomLLMError"](status_code=429, message="slow down")

    register("limited", Limited())
    with pytest.raises(gateway.GatewayError) as info:
        gateway.completion("limited/m", [])
    assert info.value.status_code == 429
    assert info.value.type == "rate_limit_error"
    assert info.value.message == "slow down"


# The config.yaml blocks, with the handler file each one names (the proxy's loader)


@pytest.mark.parametrize(("yaml_index", "handler_block"), [(0, PROXY_HANDLER), (1, IMAGE_HANDLER)])
async def test_config_blocks_load_the_seed_handler(
    tmp_path: Path, yaml_index: int, handler_block: int
) -> None:
    from gateway.config import load_config

    handler_source = to_gateway(PY[handler_block])
    if handler_block == IMAGE_HANDLER:
        # As a file the snippet needs its missing imports; the code itself is unchanged.
        handler_source = (
            "import time\nimport httpx\nfrom typing import Any, Optional, Union\n"
            "AsyncHTTPHandler = Any\n" + handler_source
        )
    (tmp_path / "custom_handler.py").write_text(handler_source)
    (tmp_path / "config.yaml").write_text(blocks("yaml")[yaml_index])
    config = load_config(tmp_path / "config.yaml")
    assert config.model_names == ["test-model", "my-custom-model"]
    ((name, handler),) = config.custom_providers
    assert name == "my-custom-llm"
    assert type(handler).__name__ == "MyCustomLLM"

    register(name, handler)
    if handler_block == PROXY_HANDLER:
        resp = await gateway.acompletion("my-custom-llm/my-model", [])
        assert resp.choices[0].message.content == "Hi!"
    else:
        image = await gateway.aimage_generation("A cute baby sea otter", model="my-custom-llm/x")
        assert image.data[0].url == "https://example.com/image.png"
