"""The delivery outbox: which durable files still have to reach which destination.

A file is queued for each configured destination in the same durable step as its window's
facts (``Committer`` step 3), in a state store co-partitioned with the file stage, so the
owner of a file's partition owns its deliveries and a new owner recovers them after a crash or
a rebalance.  The Kafka commit never waits for a remote server: delivery runs beside the
pipeline (``live/delivery.py``) and only reports back.  A finished delivery is journaled first
(`delivered`) and taken out of the outbox in the next durable step, after that event is
acknowledged: a crash in between delivers the file again, which finds it already there
(at least once, never lost).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from stream_app.core.windows import TP, FileCut
from stream_app.sinks.base import WriteResult

if TYPE_CHECKING:
    from stream_app.pipeline.journal import Journal
    from stream_app.pipeline.ports import Publisher


@dataclass(frozen=True, slots=True)
class Delivery:
    """One file to one destination."""

    destination: str
    name: str  # the file's name in the sink
    location: str
    bytes: int
    sha256: str
    file_key: str
    part: int
    window_start: int
    window_end: int
    owner: TP  # the file stage's partition: its owner delivers
    queued_at_ms: int
    attempts: int = 0

    @property
    def key(self) -> str:
        return f"{self.destination}/{self.name}"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "owner": list(self.owner)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Delivery:
        data = json.loads(text)
        return cls(**{**data, "owner": (data["owner"][0], int(data["owner"][1]))})

    def event_fields(self) -> dict[str, Any]:
        return {"destination": self.destination, "file_name": self.name, "location": self.location,
                "bytes": self.bytes, "sha256": self.sha256, "file_key": self.file_key, "part": self.part,
                "window_start": self.window_start, "window_end": self.window_end}


class OutboxStore(Protocol):
    """Where the outbox is durable: a Faust table in the worker (``live/tables.py``)."""

    def put_delivery(self, owner: TP, key: str, value: str | None) -> None:
        """Store (or, with None, remove) one delivery under ``key`` in ``owner``'s partition."""
        ...

    def stored_deliveries(self) -> Iterable[str]:
        """Every delivery the store holds for the partitions it has recovered."""
        ...


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a destination confirmed: the file is complete under ``remote_path``."""

    remote_path: str
    bytes: int
    sha256: str
    server_fingerprint: str
    already_there: bool = False  # an earlier attempt (or replica) had delivered it


class Outbox:
    """The outbox's changes between two durable steps, and its view for the deliverer.

    ``queue``, ``done`` and ``failed`` journal what happened and stage the change; ``persist``
    (the committer's step 3, after those events are acknowledged) writes it to the store."""

    def __init__(self, store: OutboxStore, destinations: Iterable[str], publisher: Publisher,
                 journal: Journal) -> None:
        self.store = store
        self.destinations = tuple(destinations)
        self._publisher = publisher
        self._journal = journal
        self._staged: dict[str, tuple[TP, str | None]] = {}
        self._done: set[str] = set()  # settled, not yet removed from the store
        # queued by this process: no earlier uploader (a crashed or moved one) can have left
        # anything of them on a server
        self.queued_here: set[str] = set()
        self._parsed: dict[str, Delivery] = {}  # stored text -> delivery (read every deliverer step)

    @property
    def has_changes(self) -> bool:
        return bool(self._staged)

    def queue(self, cut: FileCut, result: WriteResult, owner: TP, now_ms: int) -> None:
        """A file is written: deliver it to every destination."""
        for destination in self.destinations:
            d = Delivery(destination, result.name, result.location, result.bytes, result.sha256, cut.key.id,
                         cut.part, cut.key.window_start_ms, cut.key.window_end_ms, owner, now_ms)
            self._done.discard(d.key)
            self._staged[d.key] = (owner, d.to_json())
            self.queued_here.add(d.key)
            self._publisher.journal(self._journal.delivery_queued(d), d.file_key)

    def done(self, d: Delivery, receipt: Receipt, attempt: int) -> None:
        self._publisher.journal(self._journal.delivered(d, receipt.remote_path, receipt.server_fingerprint, attempt),
                                d.file_key)
        self._done.add(d.key)
        self._staged[d.key] = (d.owner, None)

    def failed(self, d: Delivery, error_class: str, message: str, terminal: bool) -> Delivery:
        """One more attempt of ``d`` failed: journaled, and the count survives a restart."""
        counted = replace(d, attempts=d.attempts + 1)
        self._publisher.journal(self._journal.delivery_failed(d, error_class, message, counted.attempts, terminal),
                                d.file_key)
        if d.key not in self._done:
            self._staged[d.key] = (d.owner, counted.to_json())
        return counted

    def persist(self) -> None:
        staged, self._staged = self._staged, {}
        for key, (owner, value) in staged.items():
            self.store.put_delivery(owner, key, value)
            if value is None:
                self._done.discard(key)
                self.queued_here.discard(key)

    def pending(self, owned: set[TP]) -> list[Delivery]:
        """The deliveries of ``owned`` partitions still to do, oldest first."""
        found: dict[str, Delivery] = {}
        parsed: dict[str, Delivery] = {}
        for text in self.store.stored_deliveries():
            d = parsed[text] = self._parsed.get(text) or Delivery.from_json(text)
            if d.owner in owned:
                found[d.key] = d
        for key, (owner, value) in self._staged.items():
            if value is not None and owner in owned:
                found[key] = parsed[value] = self._parsed.get(value) or Delivery.from_json(value)
        self._parsed = parsed
        return sorted((d for key, d in found.items() if key not in self._done),
                      key=lambda d: (d.queued_at_ms, d.name, d.destination))
