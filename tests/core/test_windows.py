"""The per-partition state machine: cuts, watermark, commit point, restart equivalence."""

from __future__ import annotations

import random

import pytest

from stream_app.core.records import SourceRecord
from stream_app.core.windows import (
    Checkpoint,
    FileCut,
    LateRecord,
    PartitionWindower,
    WindowAssigner,
    WindowClosed,
    WindowFacts,
    WindowOpened,
    WindowPolicy,
    compress_offsets,
)

H = 3_600_000


def rec(offset: int, t_ms: int, **value) -> SourceRecord:
    return SourceRecord("t", 0, offset, t_ms, {"id": offset, **value})


def make(policy: WindowPolicy, checkpoint=None, facts=None, group_by=()) -> PartitionWindower:
    store = facts if facts is not None else {}
    return PartitionWindower("t", 0, policy, WindowAssigner(policy, group_by), checkpoint, store.get)


def cuts(outputs):
    return [o for o in outputs if isinstance(o, FileCut)]


def test_count_roll_numbers_parts_in_offset_order():
    w = make(WindowPolicy(H, 0, 3))
    out = []
    for i in range(7):
        out += w.process(rec(i, 1000 + i), 0)
    got = cuts(out)
    assert [(c.part, [r.offset for r in c.records], c.reason) for c in got] == [
        (0, [0, 1, 2], "count"), (1, [3, 4, 5], "count")]
    assert w.buffered_records == 7  # nothing finalized yet


def test_watermark_closes_window_after_grace_and_late_records_dead_letter():
    w = make(WindowPolicy(H, 60_000, 100))
    out = w.process(rec(0, 10), 0) + w.process(rec(1, H + 30_000), 0)
    assert not cuts(out)  # inside grace: window 0 still open
    out = w.process(rec(2, H + 60_000), 0)
    (cut,) = cuts(out)
    assert cut.key.window_start_ms == 0 and cut.reason == "watermark" and cut.closes_window
    assert any(isinstance(o, WindowClosed) for o in out)
    late = w.process(rec(3, 20), 0)
    assert isinstance(late[0], LateRecord)


def test_late_records_can_join_the_current_window():
    w = make(WindowPolicy(H, 0, 100, late_records="currentWindow"))
    w.process(rec(0, 10), 0)
    w.process(rec(1, 2 * H + 5), 0)
    out = w.process(rec(2, 10), 0)
    assert not any(isinstance(o, LateRecord) for o in out)
    assert sorted(k.window_start_ms for k in w.open_windows) == [2 * H]


def test_commit_offset_never_passes_an_unfinalized_record_with_interleaved_windows():
    w = make(WindowPolicy(H, 10 * H, 2))
    w.process(rec(0, 10), 0)          # window 0
    c = cuts(w.process(rec(1, H + 1), 0) + w.process(rec(2, H + 2), 0))  # window 1 full -> cut
    assert len(c) == 1
    w.mark_finalized(c[0])
    assert w.commit_offset() == 0      # record 0 (window 0) is still open
    (c2,) = cuts(w.process(rec(3, 11), 0))  # window 0 now holds records 0 and 3 -> count cut
    assert [r.offset for r in c2.records] == [0, 3]
    assert w.commit_offset() == 0      # cut but not finalized
    w.process(rec(4, 12), 0)           # window 0, part 1
    w.mark_finalized(c2)
    assert w.commit_offset() == 4      # record 4 is in window 0's open part 1


def test_idle_close_only_closes_windows_that_ended_on_the_wall_clock():
    w = make(WindowPolicy(H, 10 * H, 100, idle_timeout_ms=500))
    w.process(rec(0, 10), now_wall_ms=1000)
    w.process(rec(1, 5 * H), now_wall_ms=1000)
    assert w.cut_idle(1200) == []                     # not idle yet
    out = w.cut_idle(11 * H + 10)                     # idle; window 0 (+grace) ended, 5H has not
    assert [c.key.window_start_ms for c in cuts(out)] == [0]
    closed = [o for o in out if isinstance(o, WindowClosed)]
    assert closed and closed[0].persist and closed[0].reason == "idle"


def test_interval_cut_rolls_a_part_without_closing_the_window():
    w = make(WindowPolicy(H, 0, 100, flush_interval_ms=200))
    w.process(rec(0, 10), now_wall_ms=1000)
    assert w.cut_interval(1100) == []
    (c,) = cuts(w.cut_interval(1200))
    assert c.reason == "interval" and not c.closes_window
    w.mark_finalized(c)
    (c2,) = cuts(w.process(rec(1, 11), 1300) + w.cut_interval(1500))
    assert c2.part == 1


def test_group_by_splits_files():
    w = make(WindowPolicy(H, 0, 100), group_by=("acq",))
    out = w.process(rec(0, 1, acq="A"), 0) + w.process(rec(1, 2, acq="B"), 0)
    assert sorted(o.key.id for o in out if isinstance(o, WindowOpened)) == ["t/0/0/acq=A", "t/0/0/acq=B"]


def test_compress_offsets():
    assert compress_offsets([1, 2, 3, 7, 9, 10]) == [(1, 3), (7, 7), (9, 10)]


def _run(records, policy, crash_points, seed):
    """Drive a windower like the live runtime does, crashing (losing memory) at crash points.

    Finalizes cuts at random moments; on a crash, rebuilds from the persisted facts and
    checkpoint and re-reads from an offset between the last Kafka commit and the checkpoint.
    """
    rng = random.Random(seed)
    facts: dict = {}
    checkpoint: Checkpoint | None = None
    kafka_commit = 0
    files: dict = {}
    w = make(policy, None, facts)
    i = 0
    while i < len(records):
        w.process(records[i], 0)
        i += 1
        if rng.random() < 0.3:
            for cut in w.pending_cuts():
                name = (cut.key.id, cut.part)
                offsets = [r.offset for r in cut.records]
                assert files.setdefault(name, offsets) == offsets, "same file name with different content"
                facts[cut.key] = w.mark_finalized(cut)
            cp = w.checkpoint()
            if cp is not None:
                checkpoint = cp
                if rng.random() < 0.5:
                    kafka_commit = cp.offset  # the ack/commit may lag the table checkpoint
        if i in crash_points:
            crash_points.discard(i)
            w = make(policy, checkpoint, facts)
            i = kafka_commit
    w.cut_idle(2**62)
    for cut in w.pending_cuts():
        name = (cut.key.id, cut.part)
        offsets = [r.offset for r in cut.records]
        assert files.setdefault(name, offsets) == offsets
        w.mark_finalized(cut)
    return files


@pytest.mark.parametrize("seed", range(60))
def test_restart_from_checkpoint_reproduces_the_uninterrupted_files(seed):
    rng = random.Random(seed)
    t, records = 0, []
    for off in range(400):
        t += rng.randint(0, 4 * 60_000)
        jitter = rng.randint(-20 * 60_000, 5 * 60_000)  # some records are late
        records.append(rec(off, max(0, t + jitter)))
    policy = WindowPolicy(H, rng.choice([0, 10 * 60_000]), rng.choice([3, 7, 50]),
                          late_records=rng.choice(["deadLetter", "currentWindow"]), idle_timeout_ms=1)
    reference = _run(records, policy, set(), seed)
    crashes = set(rng.sample(range(1, 400), 6))
    assert _run(records, policy, crashes, seed + 1000) == reference
    assert reference  # something was written


def test_facts_round_trip_json():
    facts = WindowFacts(2, True, {0: {("t", 0): [(1, 3)]}, 1: {("t", 0): [(4, 9)], ("t", 1): [(0, 2)]}})
    assert WindowFacts.from_json(facts.to_json()) == facts
    assert facts.holds_offset(5) and not facts.holds_offset(10)


@pytest.mark.parametrize("close", ["watermark", "idle"])
def test_a_window_is_a_closed_fact_only_once_all_its_parts_are_finalized(close):
    """Part 0 still waits (a failed write) when the window closes: the close is not a fact yet,
    else a restart would take part 0's records, read again, for late ones."""
    w = make(WindowPolicy(H, 0, 3, idle_timeout_ms=1000))
    out = []
    for i in range(4):
        out += w.process(rec(i, 1000 + i), 0)
    if close == "watermark":
        out += w.process(rec(4, H + 1), 0)
    else:
        out += w.cut_idle(10 * H)
        (closed,) = [o for o in out if isinstance(o, WindowClosed)]
        assert closed.persist and w.mark_closed(closed.key) is None  # nothing to persist yet
    part0, part1 = cuts(out)[:2]
    assert part1.closes_window and (part0.part, part1.part) == (0, 1)
    assert w.waits_for_earlier_part(part1) and not w.waits_for_earlier_part(part0)
    facts = w.mark_finalized(part1)  # were it written first, its facts must not say closed
    assert not facts.closed
    assert w.mark_finalized(part0).closed


def test_a_redriven_late_record_goes_to_the_first_open_window_from_the_watermark():
    store: dict = {}
    w = make(WindowPolicy(H, 0, 100, idle_timeout_ms=1000), facts=store)  # lateRecords: deadLetter
    w.process(rec(0, 10), 0)
    w.process(rec(1, 2 * H + 5), 0)
    assert isinstance(w.process(rec(2, 10), 0)[0], LateRecord)  # late, not re-driven: a dead letter
    assert not any(isinstance(o, LateRecord) for o in w.process(rec(3, 10), 0, redriven=True))
    assert sorted(k.window_start_ms for k in w.open_windows) == [2 * H]  # the watermark's window
    for out in w.cut_idle(3 * H):  # every window closed by the idle timeout, its part finalized
        if isinstance(out, FileCut):
            store[out.key] = w.mark_finalized(out)
        elif isinstance(out, WindowClosed):
            store[out.key] = w.mark_closed(out.key) or store[out.key]
    assert not w.open_windows
    assert not any(isinstance(o, LateRecord) for o in w.process(rec(4, 10), 3 * H + 1, redriven=True))
    assert sorted(k.window_start_ms for k in w.open_windows) == [3 * H]  # the next one, still open
