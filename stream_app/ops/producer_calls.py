"""Serving a confluent-kafka producer, whose fatal error must end its session, never the worker.

When librdkafka's idempotent producer meets an error it cannot recover from (the broker lost or
fenced its producer id: a cluster re-created, an epoch bumped), it raises a fatal error and
purges its queue.  confluent-kafka (2.16) raises that error from the ``poll()`` or ``flush()``
that serves it, as a ``KafkaException``, but leaves it pending while the same call goes on
serving callbacks: the purged messages' delivery reports and log lines.  Any of them then fails
inside CPython with ``SystemError: <class 'str'> returned a result with an exception set``,
which is what the call raises, and the delivery report that failed is lost (measured:
tests/ops/test_producer_calls.py).  So an exception from serving means exactly one thing, this
producer can deliver nothing more, and its delivery reports can no longer be counted on: the
caller accounts for what it had sent by its own books and starts a new producer.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def serve(producer: Any, flush_s: float = 0.0) -> str | None:
    """``flush(flush_s)``, or ``poll(0)`` when ``flush_s`` is 0; returns why the producer is
    finished when the call raised its fatal error, else None."""
    try:
        if flush_s:
            producer.flush(flush_s)
        else:
            producer.poll(0)
    except Exception as exc:  # a KafkaException, or the SystemError it became (see above)
        log.warning("a Kafka producer hit a fatal error and can send nothing more: %s", exc)
        return f"producer failed ({exc})"
    return None
