"""The garbage collector's settings for a process the ``gateway`` command owns.

CPython collects its youngest generation every 700 net allocations and, every so often,
every object it tracks. A gateway under load keeps each in-flight request's objects alive
across many young collections, so they are promoted and traversed again and again, and a
full collection walks everything imported at startup too (web framework, HTTP clients,
the config). With one worker pinned to one CPU proxying JSON to an upstream, throughput
fell from 3,250 req/s at 8 connections to 2,135 at 256 (gc disabled: 2,889 at 256;
frozen and collecting young objects every 10,000 allocations: 3,201 at 256).

So, after startup, once: collect, move every survivor to the permanent generation
(``gc.freeze``: never traversed again, and no copy-on-write of worker pages either), and
raise the youngest generation's threshold. Cycles are still collected, later. Only the
command does this: an app mounted in someone else's process leaves their collector alone.
``gateway_settings.gc_tuning: false`` keeps Python's defaults.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune"]

YOUNG_THRESHOLD = 10_000


def tune() -> None:
    """Freeze what startup built and collect young objects less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
