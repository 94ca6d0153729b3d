"""One module per scenario; each has ``NAME``, ``TITLE`` and ``run(ctx) -> dict``."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["load"]


def load(name: str) -> ModuleType:
    """The module of scenario ``name`` (``chat-sync`` -> ``chat_sync``)."""
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
