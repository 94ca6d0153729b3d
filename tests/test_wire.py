"""The HTTP stream's pre-encoded text chunks are the bytes the response Structs encode to."""

from __future__ import annotations

import msgspec
import pytest

from gateway.streaming import StreamState

encode = msgspec.json.Encoder().encode


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("model", ["m", 'we"ird/é', None])
def test_raw_text_chunks_match_struct_encoding(include_usage: bool, model: str | None) -> None:
    wire = StreamState(model, include_usage=include_usage, raw_dicts=True)
    structs = StreamState(model, include_usage=include_usage)
    structs.id, structs.created = wire.id, wire.created
    usage = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    items = [
        "hello",
        {"text": 'x\n"y', "is_finished": False},
        "zz",
        {"text": "", "is_finished": True, "usage": usage},
    ]
    kinds = set()
    for item in items:
        a, b = wire.feed(item), structs.feed(item)
        assert [encode(c) for c in a] == [encode(c) for c in b]
        kinds.update(type(c).__name__ for c in a)
    assert "Raw" in kinds  # the fast path was taken
    assert [encode(c) for c in wire.close()] == [encode(c) for c in structs.close()]
