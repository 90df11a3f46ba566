"""CSV: delimiter, quoting, header row and line ending from the pack."""

from __future__ import annotations

import csv
import io

from stream_app.core.formats.base import Line, render_text
from stream_app.core.structured.pack import CsvSpec

_QUOTING = {"minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL, "none": csv.QUOTE_NONE}


class CsvFormatter:
    def __init__(self, spec: CsvSpec, encoding: str, line_ending: str, column_names: list[str]) -> None:
        self._spec = spec
        self._encoding = encoding
        self._line_ending = line_ending
        self._columns = column_names

    def format(self, lines: list[Line]) -> bytes:
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=self._spec.delimiter, quotechar=self._spec.quoteChar,
                            quoting=_QUOTING[self._spec.quoting], lineterminator=self._line_ending,
                            escapechar="\\" if self._spec.quoting == "none" else None)
        wrote_columns = False
        for line in lines:
            if line.kind == "detail" and not wrote_columns and self._spec.headerRow:
                writer.writerow(self._columns)
                wrote_columns = True
            row = [line.record_type] if line.record_type is not None else []
            row.extend(render_text(spec, value) for spec, value in line.values)
            writer.writerow(row)
        return buf.getvalue().encode(self._encoding)
