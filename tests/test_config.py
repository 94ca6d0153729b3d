from __future__ import annotations

import logging
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway
from gateway import _handler_modules as handler_modules
from gateway.config import (
    Config,
    ConfigError,
    Deployment,
    GatewaySettings,
    RouterSettings,
    UpstreamSettings,
    load_config,
    parse_config,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

HANDLER = """
import gateway


class Handler(gateway.CustomLLM):
    def completion(self, *args, **kwargs):
        return gateway.completion(model="x", messages=[], mock_response=ANSWER)


ANSWER = {answer!r}
my_handler = Handler()
"""


@pytest.fixture(autouse=True)
def _forget_handler_modules(tmp_path: Path) -> Iterator[None]:
    """Handler modules a test loaded from its tmp folder do not outlive it."""
    yield
    root = str(tmp_path.resolve())
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(root):
            del sys.modules[name]
    for name, folder in list(handler_modules.loaded_from.items()):
        if folder.startswith(root):
            del handler_modules.loaded_from[name]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def error_of(folder: Path, text: str) -> str:
    path = write(folder, "config.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return message.removeprefix(f"{path}: ")


def answer_of(handler: object) -> str:
    gateway.custom_provider_map = [{"provider": "t", "custom_handler": handler}]
    return gateway.completion("t/m", [{"role": "user", "content": "x"}]).choices[0].message.content


# -- errors: each one line, "<file>: <key path>: <problem>" ----------------------------


def test_missing_required_key_names_file_and_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        "config.yaml",
        """
        model_list:
          - model_name: ok
            litellm_params:
              model: my-custom-llm/a
          - model_name: broken
            litellm_params:
              api_base: http://127.0.0.1:9
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config("config.yaml")
    assert str(info.value) == (
        "config.yaml: model_list[1].litellm_params.model: required key missing"
    )
    assert info.value.key_path == "model_list[1].litellm_params.model"
    assert info.value.source == "config.yaml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "model_list:\n  - litellm_params: {model: a/b}\n",
            "model_list[0].model_name: required key missing",
        ),
        (
            "model_list:\n  - model_name: x\n",
            "model_list[0].litellm_params: required key missing",
        ),
        (
            "model_list:\n  - model_name: 123\n    litellm_params: {model: a/b}\n",
            "model_list[0].model_name: expected a string, got an integer",
        ),
        (
            "model_list:\n  - model_name: x\n    litellm_params: a/b\n",
            "model_list[0].litellm_params: expected a mapping, got a string",
        ),
        (
            "model_list:\n  - model_name: x\n    litellm_params: {model: a/b, timeout: fast}\n",
            "model_list[0].litellm_params.timeout: expected a number, got a string",
        ),
        (
            "model_list:\n  - model_name: x\n    litellm_params: {model: a/b, timeout: -1}\n",
            "model_list[0].litellm_params.timeout: expected a number > 0",
        ),
        (
            "model_list:\n  - model_name: x\n    litellm_params: {model: a/b, api_key: [1]}\n",
            "model_list[0].litellm_params.api_key: expected a string, got a list",
        ),
        (
            "model_list:\n  - model_name: ' '\n    litellm_params: {model: a/b}\n",
            "model_list[0].model_name: must not be empty",
        ),
        ("model_list: {a: 1}\n", "model_list: expected a list, got a mapping"),
        ("- model_name: x\n", "top level: expected a mapping, got a list"),
        (
            "litellm_settings:\n  custom_provider_map: {provider: a}\n",
            "litellm_settings.custom_provider_map: expected a list, got a mapping",
        ),
        (
            "litellm_settings:\n  custom_provider_map:\n  - {custom_handler: a.b}\n",
            "litellm_settings.custom_provider_map[0].provider: required key missing",
        ),
        (
            "litellm_settings:\n  custom_provider_map:\n  - {provider: a/b, custom_handler: a.b}\n",
            "litellm_settings.custom_provider_map[0].provider: invalid provider name 'a/b'",
        ),
        (
            "litellm_settings:\n  custom_provider_map:\n  - {provider: a, custom_handler: nodot}\n",
            "litellm_settings.custom_provider_map[0].custom_handler: "
            "expected 'module.attribute', got 'nodot'",
        ),
        (
            "general_settings: {master_key: 1234}\n",
            "general_settings.master_key: expected a string, got an integer",
        ),
        (
            "gateway_settings:\n  sync_worker_threads: 0\n",
            "gateway_settings.sync_worker_threads: expected an integer >= 1",
        ),
        (
            "gateway_settings:\n  max_request_body_bytes: lots\n",
            "gateway_settings.max_request_body_bytes: expected an integer, got a string",
        ),
        ("router_settings: [1]\n", "router_settings: expected a mapping, got a list"),
        ("environment_variables: [A]\n", "environment_variables: expected a mapping, got a list"),
    ],
)
def test_type_and_shape_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text) == expected


def test_unknown_key_in_gateway_settings_is_an_error_with_suggestion(tmp_path: Path) -> None:
    # Our own section: a typo there must not pass silently.
    assert error_of(tmp_path, "gateway_settings:\n  sync_worker_thread: 8\n") == (
        "gateway_settings.sync_worker_thread: unknown key (did you mean 'sync_worker_threads'?)"
    )
    assert error_of(tmp_path, "gateway_settings:\n  upstream: {max_conections: 3}\n") == (
        "gateway_settings.upstream.max_conections: unknown key (did you mean 'max_connections'?)"
    )


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    message = error_of(
        tmp_path,
        """
        model_list:
          - model_name: x
            litellm_params: {model: a/b
          - model_name: y
        """,
    )
    assert message.startswith("line 4, column ")
    assert "invalid YAML: " in message


def test_yaml_that_is_not_safe_is_invalid(tmp_path: Path) -> None:
    message = error_of(tmp_path, "model_list: !!python/object:os.system {}\n")
    assert message.startswith("line 1, column ")
    assert "invalid YAML" in message


def test_file_not_found_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found$"):
        load_config(missing)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_missing_environment_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GW_TEST_MISSING_KEY", raising=False)
    message = error_of(
        tmp_path,
        """
        model_list:
          - model_name: x
            litellm_params:
              model: a/b
              api_key: os.environ/GW_TEST_MISSING_KEY
        """,
    )
    assert message == (
        "model_list[0].litellm_params.api_key: environment variable GW_TEST_MISSING_KEY is not set"
    )


def test_missing_handler_module(tmp_path: Path) -> None:
    message = error_of(
        tmp_path,
        """
        litellm_settings:
          custom_provider_map:
          - {"provider": "p", "custom_handler": no_such_handler_mod.my_custom_llm}
        """,
    )
    assert message.startswith(
        "litellm_settings.custom_provider_map[0].custom_handler: "
        "handler module 'no_such_handler_mod' not found (no no_such_handler_mod.py in "
    )


def test_missing_handler_attribute_suggests(tmp_path: Path) -> None:
    write(tmp_path, "handler_attr_mod.py", HANDLER.format(answer="a"))
    message = error_of(
        tmp_path,
        """
        litellm_settings:
          custom_provider_map:
          - {"provider": "p", "custom_handler": handler_attr_mod.my_handlr}
        """,
    )
    assert message == (
        "litellm_settings.custom_provider_map[0].custom_handler: handler module "
        f"{tmp_path / 'handler_attr_mod.py'} has no attribute 'my_handlr' "
        "(did you mean 'my_handler'?)"
    )


def test_handler_module_that_fails_to_import(tmp_path: Path) -> None:
    write(tmp_path, "handler_boom_mod.py", "x = 1\nraise RuntimeError('no GPU here')\n")
    message = error_of(
        tmp_path,
        "litellm_settings:\n  custom_provider_map:\n"
        "  - {provider: p, custom_handler: handler_boom_mod.h}\n",
    )
    assert message == (
        "litellm_settings.custom_provider_map[0].custom_handler: importing handler module "
        f"{tmp_path / 'handler_boom_mod.py'} failed: RuntimeError: no GPU here "
        "(handler_boom_mod.py line 2)"
    )
    assert "handler_boom_mod" not in sys.modules


def test_handler_module_with_syntax_error(tmp_path: Path) -> None:
    write(tmp_path, "handler_syntax_mod.py", "def f(:\n    pass\n")
    message = error_of(
        tmp_path,
        "litellm_settings:\n  custom_provider_map:\n"
        "  - {provider: p, custom_handler: handler_syntax_mod.h}\n",
    )
    assert "failed: SyntaxError: " in message
    assert message.endswith("(handler_syntax_mod.py line 1)")


def test_handler_that_is_not_a_handler(tmp_path: Path) -> None:
    write(tmp_path, "handler_notone_mod.py", "thing = 42\n")
    message = error_of(
        tmp_path,
        "litellm_settings:\n  custom_provider_map:\n"
        "  - {provider: p, custom_handler: handler_notone_mod.thing}\n",
    )
    assert message.startswith(
        "litellm_settings.custom_provider_map[0].custom_handler: "
        "handler_notone_mod.thing is not a handler: it has none of completion, acompletion"
    )


def test_duplicate_provider(tmp_path: Path) -> None:
    write(tmp_path, "handler_dup_mod.py", HANDLER.format(answer="a"))
    message = error_of(
        tmp_path,
        """
        litellm_settings:
          custom_provider_map:
          - {provider: p, custom_handler: handler_dup_mod.my_handler}
          - {provider: p, custom_handler: handler_dup_mod.my_handler}
        """,
    )
    assert message == (
        "litellm_settings.custom_provider_map[1].provider: "
        "provider 'p' is already defined at custom_provider_map[0]"
    )


def test_handler_module_named_like_an_imported_module(tmp_path: Path) -> None:
    write(tmp_path, "json.py", HANDLER.format(answer="a"))
    message = error_of(
        tmp_path,
        "litellm_settings:\n  custom_provider_map:\n"
        "  - {provider: p, custom_handler: json.my_handler}\n",
    )
    assert "is named like the already imported module 'json'" in message
    assert message.endswith("rename it")
    import json

    assert sys.modules["json"] is json


# -- values ---------------------------------------------------------------------------


def test_environment_variables_are_resolved_everywhere(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GW_TEST_KEY", "sk-secret")
    monkeypatch.setenv("GW_TEST_TIMEOUT", "12.5")
    monkeypatch.setenv("GW_TEST_MASTER", "sk-master")
    monkeypatch.setenv("GW_TEST_STRATEGY", "simple-shuffle")
    write(
        tmp_path,
        "config.yaml",
        """
        model_list:
          - model_name: x
            litellm_params:
              model: a/b
              api_key: os.environ/GW_TEST_KEY
              timeout: os.environ/GW_TEST_TIMEOUT
              backend:
                tokens: [os.environ/GW_TEST_KEY, plain]
        general_settings:
          master_key: os.environ/GW_TEST_MASTER
        router_settings:
          routing_strategy: os.environ/GW_TEST_STRATEGY
        """,
    )
    config = load_config(tmp_path / "config.yaml")
    (deployment,) = config.model_list
    assert deployment.api_key == "sk-secret"
    assert deployment.timeout == 12.5
    assert deployment.params["timeout"] == 12.5
    assert deployment.params["api_key"] == "sk-secret"
    assert deployment.params["backend"] == {"tokens": ["sk-secret", "plain"]}
    assert config.master_key == "sk-master"
    assert config.router_settings.routing_strategy == "simple-shuffle"


def test_environment_variables_section_is_exported_first(tmp_path: Path, monkeypatch) -> None:
    # Registered with monkeypatch so the values the config exports are undone afterwards.
    monkeypatch.setenv("GW_TEST_FROM_SECTION", "old")
    write(
        tmp_path,
        "config.yaml",
        """
        environment_variables:
          GW_TEST_FROM_SECTION: sk-from-config
        model_list:
          - model_name: x
            litellm_params: {model: a/b, api_key: os.environ/GW_TEST_FROM_SECTION}
        """,
    )
    config = load_config(tmp_path / "config.yaml")
    assert config.model_list[0].api_key == "sk-from-config"
    assert os.environ["GW_TEST_FROM_SECTION"] == "sk-from-config"


def test_custom_keys_are_kept_in_params_without_warnings(tmp_path: Path) -> None:
    write(
        tmp_path,
        "config.yaml",
        """
        model_list:
          - model_name: my-model
            litellm_params:
              model: my-custom-llm/m
              api_base: http://127.0.0.1:8080
              stream_timeout: 30
              mock_response: Hello
              torchserve_model_version: "2.1"
              sampling: {top_k: 40}
            model_info: {id: one, mode: chat}
          - model_name: my-model
            litellm_params: {model: my-custom-llm/n}
        """,
    )
    config = load_config(tmp_path / "config.yaml")
    first, second = config.model_list
    assert first == Deployment(
        model_name="my-model",
        model="my-custom-llm/m",
        params={
            "model": "my-custom-llm/m",
            "api_base": "http://127.0.0.1:8080",
            "stream_timeout": 30.0,
            "mock_response": "Hello",
            "torchserve_model_version": "2.1",
            "sampling": {"top_k": 40},
        },
        api_base="http://127.0.0.1:8080",
        stream_timeout=30.0,
        model_info={"id": "one", "mode": "chat"},
    )
    assert second.params == {"model": "my-custom-llm/n"}
    assert config.model_names == ["my-model"]
    assert config.warnings == ()


def test_gateway_settings_and_defaults(tmp_path: Path) -> None:
    write(
        tmp_path,
        "config.yaml",
        """
        model_list:
          - model_name: x
            litellm_params: {model: a/b}
        gateway_settings:
          sync_worker_threads: 8
          max_request_body_bytes: 1000
          upstream: {max_connections: 10, http2: true}
        """,
    )
    config = load_config(tmp_path / "config.yaml")
    assert config.settings == GatewaySettings(
        sync_worker_threads=8,
        max_request_body_bytes=1000,
        upstream=UpstreamSettings(max_connections=10, http2=True),
    )
    assert config.settings.default_timeout == 600.0
    assert config.path == str(tmp_path / "config.yaml")
    assert Config().settings == GatewaySettings()


def test_litellm_request_timeout_sets_default_timeout(tmp_path: Path) -> None:
    assert parse_config("litellm_settings: {request_timeout: 42}\n").settings.default_timeout == 42
    both = "litellm_settings: {request_timeout: 42}\ngateway_settings: {default_timeout: 7}\n"
    assert parse_config(both).settings.default_timeout == 7


def test_empty_sections_and_empty_file(tmp_path: Path) -> None:
    config = parse_config("model_list:\nlitellm_settings:\ngeneral_settings:\n", source="c.yaml")
    assert config.model_list == ()
    assert config.master_key is None
    assert config.warnings == ("c.yaml: model_list: no models configured",)
    assert parse_config("").model_list == ()


# -- unknown keys: warnings ----------------------------------------------------------


def test_unknown_keys_warn_with_suggestions(tmp_path: Path, caplog) -> None:
    write(
        tmp_path,
        "config.yaml",
        """
        model_list:
          - model_name: x
            litellm_params: {model: a/b}
            model_inf: {}
        litellm_settings:
          drop_params: true
          custom_provider_mapp: []
        general_settings:
          master_kye: sk-1
          disable_spend_logs: true
        environment_variables: {}
        router_settings: {routing_strategy: simple-shuffle, polling_interval: 1}
        totally_new_section: 1
        """,
    )
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        config = load_config(tmp_path / "config.yaml")
    source = str(tmp_path / "config.yaml")
    assert [w.removeprefix(source + ": ") for w in config.warnings] == [
        "totally_new_section: unknown key, ignored",
        "model_list[0].model_inf: unknown key, ignored (did you mean 'model_info'?)",
        "litellm_settings.drop_params: LiteLLM setting not supported by this gateway, ignored",
        "litellm_settings.custom_provider_mapp: unknown key, ignored "
        "(did you mean 'custom_provider_map'?)",
        "general_settings.master_kye: unknown key, ignored (did you mean 'master_key'?)",
        "general_settings.disable_spend_logs: LiteLLM setting not supported by this gateway, "
        "ignored",
        "router_settings.polling_interval: LiteLLM setting not supported by this gateway, ignored",
    ]
    logged = [r.getMessage() for r in caplog.records if r.name == "gateway.config"]
    assert logged == list(config.warnings)
    assert config.master_key is None


@pytest.mark.parametrize(
    ("router", "line"),
    [
        ("{anything: 1}", "router_settings.anything: unknown router setting"),
        ("{num_retrys: 1}", "router_settings.num_retrys: unknown router setting (did you mean"),
        ("{num_retries: -1}", "router_settings.num_retries: expected an integer >= 0"),
        ("{cooldown_time: soon}", "router_settings.cooldown_time: expected a number, got a"),
        ("{routing_strategy: fastest}", "router_settings.routing_strategy: must be one of"),
        ("{default_fallbacks: [1]}", "router_settings.default_fallbacks[0]: expected a string"),
    ],
)
def test_router_settings_are_checked_when_the_file_loads(
    tmp_path: Path, router: str, line: str
) -> None:
    write(tmp_path, "config.yaml", f"router_settings: {router}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "config.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'config.yaml'}: {line}")
    assert "\n" not in str(info.value)


def test_router_settings_decode_into_a_frozen_struct(tmp_path: Path) -> None:
    write(
        tmp_path,
        "config.yaml",
        "router_settings: {routing_strategy: usage-based-routing-v2, num_retries: '2'}\n",
    )
    settings = load_config(tmp_path / "config.yaml").router_settings
    assert isinstance(settings, RouterSettings)
    assert (settings.routing_strategy, settings.num_retries) == ("usage-based", 2)
    with pytest.raises(AttributeError):
        settings.num_retries = 3  # type: ignore[misc]
    assert parse_config("").router_settings == RouterSettings()


# -- handler loading --------------------------------------------------------------------


def test_handler_loaded_from_config_folder_via_relative_path(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "deploy"
    write(
        folder,
        "rel_sibling_helper.py",
        "GREETING = 'from the sibling'\n",
    )
    write(
        folder,
        "custom_handler.py",
        """
        import gateway
        from rel_sibling_helper import GREETING


        class Handler(gateway.CustomLLM):
            def completion(self, *args, **kwargs):
                return gateway.completion(model="x", messages=[], mock_response=GREETING)


        my_custom_llm = Handler()
        """,
    )
    write(
        folder,
        "config.yaml",
        """
        model_list:
          - model_name: my-custom-model
            litellm_params:
              model: my-custom-llm/my-model
        litellm_settings:
          custom_provider_map:
          - {"provider": "my-custom-llm", "custom_handler": custom_handler.my_custom_llm}
        """,
    )
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    config = load_config("deploy/config.yaml")
    assert sys.path == path_before
    ((name, handler),) = config.custom_providers
    assert name == "my-custom-llm"
    assert type(handler).__module__ == "custom_handler"
    assert sys.modules["custom_handler"].__file__ == str(folder / "custom_handler.py")
    assert answer_of(handler) == "from the sibling"
    # Loaded once: a second load of the same file reuses the module and its handler.
    assert load_config(folder / "config.yaml").custom_providers[0][1] is handler


def test_same_module_name_in_two_folders(tmp_path: Path) -> None:
    handlers = []
    for answer in ("one", "two"):
        write(tmp_path / answer, "custom_handler.py", HANDLER.format(answer=answer))
        text = "litellm_settings:\n  custom_provider_map:\n"
        text += "  - {provider: p, custom_handler: custom_handler.my_handler}\n"
        path = write(tmp_path / answer, "config.yaml", text)
        handlers.append(load_config(path).custom_providers[0][1])
    assert [answer_of(h) for h in handlers] == ["one", "two"]


def test_dotted_package_handler(tmp_path: Path) -> None:
    write(tmp_path, "dotted_pkg_x/__init__.py", "")
    write(tmp_path, "dotted_pkg_x/handlers/__init__.py", "")
    write(tmp_path, "dotted_pkg_x/handlers/answers.py", "ANSWER = 'relative import works'\n")
    write(
        tmp_path,
        "dotted_pkg_x/handlers/main.py",
        """
        import gateway

        from .answers import ANSWER


        class Handler(gateway.CustomLLM):
            def completion(self, *args, **kwargs):
                return gateway.completion(model="x", messages=[], mock_response=ANSWER)


        handler = Handler()
        """,
    )
    text = "litellm_settings:\n  custom_provider_map:\n"
    text += "  - {provider: p, custom_handler: dotted_pkg_x.handlers.main.handler}\n"
    config = load_config(write(tmp_path, "config.yaml", text))
    assert answer_of(config.custom_providers[0][1]) == "relative import works"


def test_handler_falls_back_to_normal_import(tmp_path: Path, monkeypatch) -> None:
    installed = tmp_path / "site"
    write(installed, "installed_handler_mod.py", HANDLER.format(answer="installed"))
    monkeypatch.syspath_prepend(str(installed))
    text = "litellm_settings:\n  custom_provider_map:\n"
    text += "  - {provider: p, custom_handler: installed_handler_mod.my_handler}\n"
    config = load_config(write(tmp_path / "conf", "config.yaml", text))
    assert answer_of(config.custom_providers[0][1]) == "installed"


def test_dict_config_may_hold_handler_objects() -> None:
    class Handler(gateway.CustomLLM):
        def completion(self, *args, **kwargs):
            return gateway.completion(model="x", messages=[], mock_response="object")

    handler = Handler()
    config = parse_config(
        {
            "model_list": [{"model_name": "m", "litellm_params": {"model": "obj/m"}}],
            "litellm_settings": {
                "custom_provider_map": [{"provider": "obj", "custom_handler": handler}]
            },
        }
    )
    assert config.custom_providers == (("obj", handler),)
    assert config.model_list[0].model == "obj/m"


def test_example_config_loads() -> None:
    config = load_config(EXAMPLES / "config.yaml")
    assert config.warnings == ()
    assert config.model_names == [
        "test-model",
        "my-custom-model",
        "my-unixtime-model",
        "my-streaming-model",
        "my-embedding-model",
    ]
    assert config.model_list[0].params == {"model": "openai/text-embedding-ada-002"}
    providers = dict(config.custom_providers)
    assert list(providers) == [
        "my-custom-llm",
        "unixtime-llm",
        "my-streaming-llm",
        "my-embedding-llm",
    ]
    assert answer_of(providers["my-custom-llm"]) == "Hi!"
    assert answer_of(providers["unixtime-llm"]).isdigit()
