"""Structured business files: routed runs prepared in a helper process as they arrive.

In window scope the file stage turns each routed record into its row: decode the carried value,
project it (the pack's mapping and checks), and, at the write, render its detail line.  That is
pure per-record work, and with the routing stage, the writer threads and the consumer it filled
the worker's one GIL, while the machine's second core stood half idle.  ``ProcessRunPreparer``
sends the entries of each run, in pieces, to a helper process, which decodes and projects them
and renders their lines (``RunPreparer``, the same code the worker runs without a helper); the
worker gets back, per record, the line's bytes and the few values its part still folds, and
makes them ``RenderedRow``s (core/structured/prepared.py).  The live runtime sends a routed
batch when it is fetched (``prefetch``) and takes it a fetch later, so the helper prepares it
while the worker routes and writes; a batch not prefetched is sent in pipelined pieces.

What a record becomes does not depend on where it was prepared (tests/pipeline/
test_prepare_process.py): a record that breaks a pack rule carries its violation; a run with a
value that cannot be decoded is a ``DecodeError`` (its repartition partition halts, as before);
if the helper dies, the rest of the runs are prepared in the worker.  A record's value keeps
only the fields the part limits read (the amount and currency of ``maxAmountPerFile``).

Protocol (frames of ``ops/helper_process.py``): a request is ``marshal`` of ``((topic,
partition), [(offset, event time, carried value), ...])``; its answer is ``pickle`` of one
``(row, value)`` per entry, the row a ``Prepared`` tuple (line, error, folded values) or a
``Violation``; or of ``("E", reason, detail)`` for a ``DecodeError``, or ``("R", message)`` when
the schema registry could not be asked.
"""

from __future__ import annotations

import marshal
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from stream_app.codecs import DecodeError
from stream_app.codecs.carried import CarriedDecoder
from stream_app.codecs.registry import RegistryUnavailable
from stream_app.core.records import SourceRecord
from stream_app.core.structured.prepared import Prepared, RowPreparer
from stream_app.core.structured.project import InvalidRecord, Violation
from stream_app.ops.helper_process import HelperClient, HelperGone, serve

CHUNK = 500  # entries per request, as the decode helper's
FIRST_CHUNK = 100  # a batch's first piece: the worker waits for it with nothing to do
AHEAD = 2  # pieces sent before their turn

Entry = tuple[int, int, bytes | None]
Run = tuple[tuple[str, int], Sequence[Entry]]
# Per record, what the helper sends: its prepared row's parts, or the violation it carries; and
# the value's kept fields.  Plain tuples: they pickle and load at half the cost of RenderedRows.
Item = tuple[Prepared | Violation, dict[str, Any]]


class RunPreparer:
    """The records of a routed run, prepared in this process (and, the same code, in the helper)."""

    def __init__(self, decoder: CarriedDecoder, rows: RowPreparer, value_fields: Sequence[str] = ()) -> None:
        self._decoder = decoder
        self._rows = rows
        self._value_fields = tuple(value_fields)

    def items(self, source: tuple[str, int], entries: Sequence[Entry]) -> list[Item]:
        """Per entry, its row's parts (or violation) and kept value; raises ``DecodeError``."""
        parts, kept = self._rows.parts, self._value_fields
        items: list[Item] = []
        for record in self._decoder.decode_run(source, entries):
            value = record.value
            try:
                row: Prepared | Violation = parts(value)
            except InvalidRecord as exc:
                row = exc.violation  # carried into its window: the routing stage kept it (fail policy)
            items.append((row, {name: value[name] for name in kept if name in value}))
        return items

    def records_of(self, source: tuple[str, int], entries: Sequence[Entry], items: Sequence[Item]) -> list[SourceRecord]:
        topic, partition = source
        row_of = self._rows.row_of
        records = []
        for (offset, event_time, _), (row, value) in zip(entries, items, strict=True):
            records.append(SourceRecord(topic, partition, offset, event_time, value,
                                        row if type(row) is Violation else row_of(cast(Prepared, row))))
        return records

    def prepare(self, source: tuple[str, int], entries: Sequence[Entry]) -> list[SourceRecord]:
        return self.records_of(source, entries, self.items(source, entries))

    def prepare_many(self, runs: Sequence[Run]) -> Iterator[list[SourceRecord] | DecodeError]:
        for source, entries in runs:
            try:
                yield self.prepare(source, entries)
            except DecodeError as exc:
                yield exc


def _pieces(runs: Sequence[Run]) -> list[tuple[int, tuple[str, int], Sequence[Entry]]]:
    """(run index, source, entries) in requests of at most ``CHUNK`` entries (the first smaller)."""
    pieces = []
    size = FIRST_CHUNK
    for index, (source, entries) in enumerate(runs):
        start = 0
        while True:
            pieces.append((index, source, entries[start:start + size]))
            start += size
            size = CHUNK
            if start >= len(entries):
                break
    return pieces


class ProcessRunPreparer(HelperClient):
    """``RunPreparer`` whose work is done in a helper process, or by ``local`` while it cannot."""

    helper_module = __name__
    helper_name = "prepare helper"
    fallback_work = "preparing routed records"

    def __init__(self, settings: dict[str, Any], local: RunPreparer, restart_after_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``settings``: the worker's (``AppSettings`` as JSON) with the file stage's ``fields``
        and the ``value_fields`` kept, from which the helper builds its own ``RunPreparer``."""
        super().__init__(settings, restart_after_s, clock)
        self._local = local

    def prefetch(self, batch: object, runs: Sequence[Run]) -> None:
        """Send the runs of a batch that ``prepare_many`` gets later (with the same ``batch``):
        the helper prepares them while the worker routes and writes the batches before it."""
        if not runs:
            return
        try:
            if self._helper() is None:
                return
            pieces = _pieces(runs)
            for _, source, entries in pieces:  # all of it: the helper's answers wait in its pipe
                self._send_body(marshal.dumps((source, list(entries))))
            self._prefetched.append((batch, len(pieces)))
        except HelperGone as exc:
            self._failed(exc)

    def prepare_many(self, runs: Sequence[Run], batch: object = None) -> Iterator[list[SourceRecord] | DecodeError]:
        """The prepared records of each run, in order; ``batch`` is what ``prefetch`` was given
        for these runs, if it was (a batch never taken, dropped by a rebalance, is skipped)."""
        done = 0  # runs handed out
        try:
            if self._helper() is None:
                raise HelperGone("waiting before the next start")
            sent = self._prefetched_requests(batch)  # and drops the answers in flight ahead of these
            pieces = _pieces(runs)
            prepared: list[SourceRecord] = []
            failed: DecodeError | None = None
            for index, (run, source, entries) in enumerate(pieces):
                while sent < min(index + 1 + AHEAD, len(pieces)):
                    _, piece_source, piece = pieces[sent]
                    self._send_body(marshal.dumps((piece_source, list(piece))))
                    sent += 1
                answer = self._answer(len(entries))
                if isinstance(answer, DecodeError):
                    failed = failed or answer
                elif failed is None:
                    prepared += self._local.records_of(source, entries, answer)
                if index + 1 == len(pieces) or pieces[index + 1][0] != run:
                    yield failed if failed is not None else prepared
                    done += 1
                    prepared, failed = [], None
        except HelperGone as exc:
            self._failed(exc)
            yield from self._local.prepare_many(runs[done:])

    def _answer(self, entries: int) -> list[Item] | DecodeError:
        answer = pickle.loads(self._receive_body())
        if isinstance(answer, tuple):
            if answer[0] == "R":
                raise RegistryUnavailable(answer[1])
            return DecodeError(answer[1], answer[2])
        if len(answer) != entries:
            raise HelperGone(f"the prepare helper answered {len(answer)} records for {entries}")
        return answer


def _answerer(settings: dict[str, Any]) -> Callable[[bytes], bytes]:
    from stream_app.config import AppSettings
    from stream_app.pipeline.wiring import run_preparer

    app = AppSettings.model_validate(settings["settings"])
    fields = settings["fields"]
    preparer = run_preparer(app, None if fields is None else frozenset(fields))
    assert preparer is not None

    def answer(body: bytes) -> bytes:
        source, entries = marshal.loads(body)
        try:
            result: Any = preparer.items(tuple(source), entries)
        except DecodeError as exc:
            result = ("E", exc.reason, exc.detail)
        except RegistryUnavailable as exc:
            result = ("R", str(exc))
        return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)

    return answer


if __name__ == "__main__":
    serve(_answerer)
