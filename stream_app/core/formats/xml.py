"""XML with lxml: element order, namespace, attributes, declaration and encoding from the pack;
validated against the pack's XSD before the file is handed to the sink."""

from __future__ import annotations

import re
from pathlib import Path

from lxml import etree

from stream_app.core.formats.base import FormatError, Line, render_text
from stream_app.core.structured.pack import XmlSpec


_ELEMENT = re.compile(r"Element '([^']+)'")
_FACET = re.compile(r"\[facet '(\w+)'\]")


class XmlFormatter:
    def __init__(self, spec: XmlSpec, encoding: str, xsd_path: Path | None) -> None:
        self._spec = spec
        self._encoding = encoding
        self._schema = etree.XMLSchema(etree.parse(str(xsd_path))) if xsd_path else None

    def _q(self, name: str) -> str:
        return f"{{{self._spec.namespace}}}{name}" if self._spec.namespace else name

    def format(self, lines: list[Line]) -> bytes:
        spec = self._spec
        nsmap = {None: spec.namespace} if spec.namespace else None
        root = etree.Element(self._q(spec.rootElement), nsmap=nsmap)
        for name, value in spec.rootAttributes.items():
            root.set(name, value)
        body = None
        for line in lines:
            parent = root
            if line.kind == "detail" and spec.bodyElement:
                if body is None:
                    body = etree.SubElement(root, self._q(spec.bodyElement))
                parent = body
            element = etree.SubElement(parent, self._q(line.element or spec.recordElement))
            for field, value in line.values:
                if value is None:
                    continue  # optional null fields are omitted
                text = render_text(field, value)
                if field.attribute:
                    element.set(field.name, text)
                else:
                    etree.SubElement(element, self._q(field.name)).text = text
        if spec.bodyElement and body is None:
            etree.SubElement(root, self._q(spec.bodyElement))
        body = etree.tostring(root, xml_declaration=spec.declaration, encoding=self._encoding,
                              pretty_print=spec.indent)
        if self._schema is not None:
            self._validate(body)
        return body

    def _validate(self, body: bytes) -> None:
        # Validate the serialized bytes (what the sink will get), so line numbers are real.
        if self._schema is not None and not self._schema.validate(etree.fromstring(body)):
            entry = self._schema.error_log[0]
            # lxml's message quotes the offending value: report only element, facet and line.
            element = _ELEMENT.search(entry.message)
            facet = _FACET.search(entry.message)
            where = element.group(1).rsplit("}", 1)[-1] if element else "?"
            raise FormatError(f"XSD validation failed at line {entry.line}: element {where}"
                              + (f", facet {facet.group(1)}" if facet else f" ({entry.type_name})")
                              + f"; {len(self._schema.error_log)} error(s)", "XSD_INVALID")
