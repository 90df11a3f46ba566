"""The one intake of both stages: per record, its partition's state machine; the decoder's
verdict; a plausible event time; then the stage's own step (window it, or route it); and a dead
letter with its reason for a record rejected on the way.  One loop and one set of rules, so both
scopes reject the same records the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar, cast

from stream_app.codecs import DecodeError
from stream_app.core.records import RawRecord, SourceRecord
from stream_app.core.structured.assembler import StructuredAssembler
from stream_app.core.structured.project import InvalidRecord
from stream_app.core.windows import TP, MissingGroupField, WindowPolicy

# What rejects one record (a dead letter), never the batch.
REJECTED = (DecodeError, MissingGroupField, InvalidRecord)


class InputStage(Protocol):
    """What the intake asks of a partition's state machine (a windower or a router)."""

    topic: str
    partition: int

    @property
    def watermark_ms(self) -> int | None: ...

    def already_processed(self, offset: int) -> bool: ...

    def skip(self, offset: int) -> None: ...


S = TypeVar("S", bound=InputStage)


def take_batch(raws: Sequence[RawRecord], decoded: Iterable[object], policy: WindowPolicy,
               stage_for: Callable[[TP], S], take: Callable[[RawRecord, SourceRecord, S], None],
               reject: Callable[[RawRecord, str, str], None],
               passes: Callable[[RawRecord], bool] | None = None) -> None:
    """Feed a decoded batch (one result per record, in order) to ``take``.

    A record its stage already processed (read again after a restart or a rewind) is passed
    over, as is one ``passes`` names; one rejected here or in ``take`` (``REJECTED``) goes to
    ``reject`` with its reason and is skipped: its partition goes on."""
    stage: S | None = None
    for raw, result in zip(raws, decoded):
        # Batches come a partition at a time: look the stage up per run, not per record.
        if stage is None or raw.partition != stage.partition or raw.topic != stage.topic:
            stage = stage_for((raw.topic, raw.partition))
        if stage.already_processed(raw.offset) or (passes is not None and passes(raw)):
            continue
        try:
            take(raw, admitted(result, policy, stage.watermark_ms), stage)
        except REJECTED as exc:
            reject(raw, *rejection(exc))
            stage.skip(raw.offset)


def admitted(decoded: object, policy: WindowPolicy, watermark_ms: int | None) -> SourceRecord:
    """The decoded record, once its event time is plausible; raises why it is not admitted."""
    if type(decoded) is not SourceRecord:
        raise cast(DecodeError, decoded)  # the decoder's verdict on bytes it could not read
    implausible = policy.out_of_range(decoded.event_time_ms, watermark_ms)
    if implausible is not None:
        raise DecodeError("EVENT_TIME_OUT_OF_RANGE", implausible)
    return decoded


def rejection(exc: Exception) -> tuple[str, str]:
    """The dead-letter reason and detail of one of ``REJECTED``."""
    if isinstance(exc, DecodeError):
        return exc.reason, exc.detail
    if isinstance(exc, MissingGroupField):
        return "MISSING_GROUP_FIELD", str(exc)
    if isinstance(exc, InvalidRecord):
        return "VALIDATION_FAILED", exc.violation.describe()
    raise TypeError(f"not a record rejection: {type(exc).__name__}")


class Projection:
    """Structured mode: an admitted record gets its row (the pack's mapping and typed checks).

    A record that breaks a rule is rejected with a dead letter under ``onInvalidRecord:
    deadLetter``; under ``fail`` it carries its violation into its window, which then refuses to
    finalize (a terminal error that names the record)."""

    def __init__(self, assembler: StructuredAssembler, kept: Sequence[str] | None = None) -> None:
        """``kept``: the value fields a routed record keeps beside its row (what the part limits
        read); None keeps the whole value."""
        self._assembler = assembler
        self._dead_letters = assembler.on_invalid_record == "deadLetter"
        self._kept = None if kept is None else tuple(kept)

    def attach(self, record: SourceRecord) -> SourceRecord:
        """The record with its row; raises ``InvalidRecord`` when the policy dead-letters it."""
        try:
            row: object = self._assembler.project(record.value)
        except InvalidRecord as exc:
            if self._dead_letters:
                raise
            row = exc.violation
        return _with_row(record, row)

    def carried(self, record: SourceRecord) -> SourceRecord:
        """A routed record: the routing stage dead-lettered what the policy rejects, so a
        violation here is carried (the fail policy).  Its value keeps only the ``kept`` fields:
        a routed record waits in its window with its row until its file is written, and nothing
        after this reads the rest (the window is the routing stage's; the row is the file's)."""
        value = record.value
        try:
            row: object = self._assembler.project(value)
        except InvalidRecord as exc:
            row = exc.violation
        if self._kept is not None:
            value = {name: value[name] for name in self._kept if name in value}
        return SourceRecord(record.topic, record.partition, record.offset, record.event_time_ms, value, row)

    def strict(self, record: SourceRecord) -> SourceRecord:
        """Replay's reading of a recorded record: a violation raises."""
        return _with_row(record, self._assembler.project(record.value))


def _with_row(record: SourceRecord, row: object) -> SourceRecord:
    return SourceRecord(record.topic, record.partition, record.offset, record.event_time_ms, record.value, row)
