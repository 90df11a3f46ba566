"""The XML formatter's string serialization equals what lxml builds and serializes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from stream_app.core.formats.base import FormatError, Line
from stream_app.core.formats.xml import INVALID_XML_CHAR, XmlFormatter
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
        if attribute and name in seen:
            continue  # an attribute name appears once per element
        seen.add(name) if attribute else None
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
