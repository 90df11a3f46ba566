"""Nested XML layouts: where each field of a line goes below the line's element.

A field's ``path`` is a chain of element steps with an optional final attribute step:
``PmtId/EndToEndId`` is the text of ``EndToEndId`` inside ``PmtId``; ``IntrBkSttlmAmt/@Ccy`` is
the ``Ccy`` attribute of ``IntrBkSttlmAmt``; ``RmtInf/Ustrd[2]`` is the second of repeated
``Ustrd`` siblings.  Without a path a field is a child element named like the field (or an
attribute of the line's element with ``attribute: true``), the flat layout.

The fields of one line make one element tree: an element's children come in the order in which
their first field appears.  An element holds text or child elements, never both.  Rendering
omits a null field, and an element whose text and children are all omitted is omitted with its
attributes (attributes qualify content; the line's own element is always written).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

XML_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_ELEMENT_STEP = re.compile(rf"^({XML_NAME})(?:\[([1-9][0-9]{{0,3}})\])?$")
_ATTRIBUTE_STEP = re.compile(rf"^@({XML_NAME})$")
ELEMENT_PATH = re.compile(rf"^{XML_NAME}(?:/{XML_NAME})*$")


class XmlPathError(ValueError):
    """A path or layout the XML contract does not allow (the pack loader names pack and field);
    ``slot`` is the field's index in the line, when one field is at fault."""

    def __init__(self, message: str, slot: int | None = None) -> None:
        super().__init__(message)
        self.slot = slot


@dataclass(slots=True)
class XmlNode:
    """An element of a line's layout; ``slot``s index the line's fields."""

    tag: str
    attributes: list[tuple[str, int]] = field(default_factory=list)
    text: int | None = None
    children: list[XmlNode] = field(default_factory=list)
    _index: dict[tuple[str, int], XmlNode] = field(default_factory=dict, repr=False)

    def child(self, tag: str, occurrence: int) -> XmlNode:
        node = self._index.get((tag, occurrence))
        if node is None:
            node = self._index[(tag, occurrence)] = XmlNode(tag)
            self.children.append(node)
        return node


def parse_path(path: str) -> tuple[list[tuple[str, int]], str | None]:
    """``A/B[2]/@c`` -> ([("A", 1), ("B", 2)], "c"): element steps with occurrence, final attribute."""
    steps = path.split("/")
    attribute = None
    last = _ATTRIBUTE_STEP.match(steps[-1])
    if last:
        attribute = last.group(1)
        steps = steps[:-1]
    elements = []
    for step in steps:
        match = _ELEMENT_STEP.match(step)
        if match is None:
            raise XmlPathError(f"path {path!r}: {step!r} is not an element step (Name or Name[n]) "
                               "and only the last step may be an attribute (@name)")
        elements.append((match.group(1), int(match.group(2) or 1)))
    return elements, attribute


def field_path(name: str, path: str | None, attribute: bool) -> str:
    """The path a field's value goes to: its own, or the flat default."""
    if path is not None:
        if attribute:
            raise XmlPathError("attribute: true and path together; write the attribute as the path's last step @name")
        return path
    return f"@{name}" if attribute else name


def build_tree(tag: str, paths: list[str]) -> XmlNode:
    """The element tree of one line; slot i is ``paths[i]``. Raises XmlPathError on a conflict."""
    root = XmlNode(tag)
    seen: set[tuple[tuple[tuple[str, int], ...], str | None]] = set()
    for slot, path in enumerate(paths):
        try:
            _place(root, tag, slot, path, seen)
        except XmlPathError as exc:
            raise XmlPathError(str(exc), slot) from None
    return root


def _place(root: XmlNode, tag: str, slot: int, path: str, seen: set) -> None:
    elements, attribute = parse_path(path)
    key = (tuple(elements), attribute)
    if key in seen:
        raise XmlPathError(f"path {path!r} is written by two fields")
    seen.add(key)
    node = root
    for i, (step, occurrence) in enumerate(elements):
        if node.text is not None:
            raise XmlPathError(f"path {path!r}: {'/'.join(s for s, _ in elements[:i]) or tag} "
                               "holds text and cannot also hold elements")
        node = node.child(step, occurrence)
    if attribute is not None:
        node.attributes.append((attribute, slot))
    elif node is root:
        raise XmlPathError(f"path {path!r} names no element")
    elif node.children:
        raise XmlPathError(f"path {path!r}: the element holds elements and cannot also hold text")
    else:
        node.text = slot


def slot_order(node: XmlNode) -> list[int]:
    """The order in which a rendered element takes its texts: attributes, text, then children."""
    order = [slot for _, slot in node.attributes]
    if node.text is not None:
        order.append(node.text)
    for child in node.children:
        order.extend(slot_order(child))
    return order


def kept_slots(node: XmlNode, present: frozenset[int], is_line: bool = True) -> list[int]:
    """The slots written when only ``present`` slots have values, in slot order: an element
    with neither text nor a written child is dropped with its attributes."""
    inner: list[int] = []
    if node.text is not None and node.text in present:
        inner.append(node.text)
    for child in node.children:
        inner.extend(kept_slots(child, present, False))
    if not inner and not is_line:
        return []
    return [slot for _, slot in node.attributes if slot in present] + inner
