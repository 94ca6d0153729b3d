"""uvicorn's httptools protocol with a disconnect fix for pipelined requests.

uvicorn tells only a connection's newest request that the client went away. With
HTTP/1.1 pipelining (the next request sent before the first is answered) the newest
one is still queued, so the running one never got ``http.disconnect`` and its
handler ran to its end for nobody. h11's protocol reads no further than the running
request, so it has no such gap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["http_protocol"]


def http_protocol(name: str = "httptools") -> Any:
    """What to pass as uvicorn's ``http``: ``name``, with the fix where it applies."""
    if name != "httptools":
        return name
    return PipelinedHttpToolsProtocol


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: http_protocol("httptools") is then uvicorn's to refuse
    PipelinedHttpToolsProtocol: Any = "httptools"
else:

    class PipelinedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[no-redef]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._earlier: list[Any] = []  # requests ahead of a pipelined one

        def on_headers_complete(self) -> None:
            previous = self.cycle
            HttpToolsProtocol.on_headers_complete(self)
            cycle = self.cycle
            if cycle is not previous and previous is not None and not previous.response_complete:
                # Pipelined: ``previous`` runs (or waits) while this one queues.
                self._earlier = [c for c in self._earlier if not c.response_complete]
                self._earlier.append(previous)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            for cycle in self._earlier:
                if not cycle.response_complete:
                    cycle.disconnected = True
                    cycle.message_event.set()
            self._earlier.clear()
