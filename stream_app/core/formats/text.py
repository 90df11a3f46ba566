"""Text policy of line-based formats (CSV, fixed width): control characters and encoding.

A CR or LF inside a value splits a record for every line reader, and other C0/C1 controls
corrupt fixed positions or are rejected by receivers; a character the file's encoding cannot
hold would stop the whole file.  Each is a problem of one value, so it is decided per field:
rejected (the record's field is named) or, where the pack declares it, replaced
deterministically — control characters by ``controlReplacement``, non-encodable letters by a
fixed transliteration (decomposed accents dropped, a table for the rest).  Never the wall clock
or the locale: the same text always gives the same bytes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

# C0 (tab, CR and LF included), DEL, C1 (NEL included) and the Unicode line and paragraph separators.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Letters and signs that have no decomposition to ASCII; the rest of Latin comes from NFKD.
_TRANSLITERATION = str.maketrans({
    "ß": "ss", "ẞ": "SS", "Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "Œ": "OE", "œ": "oe", "Đ": "D", "đ": "d",
    "Ð": "D", "ð": "d", "Ł": "L", "ł": "l", "Þ": "TH", "þ": "th", "ı": "i", "Ħ": "H", "ħ": "h", "ŋ": "n", "Ŋ": "N",
    "‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-", "…": "...", "€": "EUR",
    "£": "GBP", "\u00a0": " ",
})


TEXT_ERROR_CLASS = {"controlChar": "CONTROL_CHAR", "encoding": "ENCODING_ERROR"}


class TextViolation(ValueError):
    """A value the policy refuses: ``rule`` is controlChar or encoding (no value in the message)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def encodable(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def transliterate(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.translate(_TRANSLITERATION))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


class TextPolicy:
    """Cleans or refuses one value's text under the pack's rules."""

    def __init__(self, encoding: str, control: str, replacement: str, unencodable: str) -> None:
        self.encoding = encoding
        self._replace_control = control == "replace"
        self._replacement = replacement
        self._transliterate = unencodable == "transliterate"
        self._ascii = encoding.lower().replace("_", "-") in ("ascii", "us-ascii")

    def encodable(self, text: str) -> bool:
        return text.isascii() if self._ascii else encodable(text, self.encoding)

    def clean(self, text: str) -> str:
        """``text`` as the file may hold it; TextViolation if the pack does not allow a repair."""
        if CONTROL.search(text):
            if not self._replace_control:
                raise TextViolation("controlChar", "a control character (CR, LF, tab or another C0/C1)")
            text = CONTROL.sub(self._replacement, text)
        if not self.encodable(text):
            if self._transliterate:
                text = transliterate(text)
            if not self.encodable(text):
                raise TextViolation("encoding", f"a character {self.encoding} cannot encode")
        return text

    def clean_texts(self, names: Sequence[str], texts: list[str]) -> list[str]:
        """``texts`` (of fields ``names``) cleaned, in one pass over them when all is well;
        FieldTextViolation names the first field refused."""
        joined = "".join(texts)
        if not CONTROL.search(joined) and self.encodable(joined):
            return texts
        cleaned = []
        for name, text in zip(names, texts):
            try:
                cleaned.append(self.clean(text))
            except TextViolation as exc:
                raise FieldTextViolation(name, exc) from None
        return cleaned

    def row_cleaner(self, names: Sequence[str]) -> Callable[[dict[str, Any]], None]:
        """A function that cleans the string values of ``names`` in a projected row in place
        (FieldTextViolation names the first field refused)."""
        def clean_row(row: dict[str, Any]) -> None:
            present = [name for name in names if type(row[name]) is str]
            texts = [row[name] for name in present]
            cleaned = self.clean_texts(present, texts)
            if cleaned is not texts:
                row.update(zip(present, cleaned))

        return clean_row


class FieldTextViolation(ValueError):
    def __init__(self, field: str, violation: TextViolation) -> None:
        super().__init__(f"field {field!r}: {violation}")
        self.field = field
        self.violation = violation
