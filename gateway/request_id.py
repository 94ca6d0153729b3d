"""Request ids: the caller's own ``x-request-id`` when it is safe to echo and log, else a
new one. Made only when needed (today: when an unexpected error is reported)."""

from __future__ import annotations

import random
import re
from typing import Any

__all__ = ["request_id"]

# Safe in a header, a log line and a JSON string as-is: no spaces, quotes or controls.
_SAFE = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_bits = random.getrandbits  # not a secret: an id to match a client's error with a log line


def request_id(scope: Any) -> str:
    """The request's id: its ``x-request-id`` header if safe, else 32 random hex digits."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            if _SAFE.fullmatch(value):
                return value.decode("ascii")
            break
    return f"{_bits(128):032x}"
