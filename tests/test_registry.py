"""Provider registration: custom_provider_map, register_provider, entry points."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gateway
from gateway import registry

USER = [{"role": "user", "content": "hi"}]


class Answer(gateway.CustomLLM):
    def __init__(self, text: str = "answer") -> None:
        super().__init__()
        self.text = text

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        return self.text


def answer(model: str) -> Any:
    return gateway.completion(model, USER).choices[0].message.content


def test_register_and_unregister_provider() -> None:
    gateway.register_provider("plugged", Answer("registered"))
    assert answer("plugged/m") == "registered"
    assert gateway.get_llm_provider("plugged/m")[:2] == ("m", "plugged")
    gateway.unregister_provider("plugged")
    with pytest.raises(gateway.BadRequestError, match="Unknown provider 'plugged'"):
        answer("plugged/m")


def test_register_provider_replaces_an_earlier_one() -> None:
    gateway.register_provider("plugged", Answer("first"))
    gateway.register_provider("plugged", Answer("second"))
    assert answer("plugged/m") == "second"


@pytest.mark.parametrize("name", ["", "a/b"])
def test_register_provider_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid provider name"):
        gateway.register_provider(name, Answer())


def test_custom_provider_map_is_read_at_call_time() -> None:
    gateway.custom_provider_map = [{"provider": "p", "custom_handler": Answer("one")}]
    assert answer("p/m") == "one"
    gateway.custom_provider_map = [{"provider": "p", "custom_handler": Answer("two")}]
    assert answer("p/m") == "two"
    gateway.custom_provider_map.append({"provider": "q", "custom_handler": Answer("three")})
    assert answer("q/m") == "three"
    gateway.custom_provider_map = []
    with pytest.raises(gateway.BadRequestError):
        answer("p/m")


def test_custom_provider_map_wins_over_register_provider() -> None:
    gateway.register_provider("p", Answer("registered"))
    gateway.custom_provider_map = [{"provider": "p", "custom_handler": Answer("mapped")}]
    assert answer("p/m") == "mapped"


async def test_a_provider_instance_can_be_registered() -> None:
    class Upper(gateway.Provider):
        async def acompletion(self, call: Any) -> gateway.ModelResponse:
            text = call.messages[-1]["content"].upper()
            return gateway.ModelResponse(choices=[{"message": {"content": text}}])

    gateway.register_provider("upper", Upper())
    resp = await gateway.acompletion("upper/m", [{"role": "user", "content": "shout"}])
    assert resp.choices[0].message.content == "SHOUT"
    # The base class serves sync calls from the async method.
    assert answer("upper/m") == "HI"


# Entry points: a real installed distribution, made on sys.path for the test.

PLUGIN_MODULE = """
import gateway


class Handler(gateway.CustomLLM):
    def completion(self, *args, **kwargs):
        return "from a class entry point"


class _Instance(gateway.CustomLLM):
    async def acompletion(self, model, messages, **kwargs):
        return "from an instance entry point: " + model


handler = _Instance()
"""


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    module = "gw_test_plugin_demo"
    (tmp_path / f"{module}.py").write_text(PLUGIN_MODULE)
    info = tmp_path / "gw_test_plugin_demo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gw-test-plugin-demo\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[gateway.providers]\n"
        f"demo-instance = {module}:handler\n"
        f"demo-class = {module}:Handler\n"
        "[some.other.group]\n"
        f"not-a-provider = {module}:handler\n"
    )
    monkeypatch.setattr(registry, "_entry_points", None)  # reset the discovery cache
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        yield module
    finally:
        sys.modules.pop(module, None)


def test_entry_point_providers_are_discovered(plugin_dist: str) -> None:
    assert importlib.metadata.version("gw-test-plugin-demo") == "1.0"
    known = registry.known_providers()
    assert "demo-instance" in known and "demo-class" in known
    assert "not-a-provider" not in known
    # Discovered lazily: listing does not import the plugin.
    assert plugin_dist not in sys.modules

    assert answer("demo-class/m") == "from a class entry point"
    assert answer("demo-instance/some-model") == "from an instance entry point: some-model"
    assert plugin_dist in sys.modules
    assert gateway.get_llm_provider("demo-class/x")[:2] == ("x", "demo-class")


async def test_entry_point_provider_async_and_named_in_errors(plugin_dist: str) -> None:
    resp = await gateway.acompletion("demo-instance/m", USER)
    assert resp.choices[0].message.content == "from an instance entry point: m"
    with pytest.raises(gateway.BadRequestError) as info:
        await gateway.acompletion("missing/m", USER)
    assert "demo-instance" in info.value.message
    assert "demo-class" in info.value.message


def test_entry_points_absent_without_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_entry_points", None)
    assert "demo-class" not in registry.known_providers()
    with pytest.raises(gateway.BadRequestError, match="Unknown provider 'demo-class'"):
        answer("demo-class/m")
