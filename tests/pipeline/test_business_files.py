"""Business files (fileScope: window) without a broker: both stages in one process.

One file per file window across every input partition, whatever the interleaving of the
partitions, the batch sizes or crashes of either stage.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stream_app.codecs.avro import encode_confluent, load_schema
from stream_app.codecs.repartition import FrontierMarker, RoutedRun, decode, encode_frontier, encode_runs
from stream_app.core.records import RawRecord
from stream_app.core.windows import FileKey
from stream_app.pipeline.memory import MemoryStateStore
from stream_app.pipeline.wiring import build_pipeline, build_routing
from stream_app.replay.run import LoopbackSender, run_window_records
from stream_app.resources import AVRO_DIR
from stream_app.sinks.local import LocalSink
from stream_app.tools.demo import matched_records
from tests.helpers import CollectingPublisher, settings_for

SCHEMA = load_schema(AVRO_DIR / "matched_record.avsc")
H = 3_600_000
WINDOW_SCOPE = {
    "fileScope": "window",
    "fileNameTemplate": "F_{{ window_start | ts('%Y%m%dT%H%M') }}_{{ part }}.txt",
}


def partitioned(count: int, partitions: int, seed: int = 3, span_hours: float = 5.0) -> list[list[RawRecord]]:
    """Records spread over partitions, each partition in offset order (event times interleave)."""
    rng = random.Random(seed)
    out: list[list[RawRecord]] = [[] for _ in range(partitions)]
    for rec in matched_records(count, seed, span_hours):
        p = rng.randrange(partitions)
        out[p].append(RawRecord("in", p, len(out[p]), None, None, encode_confluent(1, SCHEMA, rec)))
    return out


def interleave(parts: list[list[RawRecord]], rng: random.Random) -> list[RawRecord]:
    """One arbitrary arrival order that keeps each partition's own order."""
    cursors = [0] * len(parts)
    out = []
    while any(c < len(p) for c, p in zip(cursors, parts)):
        p = rng.choice([i for i, part in enumerate(parts) if cursors[i] < len(part)])
        take = rng.randint(1, 50)
        out.extend(parts[p][cursors[p]:cursors[p] + take])
        cursors[p] += take
    return out


def window_settings(out: Path, partitions: int, **worker):
    settings = settings_for(out, **{**WINDOW_SCOPE, **worker})
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topicPartitions": partitions})})


def two_partition_stages(out: Path, sender_type: type[LoopbackSender] = LoopbackSender):
    """Settings for 2 input partitions, a publisher, a sender and a file stage writing to ``out``."""
    out.mkdir()
    settings = window_settings(out, 2)
    publisher, sender = CollectingPublisher(), sender_type(settings.repartition_topic)
    return settings, publisher, sender, build_pipeline(settings, MemoryStateStore(), publisher, sink=LocalSink(out))


def run(out: Path, raws: list[RawRecord], partitions: int, batch_size: int = 10_000, **worker):
    out.mkdir(parents=True, exist_ok=True)
    settings = window_settings(out, partitions, **worker)
    publisher, sender = CollectingPublisher(), LoopbackSender(settings.repartition_topic)
    routing = build_routing(settings, MemoryStateStore(), publisher, sender)
    files = build_pipeline(settings, MemoryStateStore(), publisher, sink=LocalSink(out))
    run_window_records(routing, files, sender, settings.input_partitions, raws, batch_size)
    return {p.name: p.read_bytes() for p in out.glob("F_*")}, publisher


def test_one_file_per_window_across_partitions_whatever_the_interleaving(tmp_path):
    parts = partitioned(900, 4)
    reference, pub = run(tmp_path / "ref", [r for p in parts for r in p], 4)
    # 5 hours of records in 1-hour windows: one file per window, not one per partition
    assert sorted(reference) == [n for n in sorted(reference)] and 5 <= len(reference) <= 6
    assert all(name.endswith("_0.txt") for name in reference)
    late = [reason for _, reason, _ in pub.dead]
    assert set(late) <= {"LATE_RECORD"}
    assert sum(b.count(b"\nD|") for b in reference.values()) + len(late) == 900
    for seed in range(3):
        order = interleave(parts, random.Random(seed))
        files, _ = run(tmp_path / f"run{seed}", order, 4, batch_size=random.Random(seed).randint(7, 300))
        assert files == reference
    created = pub.of_type("created")
    assert all({o["partition"] for o in e["offsets"]} == {0, 1, 2, 3} for e in created)  # each spans all
    assert all(e["file_key"].count("/") == 0 for e in created)


TIMED = {"recordTemplate": "D|{{ record.matched_at | ts('%Y%m%d%H%M%S') }}|{{ record.record_id }}\n",
         "footerTemplate": "T|{{ totals.count }}\n"}


def test_records_are_in_event_time_order_and_counts_cut_in_that_order(tmp_path):
    parts = partitioned(300, 3)
    files, pub = run(tmp_path, [r for p in reversed(parts) for r in p], 3, maxRecordsPerFile=40, **TIMED)
    assert all(e["records"] <= 40 for e in pub.of_type("created"))
    by_window: dict[str, list[str]] = {}
    for name in sorted(files):  # F_<window>_<part>.txt: parts in order
        lines = [line for line in files[name].decode().splitlines() if line.startswith("D|")]
        by_window.setdefault(name.rsplit("_", 1)[0], []).extend(line.split("|")[1] for line in lines)
    assert all(times == sorted(times) for times in by_window.values()) and len(by_window) >= 5


def test_the_same_records_give_the_same_files_whatever_the_partitioning(tmp_path):
    """Which partition a record was produced to changes neither a file's records nor its order
    (with a grace long enough that no partitioning makes a record late)."""
    records = [r for p in partitioned(500, 1) for r in p]
    grace = {"window": {"sizeMs": H, "graceMs": 24 * H}}
    reference, _ = run(tmp_path / "one", records, 1, maxRecordsPerFile=70, **TIMED, **grace)
    for partitions in (3, 4):
        rng = random.Random(partitions)
        spread: list[list[RawRecord]] = [[] for _ in range(partitions)]
        for r in records:
            p = rng.randrange(partitions)
            spread[p].append(RawRecord("in", p, len(spread[p]), None, None, r.value))
        files, _ = run(tmp_path / f"p{partitions}", interleave(spread, rng), partitions, maxRecordsPerFile=70,
                       **TIMED, **grace)
        assert files == reference


def test_a_window_waits_for_every_partition(tmp_path):
    """Partition 1 has not closed the first window yet: no file, whatever partition 0 says."""
    settings = window_settings(tmp_path, 2)
    publisher, sender = CollectingPublisher(), LoopbackSender(settings.repartition_topic)
    routing = build_routing(settings, MemoryStateStore(), publisher, sender)
    files = build_pipeline(settings, MemoryStateStore(), publisher, sink=LocalSink(tmp_path))
    values = [encode_confluent(1, SCHEMA, r) for r in matched_records(40, 1, span_hours=3)]
    p0 = [RawRecord("in", 0, i, None, None, v) for i, v in enumerate(values)]
    routing.assign(settings.input_partitions, 0)
    routing.process(p0, 0)
    files.process_routed(sender.drain(), 0)
    assert files.pending_cuts() == [] and files.open_windows() >= 1
    # partition 1 gets one record late in the day: its watermark closes the first windows too
    routing.process([RawRecord("in", 1, 0, None, None, values[-1])], 0)
    files.process_routed(sender.drain(), 0)
    cuts = files.pending_cuts()
    assert cuts and all(c.key.partition is None for c in cuts)
    assert {tp for c in cuts for tp in c.source_ranges()} == {("in", 0)}


def test_duplicates_routed_again_after_a_crash_are_dropped(tmp_path):
    parts = partitioned(400, 2)
    reference, _ = run(tmp_path / "ref", [r for p in parts for r in p], 2)
    settings, publisher, sender, files = two_partition_stages(tmp_path / "dup")
    # a routing stage that crashed after sending the first half, before its checkpoint: a new
    # one (fresh state) routes everything again
    first = build_routing(settings, MemoryStateStore(), publisher, sender)
    first.assign(settings.input_partitions, 0)
    first.process([r for p in parts for r in p[: len(p) // 2]], 0)
    files.process_routed(sender.drain(), 0)
    raws = [r for p in parts for r in p]
    second = build_routing(settings, MemoryStateStore(), publisher, sender)
    run_window_records(second, files, sender, settings.input_partitions, raws)
    assert {p.name: p.read_bytes() for p in (tmp_path / "dup").glob("F_*")} == reference
    assert sum(c.duplicates for c in files._windowers.values()) > 0


def test_repartition_format_round_trips_and_splits_long_runs():
    key = FileKey(None, None, 0, H, (("currency", "EUR"),))
    records = [(i, 1000 + i, bytes([i % 256]) * 3000) for i in range(400)]
    payloads = list(encode_runs(key, ("in", 3), records))
    assert len(payloads) > 1 and all(len(p) < 600 * 1024 for p in payloads)
    decoded = [decode(p) for p in payloads]
    assert all(isinstance(d, RoutedRun) and d.key == key and d.source == ("in", 3) for d in decoded)
    assert [r for d in decoded for r in d.records] == records  # type: ignore[union-attr]
    assert decode(encode_frontier(("in", 1), 77, 5 * H)) == FrontierMarker(("in", 1), 77, 5 * H)
    with pytest.raises(ValueError, match="version"):
        decode(b"\x09\x00")


def test_streaming_append_gives_the_same_bytes_as_memory(tmp_path):
    parts = partitioned(700, 3)
    raws = [r for p in parts for r in p]
    reference, _ = run(tmp_path / "mem", raws, 3, maxRecordsPerFile=90)
    settings_kwargs = {"maxRecordsPerFile": 90, "streamingAppendEnabled": True}
    out = tmp_path / "stream"
    out.mkdir()
    settings = settings_for(out, **{**WINDOW_SCOPE, **settings_kwargs})
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topicPartitions": 3})})
    publisher, sender = CollectingPublisher(), LoopbackSender(settings.repartition_topic)
    routing = build_routing(settings, MemoryStateStore(), publisher, sender)
    spool = tmp_path / "spool"
    files = build_pipeline(settings, MemoryStateStore(), publisher, sink=LocalSink(out), spool_dir=spool)
    run_window_records(routing, files, sender, settings.input_partitions, interleave(parts, random.Random(9)), 50)
    assert {p.name: p.read_bytes() for p in out.glob("F_*")} == reference
    assert len(reference) > 5 and not [p for p in spool.rglob("*") if p.is_file()]  # spools gone


def repartition_log(settings, raws: list[RawRecord]) -> list[RawRecord]:
    """What the routing stage writes to the repartition topic for ``raws`` (then idle-closed)."""
    sender = LoopbackSender(settings.repartition_topic)
    routing = build_routing(settings, MemoryStateStore(), CollectingPublisher(), sender)
    routing.assign(settings.input_partitions, 0)
    log = []
    for start in range(0, len(raws), 97):
        routing.process(raws[start:start + 97], 0)
        log.extend(sender.drain())
    routing.announce(routing.close_idle(10**15, lambda tp: True))
    return log + sender.drain()


def test_a_file_stage_restarted_from_its_checkpoint_writes_the_same_files(tmp_path):
    """The file stage's checkpoint carries every input partition's frontier as of its offset: a
    new file stage that reads on from it (after a crash at any point) makes the same files."""
    from stream_app.replay.run import commit_due

    parts = partitioned(1200, 3)
    raws = interleave(parts, random.Random(4))
    reference, _ = run(tmp_path / "ref", raws, 3, maxRecordsPerFile=150)
    settings = settings_for(tmp_path, **{**WINDOW_SCOPE, "maxRecordsPerFile": 150})
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topicPartitions": 3})})
    publisher = CollectingPublisher()
    log = repartition_log(settings, raws)
    for crash_at in (len(log) // 5, len(log) // 2, 4 * len(log) // 5):
        out = tmp_path / f"crash{crash_at}"
        out.mkdir()
        state = MemoryStateStore()
        first = build_pipeline(settings, state, publisher, sink=LocalSink(out))
        for start in range(0, crash_at, 7):
            first.process_routed(log[start:min(start + 7, crash_at)], 0)
            commit_due(first, 0)
        # crash: a new file stage reads each repartition partition from its checkpoint
        second = build_pipeline(settings, state, publisher, sink=LocalSink(out))
        checkpoints = {tp: cp.offset for tp, cp in state.checkpoints.items()}
        remaining = [r for r in log if r.offset >= checkpoints.get((r.topic, r.partition), 0)]
        assert len(remaining) < len(log)
        for start in range(0, len(remaining), 11):
            second.process_routed(remaining[start:start + 11], 0)
            commit_due(second, 0)
        assert {p.name: p.read_bytes() for p in out.glob("F_*")} == reference, crash_at


def test_a_router_restored_from_its_checkpoint_keeps_an_idle_close():
    from stream_app.core.routing import Late, PartitionRouter
    from stream_app.core.windows import WindowAssigner, WindowPolicy

    policy = WindowPolicy(H, 0, 100, idle_timeout_ms=1000)
    assigner = WindowAssigner(policy, per_partition=False)
    router = PartitionRouter("in", 0, policy, assigner)
    router.idle_since(0)
    from stream_app.core.records import SourceRecord

    first = router.route(SourceRecord("in", 0, 0, 10, {}), 0)
    assert isinstance(first, FileKey) and router.frontier() == 0  # no window ends at or before 0
    assert router.close_idle(5 * H) and router.frontier() == 5 * H  # idle: windows ended by 5 h are closed
    restored = PartitionRouter("in", 0, policy, assigner, router.checkpoint())
    late = restored.route(SourceRecord("in", 0, 1, 2 * H + 5, {}), 6 * H)
    assert isinstance(late, Late) and restored.frontier() == 5 * H
    assert isinstance(restored.route(SourceRecord("in", 0, 2, 5 * H + 1, {}), 6 * H), FileKey)


def test_records_routed_again_while_a_closed_window_waits_to_be_written_are_dropped():
    """A routing stage that restarts sends a window's records again; when the file stage has
    already closed that window (every source's frontier passed it) but not yet written it, the
    copies are duplicates: they must not open the window a second time (which would write
    part 0 again with one source's records only)."""
    from stream_app.core.records import SourceRecord
    from stream_app.core.routing import WindowCollector
    from stream_app.core.windows import WindowPolicy

    policy = WindowPolicy(size_ms=H, grace_ms=0, max_records_per_file=100)
    sources = [("in", 0), ("in", 1)]
    collector = WindowCollector("rep", 0, policy, sources)
    key = FileKey(None, None, 0, H)

    def records(source: int, offsets: range) -> list[SourceRecord]:
        return [SourceRecord("in", source, o, o * 1000, {"amount": o}) for o in offsets]

    position = 0
    for source in (0, 1):
        collector.add_records(position, key, ("in", source), records(source, range(5)), 0)
        position += 1
    for source in (0, 1):
        collector.add_frontier(position, ("in", source), H)
        position += 1
    (cut,) = collector.pending_cuts()  # closed, waiting to be written
    assert cut.count == 10
    # source 0 routed again (its router restarted from an older checkpoint), then its frontier
    assert collector.add_records(position, key, ("in", 0), records(0, range(5)), 0) == []
    collector.add_frontier(position + 1, ("in", 0), H)
    collector.add_frontier(position + 2, ("in", 1), 2 * H)
    assert collector.pending_cuts() == [cut] and collector.open_windows == []
    assert collector.duplicates == 5


def run_partition_scope(out: Path, raws: list[RawRecord]):
    from stream_app.replay.run import run_records

    out.mkdir(parents=True)
    settings = settings_for(out, fileScope="partition",
                            fileNameTemplate="F_{{ partition }}_{{ window_start | ts('%Y%m%dT%H%M') }}_{{ part }}.txt")
    publisher = CollectingPublisher()
    run_records(build_pipeline(settings, MemoryStateStore(), publisher, sink=LocalSink(out)), raws)
    return {p.name: p.read_bytes() for p in out.glob("F_*")}, publisher


@pytest.mark.parametrize("scope", ["window", "partition"])
def test_an_event_time_far_ahead_of_the_watermark_is_a_dead_letter_and_moves_nothing(tmp_path, scope):
    """A record a year ahead of its partition (epoch micros read as millis look the same) would
    move the watermark past every open window and make each later record late."""
    values = list(matched_records(300, seed=5, span_hours=5))
    values[100] = {**values[100], "matched_at": values[100]["matched_at"].replace(year=2027)}
    raws = [RawRecord("in", 0, i, None, None, encode_confluent(1, SCHEMA, v)) for i, v in enumerate(values)]
    good = [r for i, r in enumerate(raws) if i != 100]
    renumbered = [RawRecord("in", 0, i, None, None, r.value) for i, r in enumerate(good)]
    if scope == "window":
        files, publisher = run(tmp_path / "bad", raws, 1)
        reference, _ = run(tmp_path / "ref", renumbered, 1)
    else:
        files, publisher = run_partition_scope(tmp_path / "bad", raws)
        reference, _ = run_partition_scope(tmp_path / "ref", renumbered)
    assert [(raw.offset, reason) for raw, reason, _ in publisher.dead] == [(100, "EVENT_TIME_OUT_OF_RANGE")]
    assert "maxFutureMs" in publisher.dead[0][2]
    # the same windows and records (offsets shift by one past the dead letter, so compare counts)
    assert sorted(files) == sorted(reference)
    assert sum(b.count(b"\nD|") for b in files.values()) == 299


class LosingSender(LoopbackSender):
    """A repartition producer that, from ``lose_after`` sends on, delivers nothing (a fatal
    producer error: what reached the topic is a prefix of what was sent)."""

    lose_after: int | None = None
    sent = 0

    def send(self, partition: int, key: bytes, value: bytes) -> None:
        self.sent += 1
        if self.lose_after is None or self.sent <= self.lose_after:
            super().send(partition, key, value)


def test_a_routing_stage_rewound_after_lost_repartition_records_writes_the_same_files(tmp_path):
    parts = partitioned(600, 2)
    reference, _ = run(tmp_path / "ref", [r for p in parts for r in p], 2)
    settings, publisher, sender, files = two_partition_stages(tmp_path / "out", LosingSender)
    routing = build_routing(settings, MemoryStateStore(), publisher, sender)
    routing.assign(settings.input_partitions, 0)
    thirds = [len(p) // 3 for p in parts]
    routing.process([r for p, t in zip(parts, thirds) for r in p[:t]], 0)
    files.process_routed(sender.drain(), 0)
    routing.advance_checkpoints()
    routing.confirm_checkpoints()
    # the second third: the producer fails part-way, the file stage sees only a prefix of it
    sender.lose_after = sender.sent + 5
    routing.process([r for p, t in zip(parts, thirds) for r in p[t:2 * t]], 0)
    files.process_routed(sender.drain(), 0)
    sender.lose_after = None
    seek = routing.rewind()
    assert seek == {("in", 0): thirds[0], ("in", 1): thirds[1]}
    # a batch fetched before the seek arrives first: dropped, not routed (the rebuilt routers
    # only announce their checkpoints' frontiers)
    routing.process([r for p, t in zip(parts, thirds) for r in p[2 * t:2 * t + 10]], 0)
    resent = sender.drain()
    assert resent and all(isinstance(decode(r.value), FrontierMarker) for r in resent)
    files.process_routed(resent, 0)
    run_window_records(routing, files, sender, settings.input_partitions,
                       [r for p, t in zip(parts, thirds) for r in p[t:]])
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("F_*")} == reference
    assert sum(c.duplicates for c in files._windowers.values()) > 0


def test_a_rewind_never_publishes_a_dead_letter_twice(tmp_path):
    """Dead letters published before a rewind are not published again by the re-read."""
    parts = partitioned(60, 2)
    bad = RawRecord("in", 0, parts[0][5].offset, None, None, b"\x00\x00\x00\x00\x63garbage")
    parts[0][5] = bad
    settings, publisher, sender, files = two_partition_stages(tmp_path / "out", LosingSender)
    routing = build_routing(settings, MemoryStateStore(), publisher, sender)
    routing.assign(settings.input_partitions, 0)
    routing.process([r for p in parts for r in p[:20]], 0)
    assert [raw.offset for raw, _, _ in publisher.dead] == [bad.offset]
    routing.rewind()
    routing.process([r for p in parts for r in p[:20]], 0)  # re-read from the checkpoints (none: from 0)
    routing.process([r for p in parts for r in p[20:]], 0)
    assert [raw.offset for raw, _, _ in publisher.dead] == [bad.offset]


def test_runs_never_grow_past_max_run_bytes_unless_one_record_alone_is_larger():
    from stream_app.codecs.repartition import MAX_RUN_BYTES, routed_record_bytes

    key = FileKey(None, None, 0, H, (("currency", "EUR"),))
    big = MAX_RUN_BYTES + 10
    records = [(0, 0, b"a" * 400_000), (1, 0, b"b" * big), (2, 0, b"c" * 100), (3, 0, b"d" * 200_000)]
    payloads = list(encode_runs(key, ("in", 3), records))
    assert [[r[0] for r in decode(p).records] for p in payloads] == [[0], [1], [2, 3]]  # type: ignore[union-attr]
    assert len(payloads[1]) + len(key.id.encode()) == routed_record_bytes(key, ("in", 3), big)
    assert all(len(p) <= MAX_RUN_BYTES for i, p in enumerate(payloads) if i != 1)


def test_a_record_the_repartition_topic_cannot_take_is_a_dead_letter_and_the_partition_flows(tmp_path):
    """The routing stage's limit follows input.maxRecordBytes (codecs/repartition.py); a record
    over it (here through a decoder with a higher limit) is TOO_LARGE_TO_ROUTE, decided before
    routing, and the records after it are routed."""
    import orjson

    from stream_app.codecs.json import JsonDecoder
    from stream_app.codecs.repartition import repartition_message_bytes
    from stream_app.pipeline.routing import RoutingStage
    from stream_app.pipeline.wiring import window_policy

    out = tmp_path / "out"
    out.mkdir()
    settings = window_settings(out, 1)
    publisher, sender = CollectingPublisher(), LoopbackSender(settings.repartition_topic)
    limit = repartition_message_bytes(1000)

    def value(rid: str, pad: int) -> bytes:
        return orjson.dumps({"record_id": rid, "matched_at": "2026-03-02T01:00:00Z", "amount": "1.00",
                             "currency": "EUR", "pad": "x" * pad})

    routing = RoutingStage(window_policy(settings), [], JsonDecoder("matched_at", ["amount"], 10 * limit), None,
                           MemoryStateStore(), publisher, sender, 4, max_record_bytes=1000)
    routing.assign([("in", 0)], 0)
    raws = [RawRecord("in", 0, i, None, None, value(f"r{i}", pad))
            for i, pad in enumerate([10, limit - 2000, limit, 10])]
    routing.process(raws, 0)
    assert [(raw.offset, reason) for raw, reason, _ in publisher.dead] == [(2, "TOO_LARGE_TO_ROUTE")]
    routed = [r for sent in sender.drain() if isinstance(run := decode(sent.value), RoutedRun) for r in run.records]
    assert [offset for offset, _, _ in routed] == [0, 1, 3]
    assert routing.position(("in", 0)) == 4


@pytest.mark.parametrize("damage", [b"\x09\x01junk", b"", "truncated-run"])
def test_a_damaged_repartition_record_halts_its_partition_only(tmp_path, damage):
    """A record the file stage cannot read (a damaged topic, a newer worker's format) halts its
    repartition partition at that offset, reported once; no crash, and the other partitions'
    windows are still written."""
    settings, publisher, sender, files = two_partition_stages(tmp_path / "out")
    routing = build_routing(settings, MemoryStateStore(), publisher, sender)
    routing.assign(settings.input_partitions, 0)
    routing.process([r for p in partitioned(300, 2) for r in p], 0)
    routed = sender.drain()
    target = routed[0].partition
    victim = next(i for i, r in enumerate(routed) if r.partition == target and isinstance(decode(r.value), RoutedRun))
    bad = routed[victim].value[:-3] if damage == "truncated-run" else damage
    raw = routed[victim]
    routed[victim] = RawRecord(raw.topic, raw.partition, raw.offset, None, raw.key, bad)
    files.process_routed(routed, 0)  # no raise
    tp = (raw.topic, raw.partition)
    assert list(files.damaged) == [tp]
    assert f"{raw.topic}/{raw.partition}@{raw.offset} cannot be read" in files.halted_reason
    # nothing of it from there on, so nothing is committed past it
    assert files.collector(tp).next_offset == (raw.offset if raw.offset else None)
    others = [r for r in routed if r.partition != target]
    assert others and files.collector((raw.topic, others[0].partition)).next_offset == others[-1].offset + 1
    files.revoke([tp])
    assert files.damaged == {}  # its new owner meets it again


def test_window_scope_pressure_moves_windows_to_disk_and_never_changes_a_file(tmp_path):
    """Business files with a buffer far below a window (backpressure after every batch): the
    largest open window goes to disk, and the files equal a run without pressure."""
    from stream_app.replay.run import END_OF_INPUT_MS, commit_due

    parts = partitioned(1200, 2)
    raws = interleave(parts, random.Random(5))
    reference, _ = run(tmp_path / "ref", raws, 2, maxRecordsPerFile=150)
    out = tmp_path / "out"
    out.mkdir()
    settings = window_settings(out, 2, maxRecordsPerFile=150).model_copy(update={"spoolDir": str(tmp_path / "spool")})
    spill = tmp_path / "spool" / "pressure~spill"
    publisher, sender = CollectingPublisher(), LoopbackSender(settings.repartition_topic)
    routing = build_routing(settings, MemoryStateStore(), publisher, sender)
    files = build_pipeline(settings, MemoryStateStore(), publisher, sink=LocalSink(out))
    routing.assign(settings.input_partitions, 0)
    spilled = 0
    for start in range(0, len(raws), 25):
        routing.process(raws[start:start + 25], 0)
        files.process_routed(sender.drain(), 0)
        while files.buffered_records >= 60:
            if not files.due_cuts(0):
                before = files.buffered_records
                assert files.relieve_pressure()
                spilled += before - files.buffered_records
            commit_due(files, 0)
        commit_due(files, 0)
    routing.announce(routing.close_idle(END_OF_INPUT_MS, lambda tp: True))
    files.process_routed(sender.drain(), END_OF_INPUT_MS)
    commit_due(files, END_OF_INPUT_MS)
    written = {p.name: p.read_bytes() for p in out.glob("F_*")}
    assert written == reference and spilled > 1000
    assert "pressure" not in {e["reason"] for e in publisher.events if e["event_type"] == "created"}
    assert spill.is_dir() and not list(spill.rglob("*.spill"))


DIRECTION = {"name": "direction", "expr": "if_(is_in(transaction_type, 'REFUND', 'REVERSAL'), 'DEBIT', 'CREDIT')"}
BY_DIRECTION = {
    "groupBy": [DIRECTION],
    "fileNameTemplate": "F_{{ window_start | ts('%Y%m%dT%H%M') }}_{{ group.direction }}_{{ part }}.txt",
    "recordTemplate": "D|{{ record.record_id }}|{{ record.transaction_type }}|{{ record.amount | money }}\n",
}


@pytest.mark.parametrize("streaming", [False, True])
def test_a_group_by_expression_gives_credit_only_and_debit_only_files(tmp_path, streaming):
    """``groupBy`` with a mapping expression: credit and debit files from the transaction type,
    with no code; every record in the file of its direction, the same bytes whatever the
    interleaving."""
    parts = partitioned(600, 3)
    files, pub = run(tmp_path / "ref", [r for p in parts for r in p], 3, streamingAppendEnabled=streaming,
                     **BY_DIRECTION)
    directions = {"CREDIT": set(), "DEBIT": set()}
    for name, body in files.items():
        direction = name.split("_")[2]
        types = {line.split("|")[2] for line in body.decode().splitlines() if line.startswith("D|")}
        directions[direction] |= types
    assert directions == {"CREDIT": {"PURCHASE", "CASH_ADVANCE"}, "DEBIT": {"REFUND", "REVERSAL"}}
    late = [reason for _, reason, _ in pub.dead]
    assert sum(b.count(b"\nD|") for b in files.values()) + len(late) == 600
    again, _ = run(tmp_path / "again", interleave(parts, random.Random(4)), 3, streamingAppendEnabled=streaming,
                   **BY_DIRECTION)
    assert again == files


BY_HALF_DAY = {"groupBy": [{"name": "half", "expr": "format_datetime(matched_at, '%p')"}],
               "fileNameTemplate": "F_{{ window_start | ts('%Y%m%dT%H%M') }}_{{ group.half }}_{{ part }}.txt"}


@pytest.mark.parametrize("worker", [BY_HALF_DAY, TIMED, {"maxRecordsPerFile": 70}],
                         ids=["grouped-by-time", "template-reads-time", "template"])
def test_the_routing_helper_builds_the_event_time_field_only_where_it_is_read(tmp_path, worker):
    """The routing stage's decode helper leaves the event-time field out of a record's value when
    nothing reads it but as the record's epoch ms (codecs/avro.py, ``time_as_millis``); a groupBy
    or a template that reads it gets it.  Either way the files, dead letters and journal events
    are those of decoding in the worker, whether the routed records are encoded or handed over."""
    raws = _with_bad_records(partitioned(400, 3, span_hours=30))
    reference = _loopback_outputs(tmp_path / "in-worker", raws, worker, decode_process=False, hands_over=False)
    assert reference[0] and len({name.split("_")[2] for name in reference[0]}) == (2 if worker is BY_HALF_DAY else 1)
    for hands_over in (False, True):
        assert _loopback_outputs(tmp_path / f"helper-{hands_over}", raws, worker, decode_process=True,
                                 hands_over=hands_over) == reference


def test_group_by_expressions_are_checked_when_the_config_loads(tmp_path):
    from stream_app.config import ConfigError

    with pytest.raises(ConfigError, match=r"worker.groupBy.0.*expr.*not a valid expression"):
        settings_for(tmp_path, groupBy=[{"name": "direction", "expr": "if_(("}])
    with pytest.raises(ConfigError, match="member names must be unique"):
        settings_for(tmp_path, groupBy=["currency", {"name": "currency", "expr": "currency"}])
    settings = settings_for(tmp_path, groupBy=["acquirer_id", DIRECTION])
    assert settings.worker.group_names == ["acquirer_id", "direction"]
    assert settings.worker.group_fields == ["acquirer_id", "transaction_type"]


NO_TEMPLATES = {"headerTemplate": "", "recordTemplate": None, "footerTemplate": ""}
XML = {**NO_TEMPLATES, "mode": "structured", "schema": {"id": "pcs-clearing", "version": "1.1.0"},
       "fileNameTemplate": "F_{{ window_start | ts('%Y%m%dT%H%M') }}_{{ part }}.xml", "maxRecordsPerFile": 60}
CSV_DEAD_LETTERS = {**NO_TEMPLATES, "mode": "structured", "schema": {"id": "settlement-report", "version": "1.1.0"},
                    "fileNameTemplate": "F_{{ window_start | ts('%Y%m%dT%H%M') }}_{{ part }}.csv"}


def _with_bad_records(parts: list[list[RawRecord]]) -> list[RawRecord]:
    """The partitions' records interleaved, with an invalid record and a damaged one among them."""
    broken = {**next(matched_records(1, 5)), "currency": "EURO"}
    parts[1].insert(7, RawRecord("in", 1, 7, None, None, encode_confluent(1, SCHEMA, broken)))
    parts[2].insert(3, RawRecord("in", 2, 3, None, None, b"\x00garbage"))
    for p, part in enumerate(parts):
        parts[p] = [RawRecord("in", p, i, None, None, r.value) for i, r in enumerate(part)]
    return interleave(parts, random.Random(4))


def _loopback_outputs(out: Path, raws: list[RawRecord], worker: dict, decode_process: bool,
                      hands_over: bool) -> tuple[dict[str, bytes], list, list]:
    """Files, dead letters and journal events of one window-scope run through replay's loopback."""
    out.mkdir()
    settings = window_settings(out, 3, **worker)
    settings = settings.model_copy(update={"input": settings.input.model_copy(update={"decodeProcess": decode_process})})
    publisher, sender = CollectingPublisher(), LoopbackSender(settings.repartition_topic, hands_over=hands_over)
    routing = build_routing(settings, MemoryStateStore(), publisher, sender)
    files = build_pipeline(settings, MemoryStateStore(), publisher, sink=LocalSink(out))
    run_window_records(routing, files, sender, settings.input_partitions, raws, 90)
    events = [{k: v for k, v in e.items() if k not in ("event_id", "occurred_at", "location", "url")}
              for e in publisher.events]
    dead = [(r.partition, r.offset, reason, detail) for r, reason, detail in publisher.dead]
    return {p.name: p.read_bytes() for p in out.glob("F_*")}, dead, events


@pytest.mark.parametrize("decode_process", [True, False], ids=["helper", "in-process"])
@pytest.mark.parametrize("worker", [TIMED, {"maxRecordsPerFile": 70}, XML, CSV_DEAD_LETTERS],
                         ids=["template-reads-time", "template", "xml", "csv-dead-letters"])
def test_routed_records_handed_over_give_what_the_encoded_repartition_records_give(tmp_path, worker, decode_process):
    """Replay hands its routed records to the file stage instead of encoding them into repartition
    records and decoding them again (replay/run.py, ``LoopbackSender.hands_over``): the same
    files, dead letters and journal events as the encoded records the live worker reads."""
    raws = _with_bad_records(partitioned(400, 3, span_hours=4))
    encoded = _loopback_outputs(tmp_path / "encoded", raws, worker, decode_process, hands_over=False)
    handed = _loopback_outputs(tmp_path / "handed", raws, worker, decode_process, hands_over=True)
    assert encoded[0] and encoded == handed
    assert {reason for _, _, reason, _ in handed[1]} >= {"UNKNOWN_SCHEMA_ID"} | (
        {"VALIDATION_FAILED"} if worker is CSV_DEAD_LETTERS else set())
