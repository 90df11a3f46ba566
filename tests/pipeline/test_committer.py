"""The committer owns the order of the durable steps, and both drivers run it.

A recording ``Durability`` (with a state store and a publisher that note what they are given)
pins the order for the live runtime and for replay: the file, its journal events, the events
delivered, the facts, their delivery, the checkpoint, its delivery, and only then the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from stream_app.config import parse_config
from stream_app.core.windows import TP, Checkpoint, FileKey, WindowFacts
from stream_app.live.app import create_app
from stream_app.pipeline.memory import MemoryStateStore
from stream_app.pipeline.wiring import build_pipeline, build_routing
from stream_app.replay.run import LoopbackSender, run_records, run_window_records
from tests.helpers import config_dict
from tests.pipeline.test_files import raws

T = TypeVar("T")


class RecordingDurability:
    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    def writing(self) -> contextlib.AbstractAsyncContextManager[object]:
        return contextlib.nullcontext()

    async def run_write(self, write: Callable[[], T]) -> T:
        self.steps.append("write")
        return write()

    async def events_delivered(self) -> None:
        self.steps.append("events delivered")

    async def state_delivered(self) -> None:
        self.steps.append("state delivered")

    async def routed_delivered(self) -> None:
        self.steps.append("routed delivered")

    async def commit_offsets(self) -> None:
        self.steps.append("commit")


class RecordingStore(MemoryStateStore):
    def __init__(self, steps: list[str]) -> None:
        super().__init__()
        self.steps = steps

    def put_facts(self, key: FileKey, facts: WindowFacts) -> None:
        self.steps.append("facts")
        super().put_facts(key, facts)

    def put_checkpoint(self, tp: TP, checkpoint: Checkpoint) -> None:
        self.steps.append(f"checkpoint {tp[0]}")
        super().put_checkpoint(tp, checkpoint)


class RecordingPublisher:
    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    def journal(self, event: dict, partition_key: str) -> None:
        self.steps.append(f"event {event['event_type']}")

    def dead_letter(self, raw: Any, reason: str, detail: str) -> None:
        self.steps.append("dead letter")


# One full part: written, its `created` event, the round's summary event; then the durable steps.
ONE_FILE = ["write", "event created", "event flush-summary", "events delivered", "facts", "state delivered",
            "checkpoint in", "state delivered", "commit"]


def test_replay_runs_the_durable_steps_in_the_committer_s_order(tmp_path):
    steps: list[str] = []
    settings = parse_config(config_dict(tmp_path, maxRecordsPerFile=10, window={"sizeMs": 86_400_000}))
    files = build_pipeline(settings, RecordingStore(steps), RecordingPublisher(steps))
    run_records(files, raws(10), batch_size=10, durability=RecordingDurability(steps))
    first_file = steps.index("write")
    assert steps[first_file:first_file + len(ONE_FILE)] == ONE_FILE


def test_the_live_runtime_runs_the_durable_steps_in_the_committer_s_order(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    data = config_dict(out, maxRecordsPerFile=10, window={"sizeMs": 86_400_000})
    data.update(dataDir=str(tmp_path / "faust"))
    app, runtime = create_app(parse_config(data))
    steps: list[str] = []
    store = RecordingStore(steps)
    for name in ("put_facts", "put_checkpoint", "get_facts", "get_checkpoint"):
        monkeypatch.setattr(runtime.state, name, getattr(store, name))
    monkeypatch.setattr(runtime.publisher, "journal", RecordingPublisher(steps).journal)
    monkeypatch.setattr(runtime.committer, "durability", RecordingDurability(steps))
    monkeypatch.setattr(runtime.pipeline, "confirm_owner", lambda tp, name: None)  # no broker to ask
    monkeypatch.setattr(runtime.lost, "cluster", None)
    runtime.pipeline.process(raws(10), 0)
    steps.clear()  # the `opened` event of the batch
    asyncio.run(runtime._commit_round())
    assert steps == ONE_FILE
    assert runtime.commit_gate("in", 0) == 10  # what the consumer may commit: the confirmed checkpoint


def test_business_files_route_durably_before_the_file_stage_reads_the_close(tmp_path):
    """Window scope in replay: the routing stage's checkpoint is delivered before the commit, and
    an idle close is announced only after it; the file written from it follows the same order."""
    steps: list[str] = []
    settings = parse_config(config_dict(tmp_path, fileScope="window", maxRecordsPerFile=1000, fileNameTemplate=
                                        "F_{{ window_start | ts('%Y%m%d') }}_{{ part }}.txt",
                                        window={"sizeMs": 86_400_000}))
    store, publisher = RecordingStore(steps), RecordingPublisher(steps)
    sender = LoopbackSender(settings.repartition_topic)
    routing = build_routing(settings, store, publisher, sender)
    files = build_pipeline(settings, store, publisher, sources=(("in", 0),))
    run_window_records(routing, files, sender, [("in", 0)], raws(10), durability=RecordingDurability(steps))
    # the idle close at the end of the input: announced only once its checkpoint is delivered
    assert contains(steps, ["routed delivered", "events delivered", "checkpoint in", "state delivered",
                            "routed delivered", "commit"])
    closed = steps.index("event closed")  # the file stage read the announcement
    topic = settings.repartition_topic
    assert steps[closed + 1:closed + 9] == ["write", "event created", "event flush-summary", "events delivered",
                                            "facts", "state delivered", f"checkpoint {topic}", "state delivered"]
    assert steps[-1] == "commit"


def contains(steps: list[str], run: list[str]) -> bool:
    return any(steps[i:i + len(run)] == run for i in range(len(steps)))
