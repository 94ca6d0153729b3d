"""LiteLLM's ``litellm.caching`` names that callback modules import."""

from __future__ import annotations

from .dual_cache import DualCache

__all__ = ["DualCache"]
