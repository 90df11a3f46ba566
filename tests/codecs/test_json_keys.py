"""Duplicate keys in JSON input: a dead letter (DUPLICATE_KEY) unless the config keeps the last."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.codecs import DecodeError
from stream_app.codecs.json import JsonDecoder, duplicate_key
from stream_app.core.records import RawRecord

keys = st.sampled_from(["a", "b", "amount", 'q"uote', "k:"])
scalars = st.one_of(st.integers(-5, 5), st.booleans(), st.none(),
                    st.text(st.sampled_from(['"', ":", "{", "}", " ", "\n", "x", "\\"]), max_size=6))
# An object as a list of pairs, so that a key can be written twice.
objects = st.recursive(st.lists(st.tuples(keys, scalars), max_size=5),
                       lambda inner: st.lists(st.tuples(keys, st.one_of(scalars, inner, st.lists(inner, max_size=2))),
                                              max_size=5), max_leaves=12)


def write(value, style: str) -> str:
    """JSON text of pairs (duplicates kept) in one of the styles producers use."""
    colon, comma = {"compact": (":", ","), "spaced": (": ", ", "), "odd": (" :\t", " ,\n")}[style]
    if isinstance(value, list) and all(isinstance(p, tuple) for p in value):
        return "{" + comma.join(json.dumps(k) + colon + write(v, style) for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + comma.join(write(v, style) for v in value) + "]"
    return json.dumps(value)


def has_duplicate(value) -> bool:
    if isinstance(value, list) and all(isinstance(p, tuple) for p in value):
        names = [k for k, _ in value]
        return len(names) != len(set(names)) or any(has_duplicate(v) for _, v in value)
    if isinstance(value, list):
        return any(has_duplicate(v) for v in value)
    return False


@settings(max_examples=500, deadline=None)
@given(objects, st.sampled_from(["compact", "spaced", "odd"]))
def test_the_fast_check_finds_exactly_the_objects_with_a_key_twice(pairs, style):
    text = write(pairs, style).encode()
    assert (duplicate_key(text, orjson.loads(text)) is not None) == has_duplicate(pairs)


def decoder(policy: str = "reject") -> JsonDecoder:
    return JsonDecoder("at", ["amount"], 10_000, policy)  # type: ignore[arg-type]


def test_a_duplicated_key_is_a_dead_letter_naming_the_key_not_the_values():
    payload = b'{"at": 1772409600000, "amount": "10.00", "amount": "99999.00"}'
    with pytest.raises(DecodeError) as err:
        decoder().decode(RawRecord("in", 0, 0, None, None, payload))
    assert err.value.reason == "DUPLICATE_KEY" and err.value.detail == "key 'amount' appears twice in one object"
    assert "99999" not in str(err.value)
    kept = decoder("lastWins").decode(RawRecord("in", 0, 0, None, None, payload))
    assert str(kept.value["amount"]) == "99999.00"


def test_a_nested_duplicate_is_found_and_strings_that_look_like_keys_are_not():
    nested = b'{"at":1772409600000,"amount":"1","m":{"n":"x","n":"y"}}'
    with pytest.raises(DecodeError, match="key 'n'"):
        decoder().decode(RawRecord("in", 0, 0, None, None, nested))
    tricky = b'{"at":1772409600000,"amount":"1","note":"a\\":b {\\"amount\\":2}"}'
    assert decoder().decode(RawRecord("in", 0, 0, None, None, tricky)).value["note"] == 'a":b {"amount":2}'
