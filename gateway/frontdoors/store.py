"""The bounded in-memory store behind ``previous_response_id`` and ``GET /v1/responses/{id}``."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgspec

__all__ = ["ResponseStore", "Stored"]


class Stored(msgspec.Struct, gc=False):
    response: bytes  # the response object as sent (encoded once, when stored)
    conversation: list[dict[str, Any]]  # chat messages up to and including its answer
    size: int


_encode = msgspec.json.Encoder().encode


class ResponseStore:
    """Responses by id, oldest dropped first once ``max_items`` or ``max_bytes`` is passed.

    A client cannot grow it past those bounds (a conversation longer than ``max_bytes``
    is simply not kept); the cost per stored response is one encode and a dict insert.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> bool:
        """Keep ``response``; False when it alone is larger than the store."""
        body = _encode(response)
        size = len(body) + len(_encode(conversation))
        if size > self.max_bytes or self.max_items <= 0:
            return False
        self.delete(response["id"])
        items = self._items
        items[response["id"]] = Stored(body, conversation, size)
        self.bytes += size
        while len(items) > self.max_items or self.bytes > self.max_bytes:
            _, old = items.popitem(last=False)
            self.bytes -= old.size
        return True

    def get(self, response_id: str) -> Stored | None:
        return self._items.get(response_id)

    def delete(self, response_id: str) -> bool:
        old = self._items.pop(response_id, None)
        if old is None:
            return False
        self.bytes -= old.size
        return True
