"""Fixed-width: every field has a width, alignment and pad character; lines carry a record type."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from stream_app.core.formats.base import DetailWriter, FormatError, Line, clean_line_texts, line_writer, render_text
from stream_app.core.formats.text import TextPolicy
from stream_app.core.structured.pack import FieldSpec


class FixedWidthFormatter:
    def __init__(self, encoding: str, line_ending: str, detail_record_type: str | None, text: TextPolicy) -> None:
        self._encoding = encoding
        self._line_ending = line_ending
        self._detail_type = detail_record_type
        self._text = text

    def line(self, line: Line) -> bytes:
        record_type = line.record_type if line.kind != "detail" else (line.record_type or self._detail_type)
        parts = [record_type or ""]
        texts = clean_line_texts(self._text, line, [render_text(spec, value) for spec, value in line.values])
        for (spec, _), text in zip(line.values, texts):
            width = spec.width or 0
            if len(text) > width:
                raise FormatError(f"{line.kind} line: field {spec.name!r} needs {len(text)} characters, "
                                  f"width is {width}", "FIELD_TOO_WIDE")
            align = spec.align or ("right" if spec.type in ("int", "decimal") else "left")
            parts.append(text.rjust(width, spec.pad) if align == "right" else text.ljust(width, spec.pad))
        parts.append(self._line_ending)
        return "".join(parts).encode(self._encoding)  # every text passed the encoding check

    def begin(self, header: list[Line]) -> bytes:
        return b"".join(self.line(line) for line in header)

    def end(self, trailer: list[Line]) -> bytes:
        return b"".join(self.line(line) for line in trailer)

    def detail_writer(self, fields: Sequence[FieldSpec]) -> DetailWriter:
        return line_writer(self, fields)

    def validate(self, chunks: Callable[[], Iterator[bytes]]) -> None:
        return None
