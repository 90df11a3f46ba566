"""Each part's state on its way to durable: pending → written → journaled → durable, with
back-off after a transient failure and a halt after a terminal one."""

from __future__ import annotations

from stream_app.core.windows import FileCut, FileKey
from stream_app.ops.metrics import Metrics
from stream_app.pipeline.journal import Journal
from stream_app.pipeline.parts import PartStates, Step
from stream_app.pipeline.writer import WriteOutcome
from tests.helpers import CollectingPublisher

KEY = FileKey("in", 0, 0, 3_600_000, ())
OTHER = FileKey("in", 1, 0, 3_600_000, ())


def cut(key: FileKey = KEY, part: int = 0) -> FileCut:
    return FileCut(key, part, [], "count", False, 0, 0, [])


def states() -> tuple[PartStates, CollectingPublisher]:
    publisher = CollectingPublisher()
    return PartStates(Journal("w1"), publisher, Metrics(), retry_initial_ms=100, retry_max_ms=1000), publisher


def test_a_part_is_written_then_journaled_then_forgotten_once_durable():
    parts, _ = states()
    first, second = cut(part=0), cut(part=1)
    assert parts.step(first) is Step.PENDING
    parts.written(first)
    parts.journaled()  # the events of what was written so far are delivered
    parts.written(second)  # written after that delivery: still waits for its own
    assert (parts.step(first), parts.step(second)) == (Step.JOURNALED, Step.WRITTEN)
    parts.durable()
    assert (parts.step(first), parts.step(second)) == (Step.PENDING, Step.WRITTEN)  # forgotten; not yet


def test_a_transient_failure_backs_off_and_a_terminal_one_halts_until_a_restart():
    parts, publisher = states()
    parts.failed(cut(), WriteOutcome(name="F", error_class="EIO", error_message="disk"), now_wall_ms=1_000)
    assert parts.failing and parts.backing_off(cut(), 1_000) and not parts.backing_off(cut(), 2_001)
    assert parts.step(cut()) is Step.PENDING and parts.halted == {}
    parts.failed(cut(OTHER), WriteOutcome(name="G", error_class="FILE_CONFLICT", error_message="differs",
                                          transient=False), now_wall_ms=1_000)
    assert parts.step(cut(OTHER)) is Step.HALTED and parts.backing_off(cut(OTHER), 2**61)
    assert parts.halted == {(OTHER, 0): "differs"}
    assert [e["terminal"] for e in publisher.of_type("write-failed")] == [False, True]
    parts.forget(("in", 1), lambda key: (key.topic, key.partition))  # its new owner meets it again
    assert parts.halted == {} and parts.failing  # the other part still backs off
