"""``UserAPIKeyAuth``, at LiteLLM's ``litellm.proxy._types`` path, so proxy hooks written
for LiteLLM import it with only ``litellm`` changed to ``gateway``."""

from __future__ import annotations

from typing import Any

__all__ = ["UserAPIKeyAuth"]


class UserAPIKeyAuth:
    """The key a request came with, as proxy hooks see it (``user_api_key_dict``).

    ``api_key`` is the key's hash (never the key itself), ``None`` without virtual keys.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        key_alias: str | None = None,
        user_id: str | None = None,
        team_id: str | None = None,
        models: list[str] | None = None,
        spend: float = 0.0,
        max_budget: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.api_key = api_key
        self.token = api_key
        self.key_alias = key_alias
        self.user_id = user_id
        self.team_id = team_id
        self.models = models or []
        self.spend = spend
        self.max_budget = max_budget
        self.metadata = metadata if metadata is not None else {}

    def __repr__(self) -> str:
        return f"UserAPIKeyAuth(key_alias={self.key_alias!r}, user_id={self.user_id!r})"
