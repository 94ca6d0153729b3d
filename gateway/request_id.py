"""Request ids: the caller's own ``x-request-id`` when it is safe to echo and log, else a
new one. The HTTP app makes one per request (``RequestRecord.id``); ``request_id(scope)``
answers that one, so an error body, the echoed header and the log lines agree."""

from __future__ import annotations

import itertools
import random
import re
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
# workers and restarts, 32 hex digits. The counter's blocks of 4096: a block's first 29
# digits are formatted once, then each id is that head and one of 4096 ready 3-digit
# tails (an id ~1k instructions; formatting each whole cost ~3,500). No generator: two
# threads asking at once (apps served from threads, sync handlers' library calls) made
# one of them fail ("generator already executing"). ``next()`` on the count and the
# swap of the (block, head) pair are each atomic; a race only formats a head twice.
_PREFIX = f"{_bits(80):020x}"
_TAILS = [f"{n:03x}" for n in range(4096)]
_count = itertools.count().__next__
_head = (-1, "")


def _next_id() -> str:
    global _head
    n = _count()
    block, head = _head
    if block != n >> 12:
        block = n >> 12
        head = f"{_PREFIX}{block & 0xFFFFFFFFF:09x}"
        _head = (block, head)
    return head + _TAILS[n & 0xFFF]


def new_request_id(headers: Any) -> str:
    # dict() finds the header in C: a Python loop over the headers cost twice this.
    value = dict(headers).get(b"x-request-id")
    if value is not None and _SAFE.fullmatch(value):
        return value.decode("ascii")
    return _next_id()
