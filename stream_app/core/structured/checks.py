"""Trailer checks: a trailer field that must equal what the detail lines as written add up to.

``check: count`` or ``check: "sum(<detail field>)"`` on a trailer field; on a ``forEach`` line
the check holds per key of the line's aggregate (``StructuredPart.check_trailer`` recounts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream_app.core.structured.pack import SchemaPack


@dataclass(frozen=True, slots=True)
class TrailerCheck:
    """``trailer[line].field`` must equal the count of the detail lines as written (``summed``
    None) or the sum of their ``summed`` field; per key of the line's forEach aggregate when
    ``group_by`` names its group fields."""

    line: int
    field: str
    summed: str | None
    group_by: tuple[str, ...] = ()


def trailer_checks(pack: SchemaPack) -> list[TrailerCheck]:
    """Each trailer field's check against the detail lines as written."""
    detail = {f.spec.name: f.spec for f in (pack.body_fields if pack.spec.body else pack.fields) if f.spec.output}
    aggregates = {a.name: a for a in pack.spec.aggregates}
    for where, fields in (*((f"header[{i}]", f) for i, f in enumerate(pack.header)),
                          ("fields", pack.fields), ("body.fields", pack.body_fields)):
        for field in fields:
            if field.spec.check is not None:
                raise pack.error(f"{where}.{field.spec.name}", "check", "checks belong to trailer fields")
    checks = []
    for i, (line, fields) in enumerate(zip(pack.spec.trailer, pack.trailer)):
        for field in fields:
            check = field.spec.check
            if check is None:
                continue
            where = f"trailer[{i}].fields.{field.spec.name}"
            group_by: tuple[str, ...] = ()
            if line.forEach is not None:
                # one line per key: recounted over the detail lines whose group fields read that key
                group_by = tuple(aggregates[line.forEach].groupBy)
                hidden = [name for name in group_by if name not in detail]
                if hidden:
                    raise pack.error(where, "check", f"{check} per {line.forEach} key: the group field "
                                                     f"{hidden[0]!r} is not an output field of the detail lines")
            summed = None if check == "count" else check[4:-1]
            if summed is not None and (summed not in detail or detail[summed].type not in ("int", "decimal")):
                raise pack.error(where, "check", f"{check}: {summed!r} is not a numeric output field of the "
                                                 "detail lines")
            checks.append(TrailerCheck(i, field.spec.name, summed, group_by))
    return checks
