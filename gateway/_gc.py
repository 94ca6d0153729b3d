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

The threshold is above what the requests in flight keep alive. A young collection comes
once allocations outnumber deallocations by the threshold, and then walks every young
object still alive: at 256 proxied requests in flight that is every request's frames,
tasks and buffers. At 10,000 the in-flight objects alone reached it: 68 young collections
of ~11 ms each per 20,000 requests at 256 connections, ~45 us of a ~400 us request
(perf: 14.6% of the process's CPU in the collector at 256, none at 8), the whole of the
gap between the gateway's throughput at 256 and at 8. At 50,000: no collection in 20,000
requests at 256 connections, JSON or streamed; at 1,024, three of ~25 ms. Requests leave
no cyclic garbage (none collected at 8 connections in 20,000 requests at either
threshold), so what waits for a collection is garbage a handler makes: at most 50,000
objects of it, a few MB.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune"]

YOUNG_THRESHOLD = 50_000


def tune() -> None:
    """Freeze what startup built and collect young objects less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
