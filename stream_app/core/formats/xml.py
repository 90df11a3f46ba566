"""XML: element order, namespace, attributes, declaration and encoding from the pack.

The document is written as text in three parts — root start tag and header elements, one
serialized element per body line, trailer elements and root end tag — so that the body can be
streamed.  Elements are built with lxml (escaping, attribute order) without a namespace and
inherit the root's default namespace textually.  The pack's XSD is checked with lxml's
incremental parser over the finished bytes, so validation also runs in bounded memory.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterator
from xml.sax.saxutils import quoteattr

from lxml import etree

from stream_app.core.formats.base import FormatError, Line, render_text
from stream_app.core.structured.pack import XmlSpec

_ELEMENT = re.compile(r"Element '([^']+)'")
_FACET = re.compile(r"\[facet '(\w+)'\]")


class _ChunkReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


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
        element = etree.Element(line.element or self._spec.recordElement)
        for field, value in line.values:
            if value is None:
                continue  # optional null fields are omitted
            text = render_text(field, value)
            if field.attribute:
                element.set(field.name, text)
            else:
                etree.SubElement(element, field.name).text = text
        if not self._spec.indent:
            return etree.tostring(element, encoding="unicode")
        etree.indent(element, space="  ", level=depth)
        return "  " * depth + etree.tostring(element, encoding="unicode") + "\n"

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
        try:
            for _, element in etree.iterparse(io.BufferedReader(_ChunkReader(chunks)), events=("end",),
                                              schema=self._schema):
                if element.getparent() is not None and len(element) == 0:
                    continue
                element.clear(keep_tail=True)  # bounded memory: drop finished subtrees
                while element.getprevious() is not None:
                    del element.getparent()[0]
        except etree.XMLSyntaxError as exc:
            # lxml's message quotes the offending value: report only element, facet and line.
            message = str(exc)
            element_match, facet = _ELEMENT.search(message), _FACET.search(message)
            where = element_match.group(1).rsplit("}", 1)[-1] if element_match else "?"
            raise FormatError(f"XSD validation failed at line {exc.lineno}: element {where}"
                              + (f", facet {facet.group(1)}" if facet else ""), "XSD_INVALID") from None
