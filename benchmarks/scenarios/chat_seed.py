"""chat-seed: the seed's handler idiom, ``acompletion`` returning the library's
``gateway.completion(..., mock_response="Hi!")``, against the bare apps answering the same
bytes. Read beside ``chat`` (a handler that builds its ``ModelResponse``): the difference is
what the library call costs on the request path.
"""

from __future__ import annotations

from typing import Any

from ..harness import Context
from ..payloads import SEED_MODEL
from ._common import run_throughput

NAME = "chat-seed"
TITLE = 'chat-seed: the seed\'s handler, gateway.completion(mock_response="Hi!") (wrk)'


def run(ctx: Context) -> dict[str, Any]:
    return run_throughput(
        ctx,
        name=NAME,
        model=SEED_MODEL,
        checks=[("req/s gateway/baseline", "gateway/baseline", ">=", 0.9)],
    )
