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
from pathlib import Path
from typing import Iterator
from xml.sax.saxutils import quoteattr

from lxml import etree

from stream_app.core.formats.base import FormatError, Line, render_text
from stream_app.core.structured.pack import XmlSpec

_ELEMENT = re.compile(r"Element '([^']+)'")
_FACET = re.compile(r"\[facet '(\w+)'\]")
# Characters XML 1.0 cannot hold at all (lxml refuses them too).
INVALID_XML_CHAR = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT_SPECIAL = re.compile("[&<>\r]")
_ATTR_SPECIAL = re.compile('[&<>"\n\r\t]')
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;",
                               "\r": "&#13;", "\t": "&#9;"})


def first_unrepresentable(row: dict, names: list[str]) -> str | None:
    """The first of ``names`` whose string value XML cannot hold (one regex pass in the common case)."""
    texts = [value for name in names if type(value := row.get(name)) is str]
    if not INVALID_XML_CHAR.search("".join(texts)):
        return None
    return next(name for name in names if type(row.get(name)) is str and INVALID_XML_CHAR.search(row[name]))


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
        start = f"<{tag}" + "".join([f' {name}="{text}"' for name, text in attributes])
        if not children:
            return f"{start}/>" if not self._spec.indent else f"{'  ' * depth}{start}/>\n"
        elements = [f"<{name}>{text}</{name}>" for name, text in children]
        if not self._spec.indent:
            return f"{start}>{''.join(elements)}</{tag}>"
        pad = "  " * depth
        inner = f"\n{pad}  "
        return f"{pad}{start}>{inner}{inner.join(elements)}\n{pad}</{tag}>\n"

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
