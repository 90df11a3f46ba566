"""The live runtime without a broker: how a rebalance meets a file that is being written."""

from __future__ import annotations

import asyncio
import threading

from faust.types import TP as FaustTP

from stream_app.config import parse_config
from stream_app.live.app import create_app
from tests.helpers import config_dict
from tests.test_pipeline import raws


def test_a_revoke_waits_for_the_write_under_way_and_never_pulls_its_spool(tmp_path, monkeypatch):
    out, spool = tmp_path / "out", tmp_path / "spool"
    out.mkdir()
    data = config_dict(out, streamingAppendEnabled=True, maxRecordsPerFile=10, window={"sizeMs": 86_400_000})
    data.update(spoolDir=str(spool), dataDir=str(tmp_path / "faust"))
    app, runtime = create_app(parse_config(data))
    pipeline = runtime.pipeline
    started, release = threading.Event(), threading.Event()
    write_cut = pipeline.write_cut

    def slow_write(cut):  # a slow disk: the rebalance arrives while the part is being written
        started.set()
        release.wait(10)
        return write_cut(cut)

    async def durable() -> None:  # the broker's acks, which this test has no broker for
        return None

    monkeypatch.setattr(pipeline, "write_cut", slow_write)
    monkeypatch.setattr(runtime.publisher, "delivered", durable)
    monkeypatch.setattr(runtime.state, "delivered", durable)
    monkeypatch.setattr(runtime, "_commit", durable)
    pipeline.process(raws(10), 0)  # one full part: a cut to write, its records only in the spool

    async def rebalance_during_write() -> None:
        flush = asyncio.create_task(runtime._flush_and_commit())
        while not started.is_set():
            await asyncio.sleep(0.01)
        revoke = asyncio.create_task(runtime.on_revoked([FaustTP("in", 0)]))
        await asyncio.sleep(0.2)
        assert not revoke.done()  # the partition moves only after the write
        assert list(spool.rglob("*.spool"))  # and the part's records are still there to write
        release.set()
        await flush
        await revoke

    asyncio.run(rebalance_during_write())
    assert [p.name for p in out.glob("F_*")] and not list(spool.rglob("*.spool"))
    assert pipeline.partitions() == []  # revoked once the write was done
