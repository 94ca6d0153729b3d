"""``BaseLLM``: the seed's handler spec imports it from ``litellm.llms.base``."""

from __future__ import annotations

__all__ = ["BaseLLM"]


class BaseLLM:
    """Base class of ``CustomLLM``, as in LiteLLM; it carries no behaviour here."""
