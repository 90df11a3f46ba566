"""The business file itself: net positions and control totals over a whole window across every
input partition, recomputed here from the records with Decimal."""

from __future__ import annotations

import csv
import io
import random
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import yaml

from stream_app.codecs.avro import encode_confluent, load_schema
from stream_app.config import parse_config
from stream_app.core.records import RawRecord
from stream_app.pipeline.memory import MemoryStateStore
from stream_app.pipeline.wiring import build_pipeline, build_routing
from stream_app.replay.run import LoopbackSender, run_window_records
from stream_app.resources import AVRO_DIR, EXAMPLES_DIR
from stream_app.sinks.local import LocalSink
from stream_app.tools.demo import matched_records
from tests.helpers import CollectingPublisher

SCHEMA = load_schema(AVRO_DIR / "matched_record.avsc")
PARTITIONS = 4
DEBITS = ("REFUND", "REVERSAL")


def run_example(name: str, out: Path, count: int = 1500) -> tuple[dict[str, bytes], list[dict]]:
    data = yaml.safe_load((EXAMPLES_DIR / f"{name}.yaml").read_text())
    data["kafka"].update(bootstrapServers="127.0.0.1:9", topicPartitions=PARTITIONS, inputTopics=["in"])
    data["input"]["avroSchemas"] = {1: str(AVRO_DIR / "matched_record.avsc")}
    data["input"]["decodeProcess"] = False
    data.pop("schemasDir", None)
    data["sink"]["localTargetDir"] = str(out)
    out.mkdir()
    settings = parse_config(data)
    rng = random.Random(8)
    values = list(matched_records(count, 8, 11.5))
    raws, offsets = [], [0] * PARTITIONS
    for value in values:
        p = rng.randrange(PARTITIONS)
        raws.append(RawRecord("in", p, offsets[p], None, None, encode_confluent(1, SCHEMA, value)))
        offsets[p] += 1
    publisher, sender = CollectingPublisher(), LoopbackSender(settings.repartition_topic)
    routing = build_routing(settings, MemoryStateStore(), publisher, sender)
    files = build_pipeline(settings, MemoryStateStore(), publisher, sink=LocalSink(out, manifest=False))
    run_window_records(routing, files, sender, settings.input_partitions, raws)
    assert not publisher.dead
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}, values


def _cycle(value: dict, width: int = 1) -> str:
    at = value["matched_at"]
    return f"{at:%Y%m%d}_C{at.hour // 6 + 1:0{width}d}"


def test_net_positions_are_over_the_whole_window_across_partitions(tmp_path):
    files, values = run_example("net-positions", tmp_path / "out")
    expected: dict[str, dict[tuple, list]] = defaultdict(lambda: defaultdict(lambda: [0, Decimal(0), Decimal(0)]))
    for v in values:
        payer, payee = (v["acquirer_id"], v["issuer_id"]) if v["transaction_type"] in DEBITS \
            else (v["issuer_id"], v["acquirer_id"])
        a, b = sorted((payer, payee))
        slot = expected[_cycle(v)][(a, b, v["currency"])]
        slot[0] += 1
        slot[1 if payer == a else 2] += v["amount"]
    assert len(files) == len(expected)  # one file per 6-hour cycle, not one per partition
    for name, body in files.items():
        rows = list(csv.DictReader(io.StringIO(body.decode()), delimiter=";"))
        cycle = name.removeprefix("NETPOS_").rsplit("_", 1)[0]
        got = {(r["bank_a"], r["bank_b"], r["currency"]): r for r in rows if r["bank_a"] != "TOTAL"}
        assert rows[-1]["bank_a"] == "TOTAL" and int(rows[-1]["bank_b"]) == sum(n for n, _, _ in expected[cycle].values())
        assert set(got) == set(expected[cycle])  # one line per (pair, currency)
        for pair, (n, debit, credit) in expected[cycle].items():
            row = got[pair]
            assert int(row["transfers"]) == n
            assert Decimal(row["gross_debit"]) == debit and Decimal(row["gross_credit"]) == credit
            assert Decimal(row["net_amount"]) == credit - debit


def test_control_totals_are_per_currency_signed_with_a_debit_credit_indicator(tmp_path):
    files, values = run_example("template-clearing", tmp_path / "out")
    expected: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(lambda: [0, Decimal(0), Decimal(0)]))
    for v in values:
        slot = expected[_cycle(v, 2)][v["currency"]]
        slot[0] += 1
        slot[2 if v["transaction_type"] in DEBITS else 1] += v["amount"]
    assert sorted(n.rsplit("_", 1)[0].removeprefix("CLR_") for n in files) == sorted(expected)
    for name, body in files.items():
        lines = body.decode().splitlines()
        header = lines[0].split("|")
        cycle = name.removeprefix("CLR_").rsplit("_", 1)[0]
        assert header[3:5] == ["ACQ0000001", "SCHEME0001"] and header[5] + "_C" + header[6] == cycle
        totals = {f[1]: f for f in (line.split("|") for line in lines) if f[0] == "TOT"}
        assert set(totals) == set(expected[cycle])
        for currency, (n, credit, debit) in expected[cycle].items():
            _, _, count, got_credit, got_debit, net, indicator = totals[currency]
            assert int(count) == n and Decimal(got_credit) == credit and Decimal(got_debit) == debit
            assert Decimal(net) == abs(credit - debit) and indicator == ("C" if credit >= debit else "D")
        assert lines[-1] == f"TRL|{sum(n for n, _, _ in expected[cycle].values()):07d}"
