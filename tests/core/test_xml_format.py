"""The XML formatter's string serialization equals what lxml builds and serializes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from stream_app.core.formats.base import FormatError, Line, render_text, text_converter
from stream_app.core.formats.xml import _NOT_VERBATIM, INVALID_XML_CHAR, XmlFormatter, representable, verbatim
from stream_app.core.structured.pack import FieldSpec, XmlSpec

xml_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).filter(
    lambda t: not INVALID_XML_CHAR.search(t))
names = st.sampled_from(["A", "b", "Amt", "x_1"])


def lxml_element(tag: str, values: list[tuple[FieldSpec, str]], indent: bool, depth: int) -> str:
    """The element as lxml builds and serializes it (what the formatter used to do)."""
    element = etree.Element(tag)
    for field, text in values:
        if field.attribute:
            element.set(field.name, text)
        else:
            etree.SubElement(element, field.name).text = text
    if not indent:
        return etree.tostring(element, encoding="unicode")
    etree.indent(element, space="  ", level=depth)
    return "  " * depth + etree.tostring(element, encoding="unicode") + "\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, st.booleans(), xml_text), max_size=5), st.booleans(), st.integers(1, 2))
def test_serialization_matches_lxml(fields, indent, depth):
    seen: set[str] = set()
    values = []
    for name, attribute, text in fields:
        if (name, attribute) in seen:
            continue  # one field per element or attribute (two fields on one path are a pack error)
        seen.add((name, attribute))
        values.append((FieldSpec(name=name, expr=name, attribute=attribute), text))
    formatter = XmlFormatter(XmlSpec(rootElement="Doc", recordElement="Rec", indent=indent), "utf-8", None)
    line = Line("detail", None, None, tuple(values))
    assert formatter._element(line, depth) == lxml_element("Rec", values, indent, depth)


def test_text_xml_cannot_hold_is_a_format_error_naming_the_field():
    formatter = XmlFormatter(XmlSpec(rootElement="Doc", recordElement="Rec"), "utf-8", None)
    line = Line("detail", None, None, ((FieldSpec(name="Name", expr="n"), "bad\x00char"),))
    with pytest.raises(FormatError, match="'Name'") as err:
        formatter.line(line)
    assert "bad" not in str(err.value)


# Values a detail line can hold after projection, including nulls, text to escape, text XML
# refuses, and the datetimes and decimals the prepared converters handle themselves.
detail_values = st.one_of(
    st.none(),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
    st.sampled_from(["plain", 'q"uote', "a&b", "<tag>", "tab\there", "line\nbreak", "cr\r", "nul\x00", "\ufffe"]),
    st.decimals(allow_nan=False, allow_infinity=False, places=4),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5)), ZoneInfo("Europe/Berlin")])),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1200, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["string", "decimal", "datetime"]), detail_values),
                min_size=1, max_size=6),
       st.booleans(), st.booleans(), st.sampled_from([None, 2]))
def test_the_prepared_detail_writer_gives_the_bytes_of_the_general_line(columns, indent, body, scale):
    fields = [FieldSpec(name=f"F{i}", expr="x", type=kind, attribute=attribute,
                        scale=scale if kind == "decimal" else None)
              for i, (attribute, kind, _) in enumerate(columns)]
    row = {field.name: value for field, (_, _, value) in zip(fields, columns)}
    spec = XmlSpec(rootElement="Doc", recordElement="Rec", indent=indent, bodyElement="Body" if body else None)
    formatter = XmlFormatter(spec, "utf-8", None)
    write = formatter.detail_writer(fields)
    try:
        expected: bytes | str = formatter.line(Line("detail", None, None, tuple((f, row[f.name]) for f in fields)))
    except FormatError as exc:
        expected = exc.error_class
    for _ in range(2):  # the second call uses the cached layout
        try:
            assert write(row) == expected
        except FormatError as exc:
            assert exc.error_class == expected


@pytest.mark.parametrize("spec, value", [
    (FieldSpec(name="A", expr="a", type="decimal", scale=2), Decimal("12.345")),
    (FieldSpec(name="A", expr="a", type="decimal", scale=2), Decimal("-0.005")),
    (FieldSpec(name="A", expr="a", type="decimal", scale=2), Decimal("190.88")),
    (FieldSpec(name="A", expr="a", type="decimal", scale=2), Decimal("-0.00")),
    (FieldSpec(name="A", expr="a", type="decimal", scale=2), Decimal("1.5")),
    (FieldSpec(name="A", expr="a", type="decimal", scale=2), Decimal("1.500")),
    (FieldSpec(name="A", expr="a", type="decimal", scale=2), Decimal("123456789012345678901234567890.12")),
    (FieldSpec(name="A", expr="a", type="decimal", scale=0), Decimal("7")),
    (FieldSpec(name="A", expr="a", type="decimal", scale=2), 7),
    (FieldSpec(name="A", expr="a", type="decimal", scale=0), Decimal("1E+3")),
    (FieldSpec(name="A", expr="a", type="datetime"), datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)),
    (FieldSpec(name="A", expr="a", type="datetime"), datetime(999, 1, 2, tzinfo=UTC)),
    (FieldSpec(name="A", expr="a", type="datetime"), datetime(2026, 1, 2, 3, tzinfo=timezone(timedelta(hours=-4)))),
    (FieldSpec(name="A", expr="a", type="datetime", format="%d.%m.%Y %H:%M"), datetime(2026, 1, 2, 3, tzinfo=UTC)),
    (FieldSpec(name="A", expr="a", type="int"), 42),
])
def test_a_prepared_text_converter_renders_as_render_text(spec, value):
    assert text_converter(spec)(value) == render_text(spec, value)


# Nested layouts: paths below the line's element (core/structured/xmlpaths.py).
steps = st.tuples(st.sampled_from(["A", "B", "Cd"]), st.sampled_from([1, 1, 2]))
paths = st.tuples(st.lists(steps, min_size=1, max_size=3), st.one_of(st.none(), st.sampled_from(["Ccy", "id"])))


def path_text(elements: list[tuple[str, int]], attribute: str | None) -> str:
    text = "/".join(name if n == 1 else f"{name}[{n}]" for name, n in elements)
    return f"{text}/@{attribute}" if attribute else text


def lxml_nested(tag: str, fields: list[tuple[list[tuple[str, int]], str | None, str | None]],
                indent: bool, depth: int) -> str:
    """The contract built independently with lxml: the skeleton in first-appearance order, values
    set, then every element without text or a child element pruned (the line's element stays)."""
    root = etree.Element(tag)
    made: dict[tuple, etree._Element] = {(): root}
    for elements, attribute, value in fields:
        parent = root
        for i in range(len(elements)):
            key = tuple(elements[: i + 1])
            if key not in made:
                made[key] = etree.SubElement(parent, elements[i][0])
            parent = made[key]
        if value is None:
            continue
        if attribute:
            parent.set(attribute, value)
        else:
            parent.text = value

    def prune(element: etree._Element) -> None:
        for child in list(element):
            prune(child)
            if child.text is None and len(child) == 0:
                element.remove(child)

    prune(root)
    if not indent:
        return etree.tostring(root, encoding="unicode")
    etree.indent(root, space="  ", level=depth)
    return "  " * depth + etree.tostring(root, encoding="unicode") + "\n"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(paths, st.one_of(st.none(), xml_text)), min_size=1, max_size=7), st.booleans(),
       st.integers(1, 3))
def test_random_nested_layouts_serialize_as_lxml_builds_them(columns, indent, depth):
    from stream_app.core.structured.xmlpaths import XmlPathError, build_tree

    specs = [FieldSpec(name=f"F{i}", expr="x", path=path_text(*path)) for i, (path, _) in enumerate(columns)]
    try:
        build_tree("Rec", [spec.path for spec in specs])
    except XmlPathError:
        return  # a layout the contract refuses (the pack loader names the field)
    formatter = XmlFormatter(XmlSpec(rootElement="Doc", recordElement="Rec", indent=indent), "utf-8", None)
    line = Line("detail", None, None, tuple((spec, value) for spec, (_, value) in zip(specs, columns)))
    expected = lxml_nested("Rec", [(p[0], p[1], v) for p, v in columns], indent, depth)
    assert formatter._element(line, depth) == expected
    write = formatter.detail_writer(specs)  # the prepared path gives the same bytes
    row = {spec.name: value for spec, (_, value) in zip(specs, columns)}
    assert write(row) == formatter.line(line)


def test_a_prefixed_namespace_and_nested_root_apply_to_every_element():
    spec = XmlSpec(rootElement="Document/Batch", namespace="urn:example:n", prefix="n", recordElement="Tx",
                   bodyElement="Txs")
    formatter = XmlFormatter(spec, "utf-8", None)
    amount = FieldSpec(name="Amt", expr="a", path="Amt/Value")
    currency = FieldSpec(name="Ccy", expr="c", path="Amt/@Ccy")
    header = Line("header", "Hdr", None, ((FieldSpec(name="Id", expr="i", path="Grp/Id"), "H1"),))
    data = (formatter.begin([header]) + formatter.line(Line("detail", None, None, ((amount, "1.00"), (currency, "EUR"))))
            + formatter.end([]))
    root = etree.fromstring(data)
    ns = "{urn:example:n}"
    assert root.tag == f"{ns}Document" and root[0].tag == f"{ns}Batch"
    assert [e.tag for e in root.iter()] == [f"{ns}{t}" for t in ("Document", "Batch", "Hdr", "Grp", "Id", "Txs", "Tx",
                                                                  "Amt", "Value")]
    assert root.find(f".//{ns}Amt").get("Ccy") == "EUR" and b"<n:Value>1.00</n:Value>" in data


# Text around the shortcuts' edges: printable ASCII with and without the four specials, the
# controls XML refuses or keeps, DEL, non-ASCII letters, non-characters and astral characters.
_EDGE_TEXT = st.text(st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                               st.sampled_from('&<>"\x00\x08\t\n\r\x1f\x7f\x85\xa0é€\ufffe\uffff\U0001f600'),
                               st.characters()), max_size=40)


@settings(max_examples=1500, deadline=None)
@given(_EDGE_TEXT)
def test_the_ascii_shortcuts_answer_as_the_regexes_do(text):
    assert representable(text) == (INVALID_XML_CHAR.search(text) is None)
    assert verbatim(text) == (_NOT_VERBATIM.search(text) is None)
