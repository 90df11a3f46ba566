"""The pipeline's ``StateStore`` on Faust tables, with changelog sends the durable steps await."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import faust

from stream_app.config import AppSettings
from stream_app.core.routing import repartition_partition
from stream_app.core.windows import TP, Checkpoint, FileKey, WindowFacts
from stream_app.live.events import RETRY_INITIAL_S, wait_to_redeliver

log = logging.getLogger(__name__)


class FaustStateStore:
    """Window facts in a Faust windowed table keyed by file window; checkpoints in a plain table.

    Writes name their changelog partition explicitly (the source partition of the file key), so
    they also work from the timer, outside stream iteration.  Faust recovers both tables from
    their changelogs before the agent sees records of a newly assigned partition.
    """

    def __init__(self, app: faust.App, settings: AppSettings) -> None:
        self.in_flight = InFlight()
        partitions = settings.kafka.topicPartitions
        size_s = settings.worker.window.sizeMs / 1000
        self._window_scope = settings.worker.fileScope == "window"
        self._repartition_topic = settings.repartition_topic
        self._repartition_partitions = settings.kafka.repartition_partitions
        if self._window_scope:
            # Co-partitioned with the repartition topic (Faust's assignor groups topics by partition
            # count): the owner of a repartition partition owns the facts and checkpoint of its keys.
            rp = self._repartition_partitions
            self._windows = app.Table("business-windows", default=None, partitions=rp).tumbling(size_s).table
            self._file_checkpoints = app.Table("file-checkpoints", default=None, partitions=rp)
            # Co-partitioned with the input topics: the routing stage's checkpoint per input partition.
            self._checkpoints = app.Table("routing-checkpoints", default=None, partitions=partitions)
        else:
            self._windows = app.Table("file-windows", default=None, partitions=partitions).tumbling(size_s).table
            self._checkpoints = app.Table("partition-checkpoints", default=None, partitions=partitions)
            self._file_checkpoints = self._checkpoints

    def _facts_partition(self, key: FileKey) -> int:
        if self._window_scope:
            return repartition_partition(key, self._repartition_partitions)
        assert key.partition is not None
        return key.partition

    def _checkpoint_table(self, tp: TP) -> Any:
        return self._file_checkpoints if tp[0] == self._repartition_topic else self._checkpoints

    def _window_key(self, key: FileKey) -> tuple:
        window = self._windows.window
        assert window is not None  # a windowed table
        window_range = window.ranges(key.window_start_ms / 1000)[0]
        return (key.id, tuple(window_range))

    def get_facts(self, key: FileKey) -> WindowFacts | None:
        data = self._windows.data.get(self._window_key(key))
        return WindowFacts.from_json(data) if data is not None else None

    def put_facts(self, key: FileKey, facts: WindowFacts) -> None:
        table_key = self._window_key(key)
        value = facts.to_json()
        self._windows.data[table_key] = value
        partition = self._facts_partition(key)
        self.in_flight.add(self._windows.send_changelog(partition, table_key, value),
                           lambda: self._windows.send_changelog(partition, table_key,
                                                                self._windows.data.get(table_key, value)))

    @staticmethod
    def _tp_key(tp: TP) -> str:
        return f"{tp[0]}:{tp[1]}"

    def get_checkpoint(self, tp: TP) -> Checkpoint | None:
        data = self._checkpoint_table(tp).data.get(self._tp_key(tp))
        return Checkpoint.from_json(data) if data is not None else None

    def put_checkpoint(self, tp: TP, checkpoint: Checkpoint) -> None:
        key, value = self._tp_key(tp), checkpoint.to_json()
        table = self._checkpoint_table(tp)
        table.data[key] = value
        self.in_flight.add(table.send_changelog(tp[1], key, value),
                           lambda: table.send_changelog(tp[1], key, table.data.get(key, value)))

    async def delivered(self) -> None:
        await self.in_flight.delivered()


class FaustOutboxStore:
    """The delivery outbox (``pipeline/outbox.py``) in a plain table co-partitioned with the file
    stage, so the owner of a file's partition recovers its pending deliveries.  Its changelog
    sends join the state store's, which the committer's step 3 awaits."""

    def __init__(self, app: faust.App, settings: AppSettings, state: FaustStateStore) -> None:
        partitions = (settings.kafka.repartition_partitions if settings.worker.fileScope == "window"
                      else settings.kafka.topicPartitions)
        self._table = app.Table("delivery-outbox", default=None, partitions=partitions)
        self._in_flight = state.in_flight

    def put_delivery(self, owner: TP, key: str, value: str | None) -> None:
        table = self._table
        if value is None:
            table.data.pop(key, None)
        else:
            table.data[key] = value
        # a removal is a tombstone: recovery drops the key
        self._in_flight.add(table.send_changelog(owner[1], key, value),
                            lambda: table.send_changelog(owner[1], key, table.data.get(key)))

    def stored_deliveries(self) -> list[str]:
        return [value for value in self._table.data.values() if value]


class InFlight:
    """Changelog sends not yet confirmed by the broker; ``delivered()`` waits for all of them.

    A send that fails is sent again — the table's value for its key as it is then, which is
    the one the changelog must end with — with a doubling backoff, never raised: a changelog
    delivery failure is a wait (``undeliverable`` says why), not a crash.
    """

    def __init__(self) -> None:
        self._sends: list[tuple[asyncio.Future, Callable[[], asyncio.Future]]] = []
        self.undeliverable: str | None = None

    def add(self, future: asyncio.Future, resend: Callable[[], asyncio.Future]) -> None:
        self._sends.append((future, resend))
        if len(self._sends) >= 10_000:  # many updates between two durable steps
            self._sends = [(f, r) for f, r in self._sends if not f.done() or f.cancelled() or f.exception()]

    async def delivered(self) -> None:
        backoff = RETRY_INITIAL_S
        while True:
            sends, self._sends = self._sends, []
            results = await asyncio.gather(*[f for f, _ in sends], return_exceptions=True)
            failed = [(resend, result) for (_, resend), result in zip(sends, results) if isinstance(result, BaseException)]
            if not failed:
                self.undeliverable = None
                return
            self.undeliverable = f"{len(failed)} changelog record(s) not delivered: {failed[0][1]!r}"
            backoff = await wait_to_redeliver(self.undeliverable, backoff)
            for resend, _ in failed:
                self.add(resend(), resend)
