"""What both stages do with a decoded input record before windowing or routing it: take the
decoder's verdict, check the event time is plausible, and name the dead-letter reason of a
record that is rejected.  One set of rules, so both scopes reject the same records the same way.
"""

from __future__ import annotations

from typing import cast

from stream_app.codecs import DecodeError
from stream_app.core.records import SourceRecord
from stream_app.core.structured.project import InvalidRecord
from stream_app.core.windows import MissingGroupField, WindowPolicy

# What rejects one record (a dead letter), never the batch.
REJECTED = (DecodeError, MissingGroupField, InvalidRecord)


def admitted(decoded: object, policy: WindowPolicy, watermark_ms: int | None) -> SourceRecord:
    """The decoded record, once its event time is plausible; raises why it is not admitted."""
    if type(decoded) is not SourceRecord:
        raise cast(DecodeError, decoded)  # the decoder's verdict on bytes it could not read
    implausible = policy.out_of_range(decoded.event_time_ms, watermark_ms)
    if implausible is not None:
        raise DecodeError("EVENT_TIME_OUT_OF_RANGE", implausible)
    return decoded


def rejection(exc: Exception) -> tuple[str, str]:
    """The dead-letter reason and detail of one of ``REJECTED``."""
    if isinstance(exc, DecodeError):
        return exc.reason, exc.detail
    if isinstance(exc, MissingGroupField):
        return "MISSING_GROUP_FIELD", str(exc)
    if isinstance(exc, InvalidRecord):
        return "VALIDATION_FAILED", exc.violation.describe()
    raise TypeError(f"not a record rejection: {type(exc).__name__}")
