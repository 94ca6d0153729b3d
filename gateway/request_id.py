"""Request ids: the caller's own ``x-request-id`` when it is safe to echo and log, else a
new one. The HTTP app makes one per request (``RequestRecord.id``); ``request_id(scope)``
answers that one, so an error body, the echoed header and the log lines agree."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["request_id"]

# Safe in a header, a log line and a JSON string as-is: no spaces, quotes or controls.
_SAFE = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_bits = random.getrandbits  # not a secret: an id to match a client's error with a log line


def request_id(scope: Any) -> str:
    """The request's id: its ``x-request-id`` header if safe, else 32 random hex digits
    (a new one each call where the app keeps none: ``request_ids: false``)."""
    record = scope.get("gateway.request")
    if record is not None and record.id is not None:
        return str(record.id)
    return new_request_id(scope.get("headers", ()))


# A new id is this process's random 80-bit prefix and a 48-bit counter: unique across
# workers and restarts, 32 hex digits. Made 4096 at a time: a block's first 29 digits are
# formatted once, then each id is that head and one of 4096 ready 3-digit tails (an id
# ~900 instructions; formatting each whole cost ~3,500).
_PREFIX = f"{_bits(80):020x}"
_TAILS = [f"{n:03x}" for n in range(4096)]


def _ids() -> Iterator[str]:
    for block in itertools.count():
        head = f"{_PREFIX}{block & 0xFFFFFFFFF:09x}"
        for tail in _TAILS:
            yield head + tail


_next_id = _ids().__next__


def new_request_id(headers: Any) -> str:
    # dict() finds the header in C: a Python loop over the headers cost twice this.
    value = dict(headers).get(b"x-request-id")
    if value is not None and _SAFE.fullmatch(value):
        return value.decode("ascii")
    return _next_id()
