"""Run as a script: the files every shipped schema pack writes from seeded demo records, through
each compiled module of the hot path (Avro read, carried form, projection, expressions, XML
rendering), and what a broken record reports.  Prints JSON: the build (``describe()``), each
file's name and SHA-256, each refusal's message.  tests/ops/test_hotpath.py runs it on the
compiled build and on a copy of the pure sources and compares the two."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from stream_app.codecs.avro import AvroDecoder, SchemaResolver, encode_confluent, load_schema
from stream_app.codecs.carried import CarriedDecoder, CarryingAvroDecoder
from stream_app.core.assembly import AssemblyError, FileVariables
from stream_app.core.records import RawRecord, SourceRecord
from stream_app.core.structured.assembler import StructuredAssembler
from stream_app.core.structured.pack import load_pack
from stream_app.core.structured.project import InvalidRecord
from stream_app.core.windows import FileCut, FileKey
from stream_app.ops.hotpath import describe
from stream_app.resources import AVRO_DIR, SCHEMAS_DIR
from stream_app.tools.demo import DEMO_START, matched_records

SIX_H = 6 * 3_600_000
PARTIES = {"sender_id": "BARCGB22", "receiver_id": "ECBFDEFF", "debtor_agent_bic": "BARCGB22",
           "creditor_agent_bic": "ECBFDEFF"}


def run() -> dict:
    schema_path = str(AVRO_DIR / "matched_record.avsc")
    parsed = load_schema(schema_path)
    routing = CarryingAvroDecoder(SchemaResolver({1: schema_path}), "matched_at", 1_000_000)
    files = CarriedDecoder(AvroDecoder(SchemaResolver({1: schema_path}), "matched_at", 1_000_000),
                           SchemaResolver({1: schema_path}), "matched_at")
    values = []
    for i, record in enumerate(matched_records(600, seed=17, span_hours=5)):
        raw = RawRecord("matched", 0, i, None, None, encode_confluent(1, parsed, record))
        carried = routing.decode(raw).carried
        assert carried is not None
        values.append(files.decode(RawRecord("matched", 0, i, None, None, carried)).value)
    written: dict[str, str] = {}
    refused: dict[str, str] = {}
    start = int(DEMO_START.timestamp() * 1000)
    for pack_file in sorted(Path(SCHEMAS_DIR).glob("*/*/pack.yaml")):
        ref = f"{pack_file.parent.parent.name}/{pack_file.parent.name}"
        assembler = StructuredAssembler(load_pack(pack_file), ref.replace("/", "_") + "_{{ group | length }}",
                                        FileVariables(None, PARTIES))
        for currency in ("EUR", "GBP"):
            chosen = [v for v in values if v["currency"] == currency]
            records = [SourceRecord("matched", 0, i, start, v, assembler.project(v)) for i, v in enumerate(chosen)]
            key = FileKey("matched", 0, start, start + SIX_H, group=(("currency", currency),))
            try:
                out = assembler.assemble(FileCut.of(key, 0, records, "watermark", True))
            except AssemblyError as exc:  # a pack that refuses the whole cut: its report must match too
                refused[f"{ref} {currency}"] = str(exc)
                continue
            written[f"{ref} {currency} {out.name}"] = hashlib.sha256(b"".join(out.chunks())).hexdigest()
        for field, bad in (("amount", "-1.00"), ("currency", "euro"), ("masked_pan", "4111111111111111"),
                           ("merchant_name", "ACME\x01"), ("matched_at", None)):
            try:
                assembler.project({**values[0], field: bad})
            except InvalidRecord as exc:
                refused[f"{ref} {field}"] = str(exc)
    return {"build": describe(), "written": written, "refused": refused}


if __name__ == "__main__":
    print(json.dumps(run(), sort_keys=True))
