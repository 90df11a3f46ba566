"""Fixed-width: every field has a width, alignment and pad character; lines carry a record type."""

from __future__ import annotations

from stream_app.core.formats.base import FormatError, Line, render_text


class FixedWidthFormatter:
    def __init__(self, encoding: str, line_ending: str, detail_record_type: str | None) -> None:
        self._encoding = encoding
        self._line_ending = line_ending
        self._detail_type = detail_record_type

    def format(self, lines: list[Line]) -> bytes:
        out: list[str] = []
        for number, line in enumerate(lines, start=1):
            record_type = line.record_type if line.kind != "detail" else (line.record_type or self._detail_type)
            parts = [record_type or ""]
            for spec, value in line.values:
                text = render_text(spec, value)
                width = spec.width or 0
                if len(text) > width:
                    raise FormatError(f"{line.kind} line {number}: field {spec.name!r} needs {len(text)} characters, "
                                      f"width is {width}", "FIELD_TOO_WIDE")
                align = spec.align or ("right" if spec.type in ("int", "decimal") else "left")
                parts.append(text.rjust(width, spec.pad) if align == "right" else text.ljust(width, spec.pad))
            out.append("".join(parts))
            out.append(self._line_ending)
        try:
            return "".join(out).encode(self._encoding)
        except UnicodeEncodeError as exc:
            raise FormatError(f"a value cannot be encoded as {self._encoding} (position {exc.start})",
                              "ENCODING_ERROR") from None
