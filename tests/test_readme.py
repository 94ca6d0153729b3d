"""The README's config.yaml example loads as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_readme_config_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## config\.yaml.*?```yaml\n(.*?)```", readme, re.S)
    assert block, "README has no config.yaml example"
    (tmp_path / "config.yaml").write_text(block.group(1))
    (tmp_path / "custom_handler.py").write_text(
        "import gateway\n\n\nclass H(gateway.CustomLLM):\n    pass\n\n\nmy_custom_llm = H()\n"
    )
    monkeypatch.setenv("MY_KEY", "sk-from-env")
    monkeypatch.setenv("GATEWAY_MASTER_KEY", "sk-master")
    config = load_config(tmp_path / "config.yaml")
    assert config.warnings == ()
    assert config.master_key == "sk-master"
    assert config.model_list[0].api_key == "sk-from-env"
    assert config.model_list[0].params["temperature_cap"] == 0.7
    assert config.settings.upstream.max_connections == 1000


def test_readme_keys_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Virtual keys.*?```yaml\n(.*?)```", readme, re.S)
    assert block, "README has no virtual keys example"
    (tmp_path / "config.yaml").write_text(block.group(1))
    monkeypatch.setenv("GATEWAY_MASTER_KEY", "sk-master")
    config = load_config(tmp_path / "config.yaml")
    assert config.warnings == ()
    assert config.database_url == "sqlite:///gateway.db"
    assert config.model_list[0].model_info["input_cost_per_token"] == 0.000001


def test_readme_lists_every_argument_a_handler_gets() -> None:
    import gateway

    readme = (ROOT / "README.md").read_text()
    section = readme.split("What a handler method is called with", 1)[1].split("```", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}

    seen: dict[str, set[str]] = {}

    class Spy(gateway.CustomLLM):
        def completion(self, *args: object, **kwargs: object) -> gateway.ModelResponse:
            seen["chat"] = set(kwargs)
            return gateway.ModelResponse()

        def embedding(self, *args: object, **kwargs: object) -> list[list[float]]:
            seen["embedding"] = set(kwargs)
            return [[0.0]]

        def image_generation(self, *args: object, **kwargs: object) -> gateway.ImageResponse:
            seen["image"] = set(kwargs)
            return gateway.ImageResponse()

    gateway.custom_provider_map = [{"provider": "spy", "custom_handler": Spy()}]
    gateway.completion("spy/m", [{"role": "user", "content": "hi"}])
    gateway.embedding("spy/m", input="hi")
    gateway.image_generation("a cat", model="spy/m")
    assert set().union(*seen.values()) == documented


def test_readme_callbacks_example_runs(tmp_path: Path) -> None:
    import httpx

    from gateway.app import create_app
    from tests.fake_upstream import serve_in_thread

    readme = (ROOT / "README.md").read_text()
    section = re.search(r"## Callbacks.*?```python\n(.*?)```.*?```yaml\n(.*?)```", readme, re.S)
    assert section, "README has no callbacks example"
    (tmp_path / "custom_callbacks.py").write_text(section.group(1))
    (tmp_path / "config.yaml").write_text(
        "model_list:\n  - model_name: m\n    litellm_params: {model: mock/m, mock_response: hi}\n"
        + section.group(2)
    )
    config = load_config(tmp_path / "config.yaml")
    assert config.warnings == ()
    with serve_in_thread(create_app(config)) as server:
        url = f"{server.url}/v1/chat/completions"
        ok = httpx.post(url, json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
        assert ok.status_code == 200
        no = httpx.post(
            url, json={"model": "m", "messages": [{"role": "user", "content": "forbidden"}]}
        )
        assert no.status_code == 403
        assert no.json()["error"]["message"] == "not allowed"


def test_readme_scale_out_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Scale-out.*?```yaml\n(.*?)```", readme, re.S)
    assert block, "README has no scale-out example"
    (tmp_path / "config.yaml").write_text(block.group(1))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("GATEWAY_MASTER_KEY", "sk-master")
    monkeypatch.setenv("DATABASE_URL", "postgresql://gateway@127.0.0.1/gateway")
    config = load_config(tmp_path / "config.yaml")
    assert config.warnings == ()
    assert config.router_settings.shared_url == "redis://127.0.0.1:6379/0"
    assert config.cache is not None and config.cache.type == "redis"
