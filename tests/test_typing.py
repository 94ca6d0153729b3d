"""What users' type checkers make of the package (it ships py.typed): a handler written
as the README and LiteLLM's docs show type-checks, and a wrong one does not."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HANDLER = """
from collections.abc import AsyncIterator, Iterator
from typing import Any

import gateway
from gateway.types import EmbeddingResponse, GenericStreamingChunk, ModelResponse


class MyLLM(gateway.CustomLLM):
    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return ModelResponse(
            choices=[{"message": {"role": "assistant", "content": "Hi!"}}],
            usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        )

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        yield {"text": "Hi", "tool_use": None, "is_finished": True,
               "finish_reason": "stop", "usage": None, "index": 0}

    async def astreaming(self, *args: Any, **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:
        for item in self.streaming(*args, **kwargs):
            yield item

    def embedding(self, *args: Any, **kwargs: Any) -> EmbeddingResponse:
        return EmbeddingResponse(
            data=[{"object": "embedding", "embedding": [0.5], "index": 0}],
            usage={"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1},
        )


resp = gateway.completion(model="my/m", messages=[], mock_response="Hi!")
"""

WRONG = """
from typing import Any

import gateway


class Wrong(gateway.CustomLLM):
    async def astreaming(self, *args: Any, **kwargs: Any) -> int:
        return 1
"""


def test_handlers_type_check_against_the_shipped_annotations(tmp_path: Path) -> None:
    (tmp_path / "good_handler.py").write_text(textwrap.dedent(HANDLER))
    (tmp_path / "wrong_handler.py").write_text(textwrap.dedent(WRONG))
    # mypy in a process of its own: in the test's process its graph of the package and
    # the stubs stays on the heap, and a garbage collection walking it took 6-10 s.
    # With the project's own settings (strict: what a careful user runs, and more than the
    # defaults) and its cache (.mypy_cache, which git ignores): .ci/run's mypy step and a
    # contributor's have checked the package with those settings, so only the two handlers
    # are new work, 0.3-0.6 s of CPU against 5-6 s cold (any other settings recheck the
    # whole graph). The handlers are new files each run, so their errors are a cold run's.
    done = subprocess.run(
        [
            sys.executable, "-m", "mypy",
            "--config-file", str(REPO / "pyproject.toml"),
            str(tmp_path / "good_handler.py"),
            str(tmp_path / "wrong_handler.py"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    out, err, status = done.stdout, done.stderr, done.returncode
    errors = [line for line in out.splitlines() if ": error:" in line]
    # The one error is the wrong override; the README-style handler has none.
    assert len(errors) == 1, out + err
    assert "wrong_handler.py" in errors[0] and "astreaming" in errors[0], out
    assert status == 1
