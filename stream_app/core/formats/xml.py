"""XML: element order, namespace, attributes, declaration and encoding from the pack.

The document is written as text in three parts — root start tag and header elements, one
serialized element per body line, trailer elements and root end tag — so that the body can be
streamed.  Elements are serialized by string building, with exactly the escaping and
indentation lxml's ``tostring`` would give (a test holds the two equal), at a tenth of the cost
of building an element tree per record; they inherit the root's default namespace textually.
The pack's XSD is checked with lxml's incremental parser over the finished bytes, so
validation also runs in bounded memory; large documents in a helper process (``XsdHelper``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from lxml import etree, isoschematron

from stream_app.core.formats.base import DetailWriter, FormatError, Line, render_text, text_converter
from stream_app.core.formats.xsd_helper import XsdHelper
from stream_app.core.structured.pack import FieldSpec, XmlSpec
from stream_app.core.structured.xmlpaths import XmlNode, build_tree, field_path, kept_slots, slot_order

_ELEMENT = re.compile(r"Element '([^']+)'")
_FACET = re.compile(r"\[facet '(\w+)'\]")
# Characters XML 1.0 cannot hold at all (lxml refuses them too).
INVALID_XML_CHAR = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT_SPECIAL = re.compile("[&<>\r]")
_ATTR_SPECIAL = re.compile('[&<>"\n\r\t]')
# Anything but text that goes into an element or attribute verbatim (no escaping, nothing XML
# refuses): the printable characters other than " & < >.
_NOT_VERBATIM = re.compile("[^\x20\x21\x23-\x25\x27-\x3b\x3d\x3f-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def representable(text: str) -> bool:
    """Nothing in ``text`` that XML 1.0 refuses.  Printable ASCII (the common case) is answered
    in C without the regex: 0.4 µs less per detail row."""
    return (text.isascii() and text.isprintable()) or not INVALID_XML_CHAR.search(text)


def verbatim(text: str) -> bool:
    """``text`` goes into an element or attribute as it is (``_NOT_VERBATIM`` finds nothing).
    Printable ASCII is answered by four character scans instead of the regex: 0.7 against 1.6 µs
    for a 200-character detail line."""
    if text.isascii() and text.isprintable():
        return "&" not in text and "<" not in text and ">" not in text and '"' not in text
    return not _NOT_VERBATIM.search(text)


_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;",
                               "\r": "&#13;", "\t": "&#9;"})


def unrepresentable_finder(names: Sequence[str]) -> Callable[[Mapping[str, Any]], str | None]:
    """A function giving the first of ``names`` whose string value in a row XML cannot hold
    (one regex pass over the row's strings in the common case), or None."""
    values_of = itemgetter(*names) if len(names) > 1 else (lambda row: (row[names[0]],)) if names else (lambda row: ())

    def first_unrepresentable(row: Mapping[str, Any]) -> str | None:
        values = values_of(row)
        if representable("".join([value for value in values if type(value) is str])):
            return None
        return next(name for name, value in zip(names, values)
                    if type(value) is str and INVALID_XML_CHAR.search(value))

    return first_unrepresentable


def escape_text(text: str) -> str:
    return text.translate(_TEXT_ESCAPES) if _TEXT_SPECIAL.search(text) else text


def escape_attribute(text: str) -> str:
    return text.translate(_ATTR_ESCAPES) if _ATTR_SPECIAL.search(text) else text


def _walk(node: XmlNode) -> Iterator[XmlNode]:
    yield node
    for child in node.children:
        yield from _walk(child)


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
    def __init__(self, spec: XmlSpec, encoding: str, xsd_path: Path | None,
                 schematron_path: Path | None = None, xsd_process: bool = False) -> None:
        self._spec = spec
        self._encoding = encoding
        self._schema = etree.XMLSchema(etree.parse(str(xsd_path))) if xsd_path else None
        self._roots = spec.rootElement.split("/")  # the outermost carries namespace and root attributes
        # The element whose children are the detail records: the body element, or the innermost root.
        container = spec.bodyElement or self._roots[-1]
        self._container_tag = f"{{{spec.namespace}}}{container}" if spec.namespace else container
        # Large documents are checked in a helper process (a second core; the worker's writer
        # thread waits for the verdict without the GIL); lxml holds the GIL while it parses.
        self._xsd_helper = XsdHelper(xsd_path, self._schema, self._container_tag) if xsd_path and xsd_process else None
        self._rules = compile_schematron(schematron_path) if schematron_path else None
        self._nl = "\n" if spec.indent else ""
        self._line_depth = len(self._roots)  # header and trailer elements
        self._detail_depth = self._line_depth + (1 if spec.bodyElement else 0)
        # A line's fields (name, path, attribute) -> its element tree, slot order and attribute slots.
        self._trees: dict[tuple, tuple[XmlNode, list[int], frozenset[int]]] = {}

    def _qualify(self, tag: str) -> str:
        return f"{self._spec.prefix}:{tag}" if self._spec.prefix else tag

    def _encode(self, text: str) -> bytes:
        return text.encode(self._encoding, errors="xmlcharrefreplace")

    def _tree(self, tag: str, fields: Sequence[FieldSpec]) -> tuple[XmlNode, list[int], frozenset[int]]:
        key = (tag, *[(f.name, f.path, f.attribute) for f in fields])
        cached = self._trees.get(key)
        if cached is None:
            tree = build_tree(tag, [field_path(f.name, f.path, f.attribute) for f in fields])
            attribute_slots = frozenset(slot for node in _walk(tree) for _, slot in node.attributes)
            cached = self._trees[key] = (tree, slot_order(tree), attribute_slots)
        return cached

    def _element(self, line: Line, depth: int) -> str:
        tree, order, attribute_slots = self._tree(line.element or self._spec.recordElement,
                                                  [spec for spec, _ in line.values])
        texts: list[tuple[int, str]] = []
        for slot in order:
            field, value = line.values[slot]
            if value is None:
                continue  # optional null fields are omitted
            texts.append((slot, value if type(value) is str else render_text(field, value)))
        # One pass over all texts (in C for printable ASCII) for the common case: nothing to refuse.
        joined = "".join([text for _, text in texts])
        if not representable(joined):
            bad = next(slot for slot, text in texts if INVALID_XML_CHAR.search(text))
            raise FormatError(f"field {line.values[bad][0].name!r} holds a character XML cannot represent",
                              "XML_INVALID_CHAR")
        if _ATTR_SPECIAL.search(joined):
            texts = [(slot, escape_attribute(text) if slot in attribute_slots else escape_text(text))
                     for slot, text in texts]
        layout = self._layout(tree, order, frozenset(slot for slot, _ in texts), depth)
        return layout(*[text for _, text in texts])

    def detail_writer(self, fields: Sequence[FieldSpec]) -> DetailWriter:
        """Detail elements through ``_element``'s layouts, prepared once instead of per line.

        The common line — nothing to escape or refuse — fills a prepared string in one call (one
        string per set of null fields, which are omitted); any other line takes ``line``'s
        general path, so the bytes are the same either way (tests/core/test_xml_format.py holds the
        two equal).
        """
        tree, order, _ = self._tree(self._spec.recordElement, fields)
        ordered = [fields[slot] for slot in order]
        names = [f.name for f in ordered]
        texts_of = [text_converter(f) for f in ordered]
        layouts: dict[tuple[int, ...], Callable[..., str]] = {}
        encoding, line, depth = self._encoding, self.line, self._detail_depth

        def write(row: Mapping[str, Any]) -> bytes:
            values = [row[name] for name in names]
            nulls: tuple[int, ...] = ()
            if None in values:
                nulls = tuple([i for i, value in enumerate(values) if value is None])
            texts = [value if type(value) is str else text(value)
                     for text, value in zip(texts_of, values) if value is not None]
            if verbatim("".join(texts)):
                fill = layouts.get(nulls)
                if fill is None:
                    present = frozenset(slot for i, slot in enumerate(order) if i not in nulls)
                    fill = layouts[nulls] = self._layout(tree, order, present, depth)
                return fill(*texts).encode(encoding, errors="xmlcharrefreplace")
            return line(Line("detail", None, None, tuple([(f, row[f.name]) for f in fields])))

        return write

    def _layout(self, tree: XmlNode, order: list[int], present: frozenset[int], depth: int) -> Callable[..., str]:
        """A line's layout as a format string, filled by the present slots' texts in slot order
        (texts of attributes whose element is omitted are dropped)."""
        fill = self._markup(tree, present, depth, True).format
        kept = kept_slots(tree, present)
        if len(kept) == len(present):
            return fill
        given = [slot for slot in order if slot in present]
        picks = [given.index(slot) for slot in kept]
        return lambda *texts: fill(*[texts[i] for i in picks])

    def _markup(self, node: XmlNode, present: frozenset[int], depth: int, is_line: bool) -> str:
        def brace(text: str) -> str:  # XML names hold no braces; escaped for format() all the same
            return text.replace("{", "{{").replace("}", "}}")

        children = "".join([self._markup(child, present, depth + 1, False) for child in node.children])
        has_text = node.text is not None and node.text in present
        if not has_text and not children and not is_line:
            return ""  # an element with nothing in it is omitted with its attributes
        tag = brace(self._qualify(node.tag))
        start = f"<{tag}" + "".join(f' {brace(name)}="{{}}"' for name, slot in node.attributes if slot in present)
        pad, nl = ("  " * depth, "\n") if self._spec.indent else ("", "")
        if has_text:
            return f"{pad}{start}>{{}}</{tag}>{nl}"
        if children:
            return f"{pad}{start}>{nl}{children}{pad}</{tag}>{nl}"
        return f"{pad}{start}/>{nl}"

    def begin(self, header: list[Line]) -> bytes:
        spec = self._spec
        parts = [f"<?xml version='1.0' encoding='{self._encoding}'?>\n"] if spec.declaration else []
        declare = f"xmlns:{spec.prefix}" if spec.prefix else "xmlns"
        attrs = f" {declare}={quoteattr(spec.namespace)}" if spec.namespace else ""
        attrs += "".join(f" {name}={quoteattr(value)}" for name, value in spec.rootAttributes.items())
        for depth, root in enumerate(self._roots):
            pad = "  " * depth if spec.indent else ""
            parts.append(f"{pad}<{self._qualify(root)}{attrs if depth == 0 else ''}>{self._nl}")
        parts.extend(self._element(line, self._line_depth) for line in header)
        if spec.bodyElement:
            pad = "  " * self._line_depth if spec.indent else ""
            parts.append(f"{pad}<{self._qualify(spec.bodyElement)}>{self._nl}")
        return self._encode("".join(parts))

    def line(self, line: Line) -> bytes:
        return self._encode(self._element(line, self._detail_depth))

    def end(self, trailer: list[Line]) -> bytes:
        spec = self._spec
        parts = []
        if spec.bodyElement:
            pad = "  " * self._line_depth if spec.indent else ""
            parts.append(f"{pad}</{self._qualify(spec.bodyElement)}>{self._nl}")
        parts.extend(self._element(line, self._line_depth) for line in trailer)
        for depth in reversed(range(len(self._roots))):
            pad = "  " * depth if spec.indent else ""
            parts.append(f"{pad}</{self._qualify(self._roots[depth])}>{self._nl if depth else chr(10)}")
        return self._encode("".join(parts))

    def validate(self, chunks: Callable[[], Iterator[bytes]]) -> None:
        """The XSD (streaming, in bounded memory), then the pack's Schematron rules (which read
        the whole document: XPath needs it)."""
        if self._schema is not None:
            self._validate_xsd(chunks)
        if self._rules is not None:
            check_rules(self._rules, etree.parse(_ChunkReader(chunks())))

    def _validate_xsd(self, chunks: Callable[[], Iterator[bytes]]) -> None:
        if self._xsd_helper is not None:
            self._xsd_helper.check(chunks)
            return
        assert self._schema is not None
        XsdStream(self._schema, self._container_tag).check(chunks())


FEED_BYTES = 1 << 16


class XsdStream:
    """One document checked against an XSD as its bytes come (lxml's pull parser with the
    schema): ``feed`` the chunks, then ``close``, which raises ``FormatError`` (XSD_INVALID) if
    the document is not valid.  The parser builds the document as it reads; after each slice the
    finished children of ``container_tag`` (the detail records' parent) are dropped, so memory
    stays bounded.  The XSD is checked as the bytes are parsed, whatever is dropped from the
    tree.  Once per slice, not once per record: an event per record cost a fifth of the check.
    The worker and the XSD helper process (core/formats/xsd_helper.py) both use it."""

    def __init__(self, schema: etree.XMLSchema, container_tag: str) -> None:
        self._parser = etree.XMLPullParser(events=("start",), tag=container_tag, schema=schema)
        self._container: Any = None

    def feed(self, chunk: bytes) -> None:
        # In slices: libxml2 refuses a buffer of more than 10 MB at once (XML_PARSE_HUGE, which
        # lifts its other limits too, stays off), and each slice's records are dropped after it.
        view = memoryview(chunk)
        for start in range(0, len(chunk), FEED_BYTES):
            try:
                self._parser.feed(bytes(view[start:start + FEED_BYTES]))
            except etree.XMLSyntaxError as exc:
                raise xsd_error(exc) from None
            self._drop_finished()

    def check(self, chunks: Iterable[bytes]) -> None:
        """The whole document at once: ``feed`` each chunk, then ``close``."""
        for chunk in chunks:
            self.feed(chunk)
        self.close()

    def close(self) -> None:
        try:
            self._parser.close()
        except etree.XMLSyntaxError as exc:
            raise xsd_error(exc) from None
        self._drop_finished()

    @property
    def held(self) -> int:
        """The container's children held now (the last one may be still being read)."""
        return 0 if self._container is None else len(self._container)

    def _drop_finished(self) -> None:
        if self._container is None:
            for _, element in self._parser.read_events():
                self._container = element
        # every child but the last is finished: the parser is in the last one, or past it
        if self._container is not None and len(self._container) > 1:
            del self._container[:-1]


def xsd_error(exc: etree.XMLSyntaxError) -> FormatError:
    """lxml's message quotes the offending value: report only element, facet and line."""
    message = str(exc)
    element_match, facet = _ELEMENT.search(message), _FACET.search(message)
    where = element_match.group(1).rsplit("}", 1)[-1] if element_match else "?"
    return FormatError(f"XSD validation failed at line {exc.lineno}: element {where}"
                       + (f", facet {facet.group(1)}" if facet else ""), "XSD_INVALID")


SVRL = {"svrl": "http://purl.oclc.org/dsdl/svrl"}


def compile_schematron(path: Path) -> isoschematron.Schematron:
    """An ISO Schematron file compiled once (lxml turns it into XSLT); raises ``ValueError``."""
    try:
        return isoschematron.Schematron(etree.parse(str(path)), store_report=True)
    except (etree.XMLSyntaxError, etree.SchematronParseError, etree.XSLTParseError, OSError) as exc:
        raise ValueError(f"Schematron {path.name}: {exc}") from None


def check_rules(rules: isoschematron.Schematron, document: etree._ElementTree) -> None:
    """Raise ``FormatError`` (SCHEMATRON_FAILED) naming the first rule the document breaks: its id
    and its own message (rule texts name elements, never values)."""
    if rules.validate(document):
        return
    report = rules.validation_report
    failed = report.find(".//svrl:failed-assert", SVRL) if report is not None else None
    if failed is None:
        failed = report.find(".//svrl:successful-report", SVRL) if report is not None else None
    rule = failed.get("id") or failed.get("test", "?") if failed is not None else "?"
    text = " ".join((failed.findtext("svrl:text", default="", namespaces=SVRL) if failed is not None else "").split())
    raise FormatError(f"Schematron rule {rule} failed: {text}", "SCHEMATRON_FAILED")
