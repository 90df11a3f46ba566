"""The XSD check of large documents in a helper process: the same verdicts as the worker's own
check, bounded input, and a helper that dies costs speed, never a verdict."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_app.core.assembly import FileVariables
from stream_app.core.formats.base import FormatError
from stream_app.core.formats.xml import XmlFormatter
from stream_app.core.formats.xsd_helper import XsdHelper
from stream_app.core.records import SourceRecord
from stream_app.core.spool import MemorySpool
from stream_app.core.structured.assembler import StructuredAssembler
from stream_app.core.structured.pack import load_pack, pack_path
from stream_app.core.windows import FileKey
from stream_app.resources import SCHEMAS_DIR
from stream_app.tools.demo import matched_records

PARTIES = {"sender_id": "BARCGB22", "receiver_id": "ECBFDEFF"}


@pytest.fixture(scope="module")
def document() -> bytes:
    """A valid pcs-clearing 1.1.0 file of 3,000 records (about 1.7 MB)."""
    pack = load_pack(pack_path(Path(SCHEMAS_DIR), "pcs-clearing", "1.1.0"))
    assembler = StructuredAssembler(pack, "f.xml", FileVariables(None, PARTIES))
    part = assembler.open_part(FileKey(None, None, 0, 3_600_000, ()), 0, MemorySpool())
    for offset, value in enumerate(matched_records(3000, seed=7)):
        part.append(SourceRecord("t", 0, offset, 0, value, assembler.project(value)))
    return part.finish().body


def formatter(xsd_process: bool, min_bytes: int = 64 * 1024) -> XmlFormatter:
    pack = load_pack(pack_path(Path(SCHEMAS_DIR), "pcs-clearing", "1.1.0"))
    out = pack.spec.output
    assert out.xml is not None
    made = XmlFormatter(out.xml, out.encoding, pack.xsd_path, None, xsd_process)
    if xsd_process:
        helper = made._xsd_helper
        assert helper is not None
        helper._min_bytes = min_bytes
    return made


def in_chunks(data: bytes, size: int = 8192):
    return lambda: iter([data[i:i + size] for i in range(0, len(data), size)])


def verdict(made: XmlFormatter, chunks) -> tuple[str, str] | None:
    try:
        made.validate(chunks)
    except FormatError as exc:
        return str(exc), exc.error_class
    return None


def broken(document: bytes) -> bytes:
    """The document with one currency too long, near its end (a facet the XSD checks)."""
    at = document.rindex(b"<Currency>EUR</Currency>")
    return document[:at] + b"<Currency>EURO</Currency>" + document[at + len(b"<Currency>EUR</Currency>"):]


@pytest.fixture
def helper_formatter() -> Iterator[XmlFormatter]:
    made = formatter(True)
    yield made
    assert made._xsd_helper is not None
    made._xsd_helper.close()


def test_a_large_document_gets_the_workers_verdict_from_the_helper(document, helper_formatter):
    local = formatter(False)
    helper = helper_formatter._xsd_helper
    assert helper is not None
    assert verdict(helper_formatter, in_chunks(document)) is None is verdict(local, in_chunks(document))
    invalid = broken(document)
    expected = verdict(local, in_chunks(invalid))
    assert expected is not None and expected[1] == "XSD_INVALID" and "Currency" in expected[0]
    assert verdict(helper_formatter, in_chunks(invalid)) == expected
    assert verdict(helper_formatter, in_chunks(document, 3_000_000)) is None  # one chunk of it all
    assert helper.documents_checked == 3
    assert b"EURO" not in expected[0].encode()  # the verdict names the element, never the value


def test_a_small_document_is_checked_in_the_worker(document, helper_formatter):
    helper = helper_formatter._xsd_helper
    assert helper is not None
    helper._min_bytes = 2 * len(document)
    assert verdict(helper_formatter, in_chunks(broken(document)))[1] == "XSD_INVALID"  # type: ignore[index]
    assert helper.documents_checked == 0 and helper.helper_pids() == []  # never started


def test_one_chunk_larger_than_libxml2_takes_at_once_is_checked(document):
    """libxml2 refuses 10 MB in one feed unless XML_PARSE_HUGE; the stream feeds it in slices."""
    head, _, rest = document.partition(b"<Transaction ")
    body, _, tail = rest.rpartition(b"</Transactions>")
    record = b"<Transaction " + body.split(b"<Transaction ")[0]
    big = head + record * (12_000_000 // len(record)) + b"</Transactions>" + tail
    assert len(big) > 10_000_000
    assert verdict(formatter(False), lambda: iter([big])) is None


def test_a_helper_that_dies_costs_speed_never_a_verdict(document, helper_formatter, caplog):
    helper = helper_formatter._xsd_helper
    assert helper is not None
    helper._restart_after_s = 0.0
    assert verdict(helper_formatter, in_chunks(document)) is None
    (pid,) = helper.helper_pids()
    os.kill(pid, signal.SIGKILL)
    invalid = broken(document)
    expected = verdict(formatter(False), in_chunks(invalid))
    with caplog.at_level(logging.WARNING, logger="stream_app.core.formats.xsd_helper"):
        assert verdict(helper_formatter, in_chunks(invalid)) == expected  # checked in this process
    assert "XSD helper process failed" in caplog.text
    assert helper.documents_checked == 1
    # started again for the next document
    assert verdict(helper_formatter, in_chunks(invalid)) == expected
    assert helper.documents_checked == 2 and helper.helper_pids() not in ([], [pid])


def test_a_document_whose_chunks_fail_raises_their_error_and_the_helper_goes_on(document, helper_formatter, caplog):
    """A spool unreadable in the middle of a large document: the writer gets that error (it
    retries the part), and the helper, not at fault, forgets the document and checks the next."""
    helper = helper_formatter._xsd_helper
    assert helper is not None
    assert verdict(helper_formatter, in_chunks(document)) is None
    (pid,) = helper.helper_pids()

    def unreadable() -> Iterator[bytes]:
        yield from in_chunks(document[:len(document) * 3 // 4])()  # past the first group sent
        raise OSError("spool unreadable")

    with caplog.at_level(logging.WARNING, logger="stream_app.core.formats.xsd_helper"):
        with pytest.raises(OSError, match="spool unreadable"):
            helper_formatter.validate(unreadable)
    assert "XSD helper process failed" not in caplog.text
    assert helper.helper_pids() == [pid]
    assert verdict(helper_formatter, in_chunks(broken(document))) == verdict(formatter(False), in_chunks(broken(document)))
    assert helper.documents_checked == 2


def test_the_helper_is_off_by_setting(document):
    assert formatter(False)._xsd_helper is None
    made = formatter(True)
    assert isinstance(made._xsd_helper, XsdHelper)


def _held_while_checked(made: XmlFormatter, body: bytes) -> tuple[int, str | None]:
    """The most detail records the stream held at once while checking ``body`` in 8 KiB
    chunks, and its verdict's error class."""
    from stream_app.core.formats.xml import XsdStream

    stream = XsdStream(made._schema, made._container_tag)
    most = 0
    try:
        for chunk in in_chunks(body)():
            stream.feed(chunk)
            most = max(most, stream.held)
        stream.close()
    except FormatError as exc:
        return most, exc.error_class
    return most, None


def test_the_check_holds_a_chunk_of_records_not_the_document(document):
    """pcs-clearing puts its records in a body element; each chunk's finished records are dropped."""
    made = formatter(False)
    assert made._container_tag == "{urn:example:pcs:clearing:1.1}Transactions"
    assert _held_while_checked(made, document)[0] <= 20  # 8 KiB holds about 14 records; 3,000 in all
    assert _held_while_checked(made, broken(document))[1] == "XSD_INVALID"


def test_the_check_holds_a_chunk_of_records_in_a_layout_without_a_body_element():
    """pacs-008's records are children of its innermost root, beside the group header."""
    from tests.core import test_iso20022 as iso

    asm = iso.assembler()
    body = asm.assemble(iso.cut(asm, iso.records(2000))).body
    made = asm.formatter
    assert isinstance(made, XmlFormatter) and made._container_tag.endswith("}FIToFICstmrCdtTrf")
    count = body.count(b"<CdtTrfTxInf>")
    assert count > 300
    most, error = _held_while_checked(made, body)
    assert error is None and most <= 20
    at = body.rindex(b"<CdtTrfTxInf>")
    assert _held_while_checked(made, body[:at] + b"<Unexpected/>" + body[at:])[1] == "XSD_INVALID"
