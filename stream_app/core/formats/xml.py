"""XML: element order, namespace, attributes, declaration and encoding from the pack.

The document is written as text in three parts — root start tag and header elements, one
serialized element per body line, trailer elements and root end tag — so that the body can be
streamed.  Elements are serialized by string building, with exactly the escaping and
indentation lxml's ``tostring`` would give (a test holds the two equal), at a tenth of the cost
of building an element tree per record; they inherit the root's default namespace textually.
The pack's XSD is checked with lxml's incremental parser over the finished bytes, so
validation also runs in bounded memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from lxml import etree

from stream_app.core.formats.base import DetailWriter, FormatError, Line, render_text, text_converter
from stream_app.core.structured.pack import FieldSpec, XmlSpec

_ELEMENT = re.compile(r"Element '([^']+)'")
_FACET = re.compile(r"\[facet '(\w+)'\]")
# Characters XML 1.0 cannot hold at all (lxml refuses them too).
INVALID_XML_CHAR = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT_SPECIAL = re.compile("[&<>\r]")
_ATTR_SPECIAL = re.compile('[&<>"\n\r\t]')
# Anything but text that goes into an element or attribute verbatim (no escaping, nothing XML
# refuses): the printable characters other than " & < >.
_NOT_VERBATIM = re.compile("[^\x20\x21\x23-\x25\x27-\x3b\x3d\x3f-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;",
                               "\r": "&#13;", "\t": "&#9;"})


def unrepresentable_finder(names: Sequence[str]) -> Callable[[Mapping[str, Any]], str | None]:
    """A function giving the first of ``names`` whose string value in a row XML cannot hold
    (one regex pass over the row's strings in the common case), or None."""
    values_of = itemgetter(*names) if len(names) > 1 else (lambda row: (row[names[0]],)) if names else (lambda row: ())

    def first_unrepresentable(row: Mapping[str, Any]) -> str | None:
        values = values_of(row)
        if not INVALID_XML_CHAR.search("".join([value for value in values if type(value) is str])):
            return None
        return next(name for name, value in zip(names, values)
                    if type(value) is str and INVALID_XML_CHAR.search(value))

    return first_unrepresentable


def escape_text(text: str) -> str:
    return text.translate(_TEXT_ESCAPES) if _TEXT_SPECIAL.search(text) else text


def escape_attribute(text: str) -> str:
    return text.translate(_ATTR_ESCAPES) if _ATTR_SPECIAL.search(text) else text


class _ChunkReader:
    """A file-like ``read(n)`` over byte chunks for lxml's incremental parser: small chunks are
    joined, a large one is sliced in place (never re-copied per call)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        available = len(self._buf) - self._pos
        if size < 0 or available < size:
            parts, have = [self._buf[self._pos:]], available
            for chunk in self._chunks:
                parts.append(chunk)
                have += len(chunk)
                if 0 <= size <= have:
                    break
            self._buf, self._pos = b"".join(parts), 0
        end = len(self._buf) if size < 0 else min(len(self._buf), self._pos + size)
        data = self._buf[self._pos:end]
        self._pos = end
        return data


class XmlFormatter:
    def __init__(self, spec: XmlSpec, encoding: str, xsd_path: Path | None) -> None:
        self._spec = spec
        self._encoding = encoding
        self._schema = etree.XMLSchema(etree.parse(str(xsd_path))) if xsd_path else None
        self._nl = "\n" if spec.indent else ""
        self._detail_depth = 2 if spec.bodyElement else 1

    def _encode(self, text: str) -> bytes:
        return text.encode(self._encoding, errors="xmlcharrefreplace")

    def _element(self, line: Line, depth: int) -> str:
        tag = line.element or self._spec.recordElement
        attributes: list[tuple[str, str]] = []
        children: list[tuple[str, str]] = []
        for field, value in line.values:
            if value is None:
                continue  # optional null fields are omitted
            text = value if type(value) is str else render_text(field, value)
            (attributes if field.attribute else children).append((field.name, text))
        # One regex pass over all texts for the common case of nothing to check or escape.
        texts = "".join([text for _, text in attributes] + [text for _, text in children])
        if INVALID_XML_CHAR.search(texts):
            bad = next(name for name, text in attributes + children if INVALID_XML_CHAR.search(text))
            raise FormatError(f"field {bad!r} holds a character XML cannot represent", "XML_INVALID_CHAR")
        if _ATTR_SPECIAL.search(texts):
            attributes = [(name, escape_attribute(text)) for name, text in attributes]
            children = [(name, escape_text(text)) for name, text in children]
        layout = self._layout(tag, depth, [name for name, _ in attributes], [name for name, _ in children])
        return layout(*[text for _, text in attributes], *[text for _, text in children])

    def detail_writer(self, fields: Sequence[FieldSpec]) -> DetailWriter:
        """Detail elements through ``_element``'s layouts, prepared once instead of per line.

        The common line — nothing to escape or refuse — fills a prepared string in one call (one
        string per set of null fields, which are omitted); any other line takes ``line``'s
        general path, so the bytes are the same either way (tests/test_xml_format.py holds the
        two equal).
        """
        ordered = [f for f in fields if f.attribute] + [f for f in fields if not f.attribute]
        names = [f.name for f in ordered]
        texts_of = [text_converter(f) for f in ordered]
        layouts: dict[tuple[int, ...], Callable[..., str]] = {}
        encoding, line = self._encoding, self.line

        def write(row: Mapping[str, Any]) -> bytes:
            values = [row[name] for name in names]
            nulls: tuple[int, ...] = ()
            if None in values:
                nulls = tuple([i for i, value in enumerate(values) if value is None])
            texts = [value if type(value) is str else text(value)
                     for text, value in zip(texts_of, values) if value is not None]
            if not _NOT_VERBATIM.search("".join(texts)):
                fill = layouts.get(nulls)
                if fill is None:
                    present = [f for i, f in enumerate(ordered) if i not in nulls]
                    fill = layouts[nulls] = self._layout(self._spec.recordElement, self._detail_depth,
                                                         [f.name for f in present if f.attribute],
                                                         [f.name for f in present if not f.attribute])
                return fill(*texts).encode(encoding, errors="xmlcharrefreplace")
            return line(Line("detail", None, None, tuple([(f, row[f.name]) for f in fields])))

        return write

    def _layout(self, tag: str, depth: int, attributes: list[str], children: list[str]) -> Callable[..., str]:
        """An element's layout as a format string: attribute then child texts fill it, in order."""
        def brace(text: str) -> str:  # XML names hold no braces; escaped for format() all the same
            return text.replace("{", "{{").replace("}", "}}")

        tag = brace(tag)
        start = f"<{tag}" + "".join(f' {brace(name)}="{{}}"' for name in attributes)
        elements = [f"<{brace(name)}>{{}}</{brace(name)}>" for name in children]
        if not elements:
            return (f"{start}/>" if not self._spec.indent else f"{'  ' * depth}{start}/>\n").format
        if not self._spec.indent:
            return f"{start}>{''.join(elements)}</{tag}>".format
        pad = "  " * depth
        inner = f"\n{pad}  "
        return f"{pad}{start}>{inner}{inner.join(elements)}\n{pad}</{tag}>\n".format

    def begin(self, header: list[Line]) -> bytes:
        spec = self._spec
        parts = [f"<?xml version='1.0' encoding='{self._encoding}'?>\n"] if spec.declaration else []
        attrs = f" xmlns={quoteattr(spec.namespace)}" if spec.namespace else ""
        attrs += "".join(f" {name}={quoteattr(value)}" for name, value in spec.rootAttributes.items())
        parts.append(f"<{spec.rootElement}{attrs}>{self._nl}")
        parts.extend(self._element(line, 1) for line in header)
        if spec.bodyElement:
            parts.append(f"{'  ' if spec.indent else ''}<{spec.bodyElement}>{self._nl}")
        return self._encode("".join(parts))

    def line(self, line: Line) -> bytes:
        return self._encode(self._element(line, self._detail_depth))

    def end(self, trailer: list[Line]) -> bytes:
        spec = self._spec
        parts = [f"{'  ' if spec.indent else ''}</{spec.bodyElement}>{self._nl}"] if spec.bodyElement else []
        parts.extend(self._element(line, 1) for line in trailer)
        parts.append(f"</{spec.rootElement}>\n")
        return self._encode("".join(parts))

    def validate(self, chunks: Iterator[bytes]) -> None:
        if self._schema is None:
            return
        spec = self._spec
        record_tag = f"{{{spec.namespace}}}{spec.recordElement}" if spec.namespace else spec.recordElement
        try:
            # Events only for record elements (the XSD still checks everything): each finished
            # record and its earlier siblings are dropped, so memory stays bounded.
            for _, element in etree.iterparse(_ChunkReader(chunks), events=("end",),
                                              tag=record_tag, schema=self._schema):
                element.clear(keep_tail=True)
                while element.getprevious() is not None:
                    del element.getparent()[0]
        except etree.XMLSyntaxError as exc:
            # lxml's message quotes the offending value: report only element, facet and line.
            message = str(exc)
            element_match, facet = _ELEMENT.search(message), _FACET.search(message)
            where = element_match.group(1).rsplit("}", 1)[-1] if element_match else "?"
            raise FormatError(f"XSD validation failed at line {exc.lineno}: element {where}"
                              + (f", facet {facet.group(1)}" if facet else ""), "XSD_INVALID") from None
