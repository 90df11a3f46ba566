"""Works the delivery outbox beside the pipeline: each pending file of this worker's partitions
goes to its destination, at most ``maxParallel`` at once per destination.

The Kafka commit never waits for this: the outbox entry was made durable with the file's facts
(``pipeline/outbox.py``), so a delivery outlives a crash, a rebalance (the partition's new owner
recovers the entry) and a server that is away for hours.  What an attempt ends in:

- delivered (or found already there): a `delivered` event, and the entry leaves the outbox in the
  next durable step;
- a transient failure (refused, timeout, disconnect): a `delivery-failed` event, and the whole
  destination backs off (doubling, up to ``retryMaxMs``) instead of each file trying on its own;
- the sink copy cannot be read here (a local sink on another replica's volume, after a
  rebalance): that file waits, with its own back-off, for an owner that can read it; the
  destination goes on with the others;
- a terminal failure (host key, auth, permission, remote path, conflict): a `delivery-failed`
  event with ``terminal``, one ERROR line, and the destination is halted until the worker is
  restarted after the fix (``stream_app_delivery_halted``).  Other destinations go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from stream_app.config import SftpDestinationSettings
from stream_app.core.windows import TP
from stream_app.delivery.sftp import DeliveryError, SftpDestination, classify
from stream_app.ops.metrics import Metrics
from stream_app.pipeline.outbox import Delivery, Outbox
from stream_app.sinks.base import Audit, SinkError

log = logging.getLogger(__name__)

POLL_S = 0.25
READ_CHUNK = 1024 * 1024


@dataclass
class DestinationState:
    client: SftpDestination
    settings: SftpDestinationSettings
    in_flight: dict[str, tuple[TP, asyncio.Task]] = field(default_factory=dict)  # key -> (owner, upload)
    halted: str | None = None
    retry_at: float = 0.0  # time.monotonic() before which nothing is tried
    backoff_s: float = 0.0
    # deliveries whose sink copy could not be read: key -> (retry at, back-off)
    unreadable: dict[str, tuple[float, float]] = field(default_factory=dict)


class Deliverer:
    def __init__(self, outbox: Outbox, destinations: Iterable[SftpDestinationSettings], worker_id: str,
                 sink: Audit, owned: Callable[[], set[TP]], metrics: Metrics | None = None) -> None:
        self.outbox = outbox
        self._sink = sink
        self._owned = owned
        self._metrics = metrics
        self.destinations = {s.name: DestinationState(SftpDestination(s, worker_id), s) for s in destinations}
        self._unknown_reported: set[str] = set()
        self._wake: asyncio.Event | None = None  # set when an upload ends: start the next at once
        for name in self.destinations:
            if metrics is not None:
                metrics.delivery_halted.labels(name).set(0)

    async def run(self) -> None:
        """Until cancelled: start what is due, every ``POLL_S``."""
        self._wake = wake = asyncio.Event()
        try:
            while True:
                wake.clear()
                self.step(time.time_ns() // 1_000_000)
                try:
                    await asyncio.wait_for(wake.wait(), POLL_S)
                except TimeoutError:
                    pass
        finally:
            await self.close()

    def step(self, now_ms: int) -> None:
        pending = self.outbox.pending(self._owned())
        self._update_gauges(pending, now_ms)
        now = time.monotonic()
        for d in pending:
            state = self.destinations.get(d.destination)
            if state is None:
                if d.destination not in self._unknown_reported:
                    self._unknown_reported.add(d.destination)
                    log.warning("deliveries to %r are pending but no such destination is configured; they wait "
                                "(stream-app deliveries lists them)", d.destination)
                continue
            if state.halted or now < state.retry_at or d.key in state.in_flight:
                continue
            if d.key in state.unreadable and now < state.unreadable[d.key][0]:
                continue
            if len(state.in_flight) >= state.settings.maxParallel:
                continue
            state.in_flight[d.key] = (d.owner, asyncio.ensure_future(self._deliver(state, d)))

    def _update_gauges(self, pending: list[Delivery], now_ms: int) -> None:
        if self._metrics is None:
            return
        for name in self.destinations:
            mine = [d for d in pending if d.destination == name]
            self._metrics.deliveries_pending.labels(name).set(len(mine))
            oldest = min((d.queued_at_ms for d in mine), default=None)
            self._metrics.delivery_oldest_pending.labels(name).set(0 if oldest is None else
                                                                   max(0.0, (now_ms - oldest) / 1000))

    async def _deliver(self, state: DestinationState, d: Delivery) -> None:
        try:
            tidy = d.attempts > 0 or d.key not in self.outbox.queued_here
            receipt = await state.client.deliver(d, partial(read_sink_copy, self._sink, d.name), tidy)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(state, d, classify(exc, f"delivering {d.name} to {d.destination}"))
        else:
            self.outbox.done(d, receipt, d.attempts + 1)
            state.backoff_s = 0.0
            state.unreadable.pop(d.key, None)
            if self._metrics is not None:
                self._metrics.deliveries.labels(d.destination, "already_there" if receipt.already_there
                                                else "delivered").inc()
                if not receipt.already_there:
                    self._metrics.delivered_bytes.labels(d.destination).inc(receipt.bytes)
            log.info("delivered %s to %s:%s%s", d.name, d.destination, receipt.remote_path,
                     " (already there)" if receipt.already_there else "")
        finally:
            state.in_flight.pop(d.key, None)
            if self._wake is not None:
                self._wake.set()

    def _failed(self, state: DestinationState, d: Delivery, error: DeliveryError) -> None:
        if state.halted is not None:
            return  # an upload that was under way when another halted the destination: reported once
        self.outbox.failed(d, error.error_class, str(error), error.terminal)
        if self._metrics is not None:
            self._metrics.deliveries.labels(d.destination, "failed").inc()
        if error.error_class.startswith("SINK_"):
            _, backoff = state.unreadable.get(d.key, (0.0, 0.0))
            s = state.settings
            backoff = s.retryInitialMs / 1000 if not backoff else min(s.retryMaxMs / 1000, backoff * 2)
            state.unreadable[d.key] = (time.monotonic() + backoff, backoff)
            if backoff == s.retryInitialMs / 1000:
                log.warning("%s waits for a worker that can read its sink copy (%s); the other files go on",
                            d.name, error)
            return
        if error.terminal:
            if state.halted is None:
                state.halted = f"{error.error_class}: {error}"
                if self._metrics is not None:
                    self._metrics.delivery_halted.labels(d.destination).set(1)
                log.error("delivery to %s halted (%s); fix it, then restart the worker", d.destination, state.halted)
            return
        first = state.backoff_s == 0.0
        s = state.settings
        state.backoff_s = s.retryInitialMs / 1000 if first else min(s.retryMaxMs / 1000, state.backoff_s * 2)
        if time.monotonic() + state.backoff_s > state.retry_at:
            state.retry_at = time.monotonic() + state.backoff_s
            log.warning("delivery to %s failed (%s: %s); trying again in %.1f s", d.destination, error.error_class,
                        error, state.backoff_s)

    def revoke(self, tps: Iterable[TP]) -> None:
        """Stop the uploads of partitions this worker no longer owns: their new owner delivers."""
        gone = set(tps)
        for state in self.destinations.values():
            for owner, task in list(state.in_flight.values()):
                if owner in gone:
                    task.cancel()

    def halted(self) -> dict[str, str]:
        return {name: state.halted for name, state in self.destinations.items() if state.halted}

    async def close(self) -> None:
        tasks = [t for state in self.destinations.values() for _, t in state.in_flight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self.destinations.values():
            await state.client.close()


async def read_sink_copy(sink: Audit, name: str) -> AsyncIterator[bytes]:
    """The sink copy's bytes, read in a thread a chunk at a time (the worker's deliveries and
    ``stream-app deliveries --redeliver`` alike); a sink that cannot give them is a
    ``DeliveryError`` that never halts the destination (``Deliverer._failed``)."""
    try:
        source = await asyncio.to_thread(sink.open_stored, name)
    except SinkError as exc:
        raise DeliveryError(f"reading the sink copy of {name}: {exc}", f"SINK_{exc.error_class}", False) from None
    try:
        while chunk := await asyncio.to_thread(source.read, READ_CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(source.close)
