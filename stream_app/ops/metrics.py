"""Prometheus metrics of the worker (prometheus-client), served at ``/metrics`` on the web port.

Labels carry topics, partitions, reasons and error classes only: never record data.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (re-exported for the web page)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter("stream_app_records_consumed_total", "Records read from the input topics",
                                        ["topic", "partition"], registry=r)
        self.files_finalized = Counter("stream_app_files_finalized_total", "Files written and made visible",
                                       ["mode", "reason"], registry=r)
        self.records_per_file = Histogram("stream_app_records_per_file", "Records in each finalized file",
                                          buckets=(1, 10, 100, 1_000, 10_000, 100_000, 1_000_000), registry=r)
        self.bytes_written = Counter("stream_app_bytes_written_total", "Bytes of finalized files", registry=r)
        self.finalize_seconds = Histogram("stream_app_finalize_seconds", "Assemble + write + rename of one file",
                                          registry=r)
        self.open_windows = Gauge("stream_app_open_windows", "File windows with unfinalized records", registry=r)
        self.oldest_window_age = Gauge("stream_app_oldest_open_part_age_seconds",
                                       "Wall-clock age of the oldest open part", registry=r)
        # stage: routing (input partitions of business files), files (repartition partitions) or
        # partition (fileScope: partition, one stage)
        self.consumer_lag = Gauge("stream_app_consumer_lag", "High watermark minus next offset to process",
                                  ["stage", "topic", "partition"], registry=r)
        self.uncommitted = Gauge("stream_app_uncommitted_records", "Records read but not yet below a commit",
                                 registry=r)
        self.dead_letters = Counter("stream_app_dead_letters_total", "Records sent to the dead-letter topic",
                                    ["reason"], registry=r)
        self.write_failures = Counter("stream_app_write_failures_total", "Failed file writes and finalizations",
                                      ["error_class"], registry=r)
        self.retries = Counter("stream_app_write_retries_total", "Retried file writes", registry=r)
        self.halted_files = Gauge("stream_app_halted_file", "1 for a file part halted by a terminal error "
                                  "(fix the config or data, then restart)", ["file_key"], registry=r)
        self.deliveries_pending = Gauge("stream_app_deliveries_pending", "Durable files not yet delivered to "
                                        "a destination (this worker's partitions)", ["destination"], registry=r)
        self.delivery_oldest_pending = Gauge("stream_app_delivery_oldest_pending_age_seconds",
                                             "Age of the oldest file waiting for a destination", ["destination"],
                                             registry=r)
        self.deliveries = Counter("stream_app_deliveries_total", "Delivery attempts by outcome (delivered, "
                                  "already_there, failed)", ["destination", "outcome"], registry=r)
        self.delivered_bytes = Counter("stream_app_delivered_bytes_total", "Bytes uploaded to destinations",
                                       ["destination"], registry=r)
        self.delivery_halted = Gauge("stream_app_delivery_halted", "1 while a destination is halted by a "
                                     "terminal error (host key, auth, permission, conflict: fix, then restart)",
                                     ["destination"], registry=r)
        self.ready = Gauge("stream_app_ready", "1 when the last /readyz probe answered ready, else 0", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
