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
