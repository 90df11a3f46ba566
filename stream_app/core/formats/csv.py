"""CSV: delimiter, quoting, header row and line ending from the pack."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

from stream_app.core.formats.base import DetailWriter, Line, clean_line_texts, line_writer, render_text
from stream_app.core.formats.text import TextPolicy
from stream_app.core.structured.pack import CsvSpec, FieldSpec

_QUOTING: dict[str, Literal[0, 1, 2, 3]] = {"minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL,
                                            "none": csv.QUOTE_NONE}


class CsvFormatter:
    def __init__(self, spec: CsvSpec, encoding: str, line_ending: str, column_names: list[str],
                 text: TextPolicy) -> None:
        self._spec = spec
        self._text = text
        self._encoding = encoding
        self._columns = column_names
        self._buf = io.StringIO()
        self._writer = csv.writer(self._buf, delimiter=spec.delimiter, quotechar=spec.quoteChar,
                                  quoting=_QUOTING[spec.quoting], lineterminator=line_ending,
                                  escapechar="\\" if spec.quoting == "none" else None)

    def _rows(self, rows: list[list[str]]) -> bytes:
        self._buf.seek(0)
        self._buf.truncate()
        self._writer.writerows(rows)
        return self._buf.getvalue().encode(self._encoding)

    def _row(self, line: Line) -> list[str]:
        row = [line.record_type] if line.record_type is not None else []
        row.extend(clean_line_texts(self._text, line, [render_text(spec, value) for spec, value in line.values]))
        return row

    def begin(self, header: list[Line]) -> bytes:
        rows = [self._row(line) for line in header]
        if self._spec.headerRow:
            rows.append(self._columns)
        return self._rows(rows)

    def line(self, line: Line) -> bytes:
        return self._rows([self._row(line)])

    def end(self, trailer: list[Line]) -> bytes:
        return self._rows([self._row(line) for line in trailer])

    def detail_writer(self, fields: Sequence[FieldSpec]) -> DetailWriter:
        return line_writer(self, fields)

    def validate(self, chunks: Callable[[], Iterator[bytes]]) -> None:
        return None
