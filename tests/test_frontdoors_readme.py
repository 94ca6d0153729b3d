"""The README's front-door SDK examples run as written against the example config."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import example_gateway

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with example_gateway() as url:
        yield url


def _section_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Other APIs") : text.index("## Performance")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


# What each block prints: the example config's my-streaming-model echoes "You said: ...".
PRINTED = ["Hi!\nYou said: hello", "Hi!\nYou said: hello\n", "Hi!\nYou said: hi"]


@pytest.mark.parametrize("index", range(3))
def test_readme_sdk_examples(base_url: str, index: int) -> None:
    code = _section_blocks()[index].replace("http://127.0.0.1:4000", base_url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue() == PRINTED[index]
