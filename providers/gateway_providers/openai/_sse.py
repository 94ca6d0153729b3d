"""Server-sent events from an upstream, parsed incrementally with a size cap."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from itertools import repeat

from gateway.errors import BadGatewayError

__all__ = ["SSEParser", "sse_events"]


class SSEParser:
    """``(event, data)`` per server-sent event, parsed incrementally from the bytes.

    Lines end in LF, CRLF or a lone CR, as the SSE spec allows. A line or an event
    longer than ``cap`` bytes is a 502: an upstream that never sends a newline must not
    cost minutes of CPU and all the memory. Pending bytes are kept as a list of pieces
    (joined once a line ends), so a long line costs linear time.
    """

    __slots__ = ("cap", "data", "data_size", "event", "parts", "size", "skip_lf")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []  # the unfinished line
        self.size = 0  # its length
        self.data: list[bytes] = []
        self.data_size = 0
        self.event = b""
        self.skip_lf = False  # the last piece ended in CR: an LF next completes a CRLF

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        if self.skip_lf:
            self.skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        # Fast path: one whole ``data:`` event per network read, the common case.
        if (
            not self.parts
            and not self.data
            and not self.event
            and chunk.startswith(b"data: ")
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
            and b"\r" not in chunk
            and len(chunk) <= self.cap
        ):
            return [(b"", chunk[6:-2])]
        if b"\n" not in chunk and b"\r" not in chunk:
            self.parts.append(chunk)
            self.size += len(chunk)
            if self.size > self.cap:
                raise self._too_long()
            return []
        buffer = b"".join((*self.parts, chunk)) if self.parts else chunk
        if b"\r" in buffer:
            self.skip_lf = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[tuple[bytes, bytes]] = []
        if not self.data and not self.event:
            # Second fast path: a read of several whole one-line ``data:`` events (a
            # stream that arrives faster than it is read), split in C: ~10 bytecodes an
            # event where the line by line parse below costs ~80.
            end = buffer.rfind(b"\n\n")
            if end > 0 and self._events(buffer[:end], out):
                buffer = buffer[end + 2 :]
        *lines, rest = buffer.split(b"\n")
        self.parts = [rest] if rest else []
        self.size = len(rest)
        if self.size > self.cap:
            raise self._too_long()
        for line in lines:
            self._line(line, out)
        return out

    def _events(self, whole: bytes, out: list[tuple[bytes, bytes]]) -> bool:
        """``whole``'s events into ``out`` if each is one ``data:`` line within the cap;
        False (``out`` untouched) for anything else, left to the line by line parse."""
        if whole.startswith(b"data: "):
            # The usual shape, split and checked without a loop in Python: one data
            # line an event when no value holds a line break (no other line, no run
            # of blank lines). Joined and searched (memcpy, memchr): a quarter of the
            # cost of counting the line breaks, ~20k instructions a 20-event read.
            values = whole[6:].split(b"\n\ndata: ")
            if b"\n" not in b"".join(values):
                if len(whole) >= self.cap and max(map(len, values)) >= self.cap:
                    return False
                out.extend(zip(repeat(b""), values))
                return True
        events = whole.split(b"\n\n")
        cap = self.cap + 4  # beyond, the line by line parse tells exactly what is over
        for event in events:
            if not event.startswith(b"data:") or b"\n" in event or len(event) > cap:
                return False
        out.extend([(b"", e[6:] if e[5:6] == b" " else e[5:]) for e in events])
        return True

    def end(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if self.parts:
            self._line(b"".join(self.parts), out)
            self.parts = []
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[tuple[bytes, bytes]]) -> None:
        if not line:
            if self.data:
                out.append((self.event, b"\n".join(self.data)))
                self.data, self.event, self.data_size = [], b"", 0
        elif line.startswith(b"data:"):
            value = line[6:] if line[5:6] == b" " else line[5:]
            self.data.append(value)
            self.data_size += len(value) + 1
            if self.data_size > self.cap:
                raise self._too_long()
        elif line.startswith(b"event:"):
            self.event = line[6:].strip()
        # comments (": ping"), id: and retry: lines carry nothing for us

    def _too_long(self) -> BadGatewayError:
        return BadGatewayError(
            f"upstream sent a stream line or event over {self.cap} bytes "
            "(gateway_settings.upstream.max_event_bytes)"
        )


async def sse_events(
    chunks: AsyncIterator[bytes], cap: int = 4 * 2**20
) -> AsyncGenerator[tuple[bytes, bytes], None]:
    """``(event, data)`` per server-sent event of a byte stream."""
    parser = SSEParser(cap)
    async for chunk in chunks:
        for item in parser.feed(chunk):
            yield item
    for item in parser.end():
        yield item
