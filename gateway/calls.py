"""Where the library API and the runners lived before they were split: ``gateway.api``
(the public calls) and ``gateway.invoke`` (running one call on a provider). Kept so
``gateway.calls.X`` imports go on working."""

from __future__ import annotations

from .api import (
    abatch_completion,
    acompletion,
    aembedding,
    aimage_generation,
    batch_completion,
    completion,
    embedding,
    image_generation,
)
from .invoke import (
    astream_chunks,
    run_acompletion,
    run_aembedding,
    run_aimage_generation,
)

__all__ = [
    "abatch_completion",
    "acompletion",
    "aembedding",
    "aimage_generation",
    "astream_chunks",
    "batch_completion",
    "completion",
    "embedding",
    "image_generation",
    "run_acompletion",
    "run_aembedding",
    "run_aimage_generation",
]
