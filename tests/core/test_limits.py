"""Part limits beyond the record count (core/limits.py): greedy in file order, a function of the
records alone, and the split of what follows a cut is the tail of the whole split."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.core.limits import PartLimits, split
from stream_app.core.records import SourceRecord
from stream_app.core.windows import FileKey

KEY = FileKey("in", 0, 0, 3_600_000)


def record(i: int, amount: str, currency: str = "EUR", size: int = 10) -> SourceRecord:
    return SourceRecord("in", 0, i, 0, {"amount": Decimal(amount), "currency": currency, "size": size})


def weigh(key: FileKey, part: int, r: SourceRecord, seq: int) -> int:
    return r.value["size"] + len(str(seq))  # a line that names its sequence number


def test_amount_limit_is_per_currency_on_absolute_amounts_and_cuts_before_the_record():
    records = [record(0, "60"), record(1, "-30", "USD"), record(2, "-30"), record(3, "20"), record(4, "90", "USD")]
    parts = split(records, PartLimits(100, Decimal("100")), KEY, 0)
    assert [([r.offset for r in part], reason) for part, reason in parts] == [([0, 1, 2], "amount"), ([3, 4], "count")]


def test_a_record_over_the_limit_alone_is_a_part_of_its_own():
    parts = split([record(0, "10"), record(1, "500"), record(2, "10")], PartLimits(100, Decimal("100")), KEY, 0)
    assert [[r.offset for r in part] for part, _ in parts] == [[0], [1], [2]]


def test_the_byte_limit_counts_each_records_rendered_line_and_the_count_still_cuts():
    records = [record(i, "1", size=30) for i in range(10)]
    parts = split(records, PartLimits(4, max_detail_bytes=100, weigh=weigh), KEY, 0)
    assert [(len(part), reason) for part, reason in parts] == [(3, "size"), (3, "size"), (3, "size"), (1, "count")]
    parts = split(records, PartLimits(2, max_detail_bytes=100, weigh=weigh), KEY, 0)
    assert [(len(part), reason) for part, reason in parts] == [(2, "count")] * 5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-5000, 5000), st.sampled_from(["EUR", "USD"]), st.integers(1, 60)),
                max_size=60),
       st.integers(1, 12), st.integers(50, 300), st.integers(40, 200))
def test_greedy_parts_respect_every_limit_and_a_resumed_split_is_the_tail(rows, max_records, max_amount, max_bytes):
    records = [record(i, str(Decimal(a) / 100), c, s) for i, (a, c, s) in enumerate(rows)]
    limits = PartLimits(max_records, Decimal(max_amount), max_detail_bytes=max_bytes, weigh=weigh)
    parts = split(records, limits, KEY, 0)
    assert [r for part, _ in parts for r in part] == records  # nothing lost, nothing moved
    for part, _ in parts:
        assert 1 <= len(part) <= max_records
        if len(part) > 1:  # a single record is a part of its own whatever its size
            assert sum(weigh(KEY, 0, r, seq) for seq, r in enumerate(part, 1)) <= max_bytes
            for currency in ("EUR", "USD"):
                assert sum(abs(r.value["amount"]) for r in part if r.value["currency"] == currency) <= max_amount
    # after a restart that resumes behind the first k written parts, the rest is cut the same
    for k in range(len(parts)):
        resumed = split([r for part, _ in parts[k:] for r in part], limits, KEY, k)
        assert [[r.offset for r in p] for p, _ in resumed] == [[r.offset for r in p] for p, _ in parts[k:]]
