"""maxAmountPerFile and maxBytesPerFile through the pipeline (the greedy rule: core/limits.py),
both scopes and both assembly modes: every part within its limits (recomputed here with Decimal from the records in it), its
own counts and totals in its header and trailer, the same parts after a restart and in replay."""

from __future__ import annotations

import random
from collections import defaultdict
from decimal import Decimal

import pytest

from stream_app.config import ConfigError
from stream_app.core.windows import Checkpoint
from stream_app.pipeline.memory import MemoryStateStore
from stream_app.pipeline.wiring import build_pipeline
from stream_app.replay.run import commit_due, run_records
from stream_app.sinks.base import SinkError
from stream_app.sinks.local import LocalSink
from tests.helpers import CollectingPublisher, settings_for
from tests.pipeline.test_business_files import interleave, partitioned, run
from tests.pipeline.test_files import pipeline, raws

ONE_WINDOW = {"window": {"sizeMs": 86_400_000}}
# the header names the part's record count, the footer its count and total per currency
LINES = {"recordTemplate": "D|{{ seq }}|{{ record.record_id }}|{{ record.amount | money }}|{{ record.currency }}\n"}
LIMIT = Decimal("25000.00")


def check_parts(files: dict[str, bytes], limit: Decimal | None = None, max_bytes: int | None = None) -> int:
    """Each file: its detail lines within the limits, its header count and trailer totals its own
    (recomputed from its lines with Decimal); returns the number of records."""
    records = 0
    for name, body in files.items():
        lines = body.decode().splitlines()
        detail = [line.split("|") for line in lines if line.startswith("D|")]
        records += len(detail)
        header, trailer = lines[0].split("|"), lines[-1].split("|")
        assert int(header[2]) == len(detail) == int(trailer[1]), name
        totals: dict[str, Decimal] = defaultdict(Decimal)
        absolute: dict[str, Decimal] = defaultdict(Decimal)
        for _, _, _, amount, currency in detail:
            totals[currency] += Decimal(amount)
            absolute[currency] += abs(Decimal(amount))
        assert dict(pair.split("=") for pair in trailer[2:]) == {c: f"{t:.2f}" for c, t in sorted(totals.items())}
        if limit is not None and len(detail) > 1:
            assert max(absolute.values()) <= limit, (name, dict(absolute))
        if max_bytes is not None:
            assert len(body) <= max_bytes, (name, len(body))
    return records


@pytest.mark.parametrize("streaming", [False, True])
def test_partition_scope_cuts_by_amount_and_a_restart_cuts_the_same(tmp_path, streaming):
    spool = {"spool": tmp_path / "spool"} if streaming else {}
    worker = {**ONE_WINDOW, **LINES, "maxAmountPerFile": str(LIMIT), "maxRecordsPerFile": 1000,
              "streamingAppendEnabled": streaming}
    (tmp_path / "ref").mkdir()
    p, pub, _ = pipeline(tmp_path / "ref", **spool, **worker)
    run_records(p, raws(400))
    files = {f.name: f.read_bytes() for f in (tmp_path / "ref").glob("F_*")}
    assert len(files) >= 4 and check_parts(files, LIMIT) == 400
    reasons = [e["reason"] for e in pub.of_type("created")]
    assert reasons.count("amount") == len(files) - 1  # every part but the last ended at the limit
    # a crash after some parts: the restart reads on from the checkpoint and cuts the same parts
    (tmp_path / "crashed").mkdir()
    first, _, state = pipeline(tmp_path / "crashed", **spool, **worker)
    for start in range(0, 230, 23):
        first.process(raws(400)[start:start + 23], 0)
        commit_due(first, 0)
    assert 0 < len(list((tmp_path / "crashed").glob("F_*"))) < len(files)
    restarted, _, _ = pipeline(tmp_path / "crashed", state=state, **spool, **worker)
    offset = state.checkpoints.get(("in", 0), Checkpoint(0, None)).offset
    run_records(restarted, raws(400)[offset:])
    assert {f.name: f.read_bytes() for f in (tmp_path / "crashed").glob("F_*")} == files


@pytest.mark.parametrize("streaming", [False, True])
def test_business_files_cut_by_amount_and_bytes_in_file_order_whatever_the_interleaving(tmp_path, streaming):
    """Window scope; streamed, the parts are found by one read of the window's merged spool."""
    parts = partitioned(900, 3)
    limits = {**LINES, "maxAmountPerFile": "30000", "maxBytesPerFile": 2048, "frameReserveBytes": 200,
              "headerTemplate": "H|{{ file_key }}|{{ record_count }}\n", "streamingAppendEnabled": streaming}
    files, pub = run(tmp_path / "ref", [r for p in parts for r in p], 3, **limits)
    late = [reason for _, reason, _ in pub.dead]
    assert check_parts(files, Decimal("30000"), 2048) + len(late) == 900
    reasons = {e["reason"] for e in pub.of_type("created")}
    assert {"amount", "size"} <= reasons
    again, _ = run(tmp_path / "again", interleave(parts, random.Random(2)), 3, batch_size=37, **limits)
    assert again == files
    if streaming:  # the same parts as held in memory
        memory, _ = run(tmp_path / "memory", [r for p in parts for r in p], 3,
                        **{**limits, "streamingAppendEnabled": False})
        assert memory == files


class StopsAfter(LocalSink):
    """A sink that takes ``n`` files, then fails every write (the process then dies)."""

    def __init__(self, target, n: int) -> None:
        super().__init__(target)
        self.left = n

    def write(self, name, chunks, before_publish=None):
        if self.left == 0:
            raise SinkError(f"writing {name} failed: Input/output error", "EIO")
        self.left -= 1
        return super().write(name, chunks, before_publish)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_file_stage_restarted_mid_window_cuts_the_remaining_parts_as_the_first_run(tmp_path, streaming):
    """A crash after some parts of a window are written: the new file stage reads on from its
    checkpoint, skips what the facts say is written, and cuts the rest where the first run did."""
    from tests.pipeline.test_business_files import repartition_log, window_settings

    limits = {**LINES, "maxAmountPerFile": "30000", "maxBytesPerFile": 2048, "frameReserveBytes": 200,
              "streamingAppendEnabled": streaming, "window": {"sizeMs": 6 * 3_600_000}}
    raws_in = interleave(partitioned(900, 3), random.Random(5))
    reference, _ = run(tmp_path / "ref", raws_in, 3, **limits)
    assert len(reference) >= 8
    settings = window_settings(tmp_path, 3, **limits)
    publisher = CollectingPublisher()
    log = repartition_log(settings, raws_in)
    out = tmp_path / "crashed"
    out.mkdir()
    state = MemoryStateStore()
    first = build_pipeline(settings, state, publisher, sink=StopsAfter(out, 3))
    for start in range(0, len(log), 7):  # the fourth write fails: the process dies with a window half written
        first.process_routed(log[start:start + 7], 0)
        commit_due(first, 0)
    written = {p.name for p in out.glob("F_*")}
    assert len(written) == 3
    window = sorted(written)[-1].rsplit("_", 1)[0]
    assert sum(n.startswith(window) for n in reference) > sum(n.startswith(window) for n in written), \
        "a window is only partly written"
    second = build_pipeline(settings, state, publisher, sink=LocalSink(out))
    checkpoints = {tp: cp.offset for tp, cp in state.checkpoints.items()}
    for start in range(0, len(log), 11):
        batch = [r for r in log[start:start + 11] if r.offset >= checkpoints.get((r.topic, r.partition), 0)]
        second.process_routed(batch, 0)
        commit_due(second, 0)
    assert {p.name: p.read_bytes() for p in out.glob("F_*")} == reference


def test_structured_files_cut_by_bytes_keep_their_trailer_checks(tmp_path):
    """fixed-clearing 1.1.0 recounts its detail lines into the trailer (TRAILER_CHECK_FAILED
    otherwise): each part cut by bytes carries its own count and stays within the limit."""
    worker = {**ONE_WINDOW, "mode": "structured", "schema": {"id": "fixed-clearing", "version": "1.1.0"},
              "headerTemplate": "", "recordTemplate": None, "footerTemplate": "",
              "fileNameTemplate": "FX_{{ window_start | ts('%Y%m%d') }}_{{ part }}.txt",
              "maxBytesPerFile": 8192, "frameReserveBytes": 1024,
              "parties": {"senderId": "ACQ0000001", "receiverId": "SCHEME0001"}}
    settings = settings_for(tmp_path, **worker)
    out = tmp_path / "out"
    out.mkdir()
    publisher = CollectingPublisher()
    p = build_pipeline(settings, MemoryStateStore(), publisher, sink=LocalSink(out))
    run_records(p, raws(300))
    assert not publisher.of_type("finalize-failed"), publisher.of_type("finalize-failed")
    files = sorted(out.glob("FX_*"))
    assert len(files) >= 3 and all(f.stat().st_size <= 8192 for f in files)
    created = publisher.of_type("created")
    assert sum(e["records"] for e in created) == 300 and {e["reason"] for e in created[:-1]} == {"size"}


@pytest.mark.parametrize("streaming", [False, True])
def test_structured_business_files_cut_by_amount(tmp_path, streaming):
    """A routed record keeps only the value fields the limits read beside its row
    (``Projection.carried``): the amount limit still cuts each XML part within it."""
    from lxml import etree

    from tests.pipeline.test_business_files import XML

    worker = {**XML, "maxRecordsPerFile": 1000, "maxAmountPerFile": "30000", "streamingAppendEnabled": streaming}
    files, pub = run(tmp_path / "out", [r for p in partitioned(600, 3) for r in p], 3, **worker)
    ns = {"c": "urn:example:pcs:clearing:1.1"}
    records = 0
    for name, body in files.items():
        per_currency: dict[str, Decimal] = defaultdict(Decimal)
        transactions = etree.fromstring(body).findall(".//c:Transaction", ns)
        for transaction in transactions:
            per_currency[transaction.findtext("c:Currency", namespaces=ns)] += \
                Decimal(transaction.findtext("c:Amount", namespaces=ns))
        records += len(transactions)
        assert len(transactions) == 1 or max(per_currency.values()) <= Decimal("30000"), (name, dict(per_currency))
    assert records + len(pub.dead) == 600
    assert "amount" in {e["reason"] for e in pub.of_type("created")}


def test_a_frame_larger_than_its_reserve_is_file_too_large_never_a_larger_file(tmp_path):
    p, pub, state = pipeline(tmp_path, **ONE_WINDOW, **LINES, maxBytesPerFile=2048, frameReserveBytes=1,
                             headerTemplate="H|{{ record_count }}|" + "x" * 300 + "\n")
    p.process(raws(100), 0)
    commit_due(p, 0)
    commit_due(p, 10**13)
    failed = pub.of_type("finalize-failed") + pub.of_type("write-failed")
    assert failed and failed[0]["error_class"] == "FILE_TOO_LARGE" and failed[0]["terminal"]
    assert not list(tmp_path.glob("F_*"))
    checkpoint = state.get_checkpoint(("in", 0))
    assert checkpoint is None or checkpoint.offset == 0  # nothing committed past the refused part


def test_limit_settings_are_checked_when_the_config_loads(tmp_path):
    with pytest.raises(ConfigError, match="maxAmountPerFile.*as a string"):
        settings_for(tmp_path, maxAmountPerFile=1000.5)
    with pytest.raises(ConfigError, match="maxAmountPerFile.*greater than 0"):
        settings_for(tmp_path, maxAmountPerFile="-1")
    with pytest.raises(ConfigError, match="must be larger than worker.frameReserveBytes"):
        settings_for(tmp_path, maxBytesPerFile=2048, frameReserveBytes=4096)
    assert settings_for(tmp_path, maxAmountPerFile="1000000.50").worker.maxAmountPerFile == Decimal("1000000.50")


def test_max_bytes_refuses_a_pack_whose_body_is_grouped(tmp_path):
    from stream_app.pipeline.wiring import window_policy

    settings = settings_for(tmp_path, mode="structured", schema={"id": "net-positions", "version": "1.0.0"},
                            headerTemplate="", recordTemplate=None, footerTemplate="",
                            fileNameTemplate="NP_{{ window_start | ts('%Y%m%d') }}_{{ part }}.csv",
                            maxBytesPerFile=8192)
    with pytest.raises(ConfigError, match="worker.maxBytesPerFile: pack net-positions groups its body"):
        window_policy(settings)

