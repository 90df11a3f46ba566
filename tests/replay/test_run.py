"""Replay's driver feeds the decode helper ahead of the batch it windows."""

from __future__ import annotations

from stream_app.core.records import RawRecord
from stream_app.replay.run import batches_ahead


def raws(count: int) -> list[RawRecord]:
    return [RawRecord("in", 0, offset, None, None, b"%d" % offset) for offset in range(count)]


def test_each_batch_is_prefetched_depth_batches_before_it_is_yielded():
    prefetched: list[list[RawRecord]] = []
    seen = []
    for batch in batches_ahead(raws(95), 10, prefetched.append, depth=2):
        seen.append(batch)
        if batch:
            index = len(seen) - 1
            # when batch i comes, batches up to i + 2 have gone to the helper (as far as there are)
            assert prefetched[index] is batch
            assert len(prefetched) == min(index + 3, 10)
    assert [raw.offset for batch in seen for raw in batch] == list(range(95))
    assert [len(batch) for batch in seen] == [10] * 9 + [5]
    # an input of whole batches ends with an empty one (the driver's last step runs on it)
    assert [len(batch) for batch in batches_ahead(raws(20), 10, lambda b: None)] == [10, 10, 0]


def test_a_short_input_is_yielded_whole():
    prefetched: list[list[RawRecord]] = []
    assert [len(b) for b in batches_ahead(raws(3), 10, prefetched.append)] == [3]
    assert [len(b) for b in prefetched] == [3]
