"""The public surface: ``gateway.__all__``, ``gateway.types``, a light ``import gateway``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import gateway
import gateway.types

ROOT = Path(__file__).resolve().parents[1]

# Named by issue 2, point 2.
REQUIRED = {
    "CustomLLM",
    "CustomLLMError",
    "completion",
    "acompletion",
    "image_generation",
    "aimage_generation",
    "embedding",
    "aembedding",
    "batch_completion",
    "abatch_completion",
    "get_llm_provider",
    "custom_provider_map",
    "ModelResponse",
    "register_provider",
}
TYPES = {
    "ModelResponse",
    "ModelResponseStream",
    "GenericStreamingChunk",
    "ImageResponse",
    "ImageObject",
    "EmbeddingResponse",
    "Usage",
}


def test_all_lists_the_public_api() -> None:
    names = gateway.__all__
    assert len(names) == len(set(names))
    assert REQUIRED <= set(names)
    for name in names:
        assert hasattr(gateway, name), name
    namespace: dict[str, object] = {}
    exec("from gateway import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(names)


def test_types_module_exports() -> None:
    assert TYPES <= set(gateway.types.__all__)
    for name in gateway.types.__all__:
        assert hasattr(gateway.types, name), name
    for name in TYPES:
        assert getattr(gateway, name) is getattr(gateway.types, name)


def test_public_callables_are_documented() -> None:
    for name in REQUIRED - {"custom_provider_map"}:
        assert getattr(gateway, name).__doc__, name


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_import_gateway_stays_light() -> None:
    out = _python("import sys, json, gateway; print(json.dumps(sorted(sys.modules)))")
    modules = set(json.loads(out.stdout))
    # The HTTP stack, and what is only needed on first use (entry points, the router).
    heavy = {"starlette", "uvicorn", "httpx", "yaml", "gateway.handlers"}
    heavy |= {"importlib.metadata", "gateway.router"}
    assert not heavy & modules, heavy & modules
    assert "gateway" in modules


def test_readme_quick_start_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Library quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "README has no library quick start block"
    namespace: dict[str, object] = {"__name__": "readme_quick_start"}
    exec(compile(code.group(1), "README.md", "exec", dont_inherit=True), namespace)
    resp = namespace["resp"]
    assert resp.choices[0].message.content == "Hi!"  # type: ignore[attr-defined]
