"""Parts that could not be written: back off and retry when the error is transient, halt when
it is terminal (docs/operations.md, error classes)."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stream_app.core.windows import TP, FileCut, FileKey
from stream_app.ops.metrics import Metrics
from stream_app.pipeline.journal import Journal
from stream_app.pipeline.ports import Publisher
from stream_app.pipeline.writer import WriteOutcome

log = logging.getLogger(__name__)

HALTED = 1 << 62  # a retry time no clock reaches: the part waits for a restart


@dataclass(slots=True)
class _Retry:
    attempt: int = 0
    not_before_ms: int = 0


class PartRetries:
    """Per part: how many attempts failed and when the next may start; and the halted parts."""

    def __init__(self, journal: Journal, publisher: Publisher, metrics: Metrics | None,
                 retry_initial_ms: int, retry_max_ms: int) -> None:
        self._journal = journal
        self._publisher = publisher
        self.metrics = metrics
        self._retry_initial = retry_initial_ms
        self._retry_max = retry_max_ms
        self._retries: dict[tuple[FileKey, int], _Retry] = {}
        # Parts halted by a terminal error (a template, validation, layout or sink refusal) and
        # why: nothing of their windows is written or committed until the config or the input is
        # fixed and the worker restarted; readiness reports the first.
        self.halted: dict[tuple[FileKey, int], str] = {}

    @property
    def any(self) -> bool:
        """Some part waits for a retry (or halted)."""
        return bool(self._retries)

    def backing_off(self, cut: FileCut, now_wall_ms: int) -> bool:
        retry = self._retries.get((cut.key, cut.part))
        return retry is not None and retry.not_before_ms > now_wall_ms

    def succeeded(self, cut: FileCut) -> None:
        self._retries.pop((cut.key, cut.part), None)

    def forget(self, cuts: Iterable[FileCut], revoked: TP, owner_of: Callable[[FileKey], TP]) -> None:
        """A revoke: the new owner meets (and reports) these parts' errors again."""
        for cut in cuts:
            self._retries.pop((cut.key, cut.part), None)
        for key_part in [kp for kp in self.halted if owner_of(kp[0]) == revoked]:
            del self.halted[key_part]
            if self.metrics is not None:
                with contextlib.suppress(KeyError):  # two halted parts of one file key
                    self.metrics.halted_files.remove(key_part[0].id)

    def failed(self, cut: FileCut, outcome: WriteOutcome, now_wall_ms: int) -> None:
        """A part that could not be written: back off and retry when the error is transient;
        halt the part when it is terminal (docs/operations.md, error classes): the same records
        and config would fail the same way, so it is reported once and waits for a fix and a
        restart."""
        assert outcome.error_class is not None and outcome.error_message is not None
        retry = self._retries.setdefault((cut.key, cut.part), _Retry())
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
            retry.not_before_ms = HALTED  # never again in this process: a restart retries it
            self.halted[(cut.key, cut.part)] = outcome.error_message
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
