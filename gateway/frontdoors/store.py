"""The bounded in-memory store behind ``previous_response_id`` and ``GET /v1/responses/{id}``."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import msgspec

__all__ = ["ResponseStore", "Stored", "owner"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[dict[str, Any]]).decode


class Stored(msgspec.Struct, gc=False):
    """One stored response. Only bytes: thousands of them add nothing for the garbage
    collector to walk (a conversation kept as dicts would, on every full collection)."""

    response: bytes  # the response object as sent (encoded once)
    conversation: bytes  # chat messages up to and including its answer, encoded
    size: int
    owner: bytes | None  # who may read it: see ``owner``

    def messages(self) -> list[dict[str, Any]]:
        """The conversation, for the request that continues it."""
        return _decode(self.conversation)


def owner(scope: Any) -> bytes | None:
    """A digest of the credential a request presented (None without one).

    A stored response is served only to a request presenting the same credential, so
    callers with different keys never see each other's conversations, whatever the
    auth in front decides about the keys themselves. One header scan and a 16-byte
    blake2b, on the Responses routes only.
    """
    for name, value in scope["headers"]:
        if name in (b"authorization", b"api-key", b"x-api-key"):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                value = token if scheme.lower() == b"bearer" else value
            return hashlib.blake2b(value.strip(), digest_size=16).digest()
    return None


class ResponseStore:
    """Responses by id, oldest dropped first once ``max_items`` or ``max_bytes`` is passed.

    A client cannot grow it past those bounds (a conversation longer than ``max_bytes``
    is simply not kept); the cost per stored response is an encode (or two) and a dict
    insert.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(
        self,
        response: dict[str, Any],
        conversation: list[dict[str, Any]],
        owner: bytes | None = None,
        body: bytes | None = None,
    ) -> bool:
        """Keep ``response`` (``body``: as already encoded); False when it alone is
        larger than the store."""
        if body is None:
            body = _encode(response)
        messages = _encode(conversation)
        size = len(body) + len(messages)
        if size > self.max_bytes or self.max_items <= 0:
            return False
        items = self._items
        old = items.pop(response["id"], None)
        if old is not None:
            self.bytes -= old.size
        items[response["id"]] = Stored(body, messages, size, owner)
        self.bytes += size
        while len(items) > self.max_items or self.bytes > self.max_bytes:
            _, old = items.popitem(last=False)
            self.bytes -= old.size
        return True

    def get(self, response_id: str, owner: bytes | None = None) -> Stored | None:
        stored = self._items.get(response_id)
        if stored is None or stored.owner != owner:
            return None
        return stored

    def delete(self, response_id: str, owner: bytes | None = None) -> bool:
        if self.get(response_id, owner) is None:
            return False
        old = self._items.pop(response_id)
        self.bytes -= old.size
        return True
