"""Offline driving of the shared pipeline: the same core as the live worker, no Faust.

``run_records`` processes a complete, bounded sequence of raw records and closes every window
at the end of the input, which is what a replay of a finished range does.
"""

from __future__ import annotations

from typing import Iterable

from stream_app.core.records import RawRecord
from stream_app.pipeline import FilePipeline, FlushSummary

END_OF_INPUT_MS = 2**62  # a wall-clock "now" after every window end: closes everything


def flush_due(pipeline: FilePipeline, now_wall_ms: int) -> FlushSummary:
    summary = FlushSummary()
    cuts = pipeline.due_cuts(now_wall_ms)
    for cut in cuts:
        pipeline.apply_write(cut, pipeline.write_cut(cut), now_wall_ms, summary)
    if cuts:
        pipeline.finish_flush(summary)
    pipeline.advance_checkpoints()
    return summary


def run_records(pipeline: FilePipeline, raws: Iterable[RawRecord], batch_size: int = 2000) -> FlushSummary:
    total = FlushSummary()

    def add(summary: FlushSummary) -> None:
        total.files += summary.files
        total.records += summary.records
        total.bytes += summary.bytes
        total.failed += summary.failed
        total.names.extend(summary.names)

    batch: list[RawRecord] = []
    for raw in raws:
        batch.append(raw)
        if len(batch) >= batch_size:
            pipeline.process(batch, 0)
            add(flush_due(pipeline, 0))
            batch = []
    pipeline.process(batch, 0)
    add(flush_due(pipeline, 0))
    pipeline.tick(END_OF_INPUT_MS)
    add(flush_due(pipeline, END_OF_INPUT_MS))
    return total
