"""``stream-app deliveries``: where each file stands with each destination, from the journal, and
a re-delivery of one file on request.

The status of a file at a destination is the journal's: ``delivered`` once a `delivered` event
exists (the latest one wins), ``failed`` when the last attempt failed terminally (the
destination is halted), ``pending`` otherwise (queued, or failing transiently: the last error
and the attempt count are shown).  A re-delivery reads the sink copy (the system of record),
uploads it exactly as the worker does (temporary name, rename, never an overwrite: a file
already there with the same bytes is done, a different one is a conflict), and journals the
`delivered` or `delivery-failed` event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from stream_app.config import AppSettings
from stream_app.delivery.deliverer import read_sink_copy
from stream_app.delivery.sftp import DeliveryError, SftpDestination
from stream_app.pipeline.journal import Journal
from stream_app.pipeline.outbox import Delivery, Receipt
from stream_app.sinks.base import Audit
from stream_app.tools.events import JournalFilter, journal_events

DELIVERY_EVENTS = ("created", "delivery-queued", "delivered", "delivery-failed")


def _ms(value: Any) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)


@dataclass
class DeliveryStatus:
    destination: str
    file_name: str
    status: str  # pending | failed | delivered
    attempts: int = 0
    queued_at: int | None = None
    delivered_at: int | None = None
    remote_path: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    server_fingerprint: str | None = None

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def delivery_statuses(events: Iterable[dict]) -> list[DeliveryStatus]:
    """Each (destination, file) the journal queued, with its status, in queue order."""
    found: dict[tuple[str, str], DeliveryStatus] = {}
    for event in events:
        kind, destination, name = event["event_type"], event.get("destination"), event.get("file_name")
        if not destination or not name or kind not in DELIVERY_EVENTS[1:]:
            continue
        status = found.setdefault((destination, name), DeliveryStatus(destination, name, "pending"))
        attempt = event.get("attempt") or 0
        status.attempts = max(status.attempts, attempt)
        if kind == "delivery-queued":
            status.queued_at = status.queued_at or _ms(event["occurred_at"])
        elif kind == "delivered":
            status.status, status.delivered_at = "delivered", _ms(event["occurred_at"])
            status.remote_path, status.server_fingerprint = event.get("remote_path"), event.get("server_fingerprint")
            status.error_class = status.error_message = None
        elif status.status != "delivered":
            status.status = "failed" if event.get("terminal") else "pending"
            status.error_class, status.error_message = event.get("error_class"), event.get("error_message")
    return list(found.values())


def read_statuses(settings: AppSettings) -> list[DeliveryStatus]:
    return delivery_statuses(journal_events(settings, JournalFilter(DELIVERY_EVENTS[1:])))


def list_deliveries(settings: AppSettings, statuses: Iterable[str], destination: str | None, as_json: bool,
                    echo: Callable[..., Any]) -> int:
    """``stream-app deliveries``: one line (or JSON object) per file and destination."""
    import orjson

    wanted = set(statuses)
    now_ms = time.time_ns() // 1_000_000
    for status in read_statuses(settings):
        if (not wanted or status.status in wanted) and (destination is None or status.destination == destination):
            echo(orjson.dumps(status.row()).decode() if as_json else describe(status, now_ms))
    return 0


def describe(status: DeliveryStatus, now_ms: int) -> str:
    """One line for a person: status, destination, file and what to know about it."""
    if status.status == "delivered":
        detail = f"-> {status.remote_path}"
    else:
        age = f"waiting {max(0, now_ms - status.queued_at) // 1000} s" if status.queued_at else "waiting"
        error = f"; last error {status.error_class}: {status.error_message}" if status.error_class else ""
        detail = f"{age}, {status.attempts} attempt(s){error}"
    return f"{status.status:<9} {status.destination:<12} {status.file_name}  {detail}"


class RedeliveryError(Exception):
    """Nothing to re-deliver as asked (an unknown file or destination)."""


def _created_event(settings: AppSettings, file_name: str) -> dict:
    created = [e for e in journal_events(settings, JournalFilter(("created",))) if e.get("file_name") == file_name]
    if not created:
        raise RedeliveryError(f"{file_name}: no `created` event in the journal {settings.kafka.journalTopic}")
    return created[-1]


def redeliver(settings: AppSettings, sink: Audit, file_name: str, destination: str | None,
              publish: Any) -> list[tuple[str, Receipt | DeliveryError]]:
    """Deliver ``file_name`` (to ``destination``, or to every configured one) now; ``publish``
    takes the journal event of each outcome.  Returns (destination, receipt or error)."""
    targets = [d for d in settings.delivery.sftp if destination is None or d.name == destination]
    if not targets:
        configured = ", ".join(d.name for d in settings.delivery.sftp) or "none"
        raise RedeliveryError(f"no delivery destination {destination or ''} in the config (configured: {configured})")
    created = _created_event(settings, file_name)
    journal = Journal(f"{settings.workerId}-cli", settings.appId)

    async def run() -> list[tuple[str, Receipt | DeliveryError]]:
        outcomes: list[tuple[str, Receipt | DeliveryError]] = []
        for target in targets:
            d = Delivery(target.name, file_name, created.get("location") or sink.location(file_name),
                         created["bytes"], created["sha256"], created["file_key"], created["part"],
                         _ms(created["window_start"]) or 0, _ms(created["window_end"]) or 0, ("", -1),
                         time.time_ns() // 1_000_000)
            client = SftpDestination(target, f"{settings.workerId}-cli")

            try:
                receipt = await client.deliver(d, partial(read_sink_copy, sink, d.name))
            except DeliveryError as exc:
                publish(journal.delivery_failed(d, exc.error_class, str(exc), 1, exc.terminal,
                                                request=f"redeliver-{d.queued_at_ms}"), d.file_key)
                outcomes.append((target.name, exc))
            else:
                publish(journal.delivered(d, receipt.remote_path, receipt.server_fingerprint, 1,
                                          request=f"redeliver-{d.queued_at_ms}"), d.file_key)
                outcomes.append((target.name, receipt))
            finally:
                await client.close()
        return outcomes

    return asyncio.run(run())


def run_redelivery(settings: AppSettings, file_name: str, destination: str | None,
                   echo: Callable[..., Any]) -> int:
    """``stream-app deliveries --redeliver``: deliver, journal, say what happened; the exit code
    of the worst outcome (0, or 75 unreachable, 77 credentials or host key, 65 terminal)."""
    from stream_app.live.events import EventPublisher
    from stream_app.ops.metrics import Metrics
    from stream_app.ops.problems import CREDENTIALS, DATA, UNREACHABLE
    from stream_app.pipeline.wiring import build_sink

    publisher = EventPublisher(settings, Metrics())
    outcomes = redeliver(settings, build_sink(settings), file_name, destination, publisher.journal)
    asyncio.run(publisher.delivered())
    worst = 0
    for name, outcome in outcomes:
        if isinstance(outcome, DeliveryError):
            echo(f"{file_name} -> {name}: {outcome.error_class}: {outcome}", err=True)
            code = (CREDENTIALS if outcome.error_class in ("AUTH", "HOST_KEY", "KEY_FILE") else
                    DATA if outcome.terminal else UNREACHABLE)
            worst = max(worst, code)
        else:
            echo(f"{file_name} -> {name}: {'already there' if outcome.already_there else 'delivered'} "
                 f"at {outcome.remote_path}")
    return worst
