"""New request ids made by several threads at once (apps served from threads of one
process, sync handlers' library calls): each unique, none failing."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from gateway.request_id import new_request_id


@pytest.fixture
def switch_often() -> Iterator[None]:
    # Threads switch every microsecond instead of every 5 ms: a switch inside the id
    # maker, where another thread then asks for one, happens within a few thousand ids.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_ids_made_by_threads_at_once_are_unique(switch_often: None) -> None:
    per_thread, threads = 20_000, 4
    made: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def make(out: list[str]) -> None:
        start.wait()
        try:
            for _ in range(per_thread):
                out.append(new_request_id(()))
        except BaseException as exc:  # the id maker raised in this thread
            errors.append(exc)

    workers = [threading.Thread(target=make, args=(out,)) for out in made]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    ids = [rid for out in made for rid in out]
    assert len(set(ids)) == per_thread * threads
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in ids)
