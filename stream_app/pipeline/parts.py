"""The state of each part on its way to durable: written, retried, halted (docs/operations.md,
error classes)."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from stream_app.core.windows import TP, FileCut, FileKey
from stream_app.ops.metrics import Metrics
from stream_app.pipeline.journal import Journal
from stream_app.pipeline.ports import Publisher
from stream_app.pipeline.writer import WriteOutcome

log = logging.getLogger(__name__)

HALTED = 1 << 62  # a retry time no clock reaches: the part waits for a restart


class Step(Enum):
    PENDING = "pending"  # cut, waiting to be written (after a transient failure: until not_before_ms)
    HALTED = "halted"  # a terminal error: nothing of its window moves until a fix and a restart
    WRITTEN = "written"  # in the sink with its manifest line; its `created` event queued
    JOURNALED = "journaled"  # its events delivered; its window's facts written, not yet durable
    # durable: the facts are delivered, and the part is forgotten (the checkpoint may pass it)


@dataclass(slots=True)
class PartState:
    step: Step = Step.PENDING
    attempt: int = 0  # failed attempts so far
    not_before_ms: int = 0
    error: str | None = None  # why it halted


class PartStates:
    """One state per part of this stage that is not yet durable, as Kafka Connect's
    ``TopicPartitionWriter`` keeps one per partition: pending → written → journaled → durable,
    with retries (back-off) and halts on the way.  A part with no entry is pending with no
    failed attempt, or durable."""

    def __init__(self, journal: Journal, publisher: Publisher, metrics: Metrics | None,
                 retry_initial_ms: int, retry_max_ms: int) -> None:
        self._journal = journal
        self._publisher = publisher
        self.metrics = metrics
        self._retry_initial = retry_initial_ms
        self._retry_max = retry_max_ms
        self._parts: dict[tuple[FileKey, int], PartState] = {}

    def step(self, cut: FileCut) -> Step:
        state = self._parts.get((cut.key, cut.part))
        return state.step if state is not None else Step.PENDING

    @property
    def failing(self) -> bool:
        """Some part waits for a retry, or halted."""
        return any(s.attempt for s in self._parts.values() if s.step in (Step.PENDING, Step.HALTED))

    @property
    def halted(self) -> dict[tuple[FileKey, int], str]:
        """Halted parts and why: readiness reports the first."""
        return {kp: s.error or "" for kp, s in self._parts.items() if s.step is Step.HALTED}

    def backing_off(self, cut: FileCut, now_wall_ms: int) -> bool:
        state = self._parts.get((cut.key, cut.part))
        return state is not None and state.step in (Step.PENDING, Step.HALTED) and state.not_before_ms > now_wall_ms

    def written(self, cut: FileCut) -> None:
        self._parts[(cut.key, cut.part)] = PartState(Step.WRITTEN)

    def journaled(self) -> None:
        """The events of every written part are delivered (the committer's step 2)."""
        for state in self._parts.values():
            if state.step is Step.WRITTEN:
                state.step = Step.JOURNALED

    def durable(self) -> None:
        """The facts of every journaled part are delivered (the committer's step 3)."""
        for key_part in [kp for kp, s in self._parts.items() if s.step is Step.JOURNALED]:
            del self._parts[key_part]

    def forget(self, revoked: TP, owner_of: Callable[[FileKey], TP]) -> None:
        """A revoke: the new owner writes these parts, and meets (and reports) their errors again."""
        for key_part in [kp for kp in self._parts if owner_of(kp[0]) == revoked]:
            if self._parts.pop(key_part).step is Step.HALTED and self.metrics is not None:
                with contextlib.suppress(KeyError):  # two halted parts of one file key
                    self.metrics.halted_files.remove(key_part[0].id)

    def failed(self, cut: FileCut, outcome: WriteOutcome, now_wall_ms: int) -> None:
        """A part that could not be written: back off and retry when the error is transient;
        halt the part when it is terminal (docs/operations.md, error classes): the same records
        and config would fail the same way, so it is reported once and waits for a fix and a
        restart."""
        assert outcome.error_class is not None and outcome.error_message is not None
        retry = self._parts.setdefault((cut.key, cut.part), PartState())
        retry.attempt += 1
        terminal = outcome.assembly_failed or not outcome.transient
        if self.metrics is not None:
            self.metrics.write_failures.labels(outcome.error_class).inc()
            if retry.attempt > 1:
                self.metrics.retries.inc()
        if outcome.error_class == "VALIDATION_FAILED":
            event = self._journal.validation_failed(cut, outcome.error_message, outcome.source, retry.attempt)
        elif outcome.assembly_failed:
            event = self._journal.finalize_failed(cut, outcome.error_class, outcome.error_message, retry.attempt,
                                                  terminal=True)
        else:
            event = self._journal.write_failed(cut, outcome.name, outcome.error_class, outcome.error_message,
                                               retry.attempt, terminal=terminal)
        self._publisher.journal(event, cut.key.id)
        if terminal:
            retry.step, retry.error = Step.HALTED, outcome.error_message
            retry.not_before_ms = HALTED  # never again in this process: a restart retries it
            if self.metrics is not None:
                self.metrics.halted_files.labels(cut.key.id).set(1)
            log.error("file %s part %d halted (%s, needs a fix and a restart): %s", cut.key.id, cut.part,
                      outcome.error_class, outcome.error_message, extra={"file_key": cut.key.id, "part": cut.part})
            return
        backoff = min(self._retry_max, self._retry_initial * 2 ** (retry.attempt - 1))
        retry.not_before_ms = now_wall_ms + int(backoff * random.uniform(0.5, 1.0))
        log.warning(
            "file %s part %d failed (attempt %d, retrying in %d ms): %s",
            cut.key.id, cut.part, retry.attempt, backoff, outcome.error_message,
            extra={"file_key": cut.key.id, "part": cut.part},
        )
