"""SDKs the tests import on first use rather than when pytest collects them.

Every xdist worker collects (imports) every test module, and importing the anthropic SDK
takes about 2.4 s of CPU (its pydantic models), openai's about 0.9 s: the workers that
never run their tests paid that too (tests/scheduling.py's ONCE keeps their tests on few
workers). Test modules bind the name to a ``LazyModule`` (and to the real module for type
checkers); the first attribute read imports it.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        # pytest's collection probes every module-level object for private names (a
        # mock's ``_mock_name``, fixture markers): answering those would import the SDK
        # in every worker after all. The SDKs' public API has no such names.
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._name), attr)


anthropic = LazyModule("anthropic")
openai = LazyModule("openai")
openai_types = LazyModule("openai.types")
openai_chat_types = LazyModule("openai.types.chat")
