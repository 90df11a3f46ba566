"""XML with lxml: element order, namespace, attributes, declaration and encoding from the pack;
validated against the pack's XSD before the file is handed to the sink."""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from stream_app.core.formats.base import FormatError, Line, render_text
from stream_app.core.structured.pack import XmlSpec


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
        if self._schema is not None and not self._schema.validate(root):
            entry = self._schema.error_log[0]
            # lxml's message quotes the offending value; report only where it is.
            raise FormatError(f"XSD validation failed at {entry.path} (line {entry.line})", "XSD_INVALID")
        return etree.tostring(root, xml_declaration=spec.declaration, encoding=self._encoding,
                              pretty_print=spec.indent)
