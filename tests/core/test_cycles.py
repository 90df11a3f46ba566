"""Clearing cycles: windows from a cut-off in a time zone, DST-correct, with business dates."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.config import ConfigError, parse_config
from stream_app.core.cycles import ClearingCycles
from tests.helpers import config_dict

H = 3_600_000
BERLIN = ZoneInfo("Europe/Berlin")


def ms(*args: int, tz: timezone | ZoneInfo = UTC) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


def test_plain_utc_windows_are_epoch_aligned():
    cycles = ClearingCycles(6 * H)
    t = ms(2026, 3, 2, 13, 5)
    assert cycles.start_of(t) == ms(2026, 3, 2, 12) and cycles.end_of(ms(2026, 3, 2, 12)) == ms(2026, 3, 2, 18)
    assert cycles.business_day(ms(2026, 3, 2, 12)) == (date(2026, 3, 2), 3)


def test_cycles_start_at_the_local_cut_off():
    cycles = ClearingCycles(6 * H, "Europe/Berlin", 2 * H)
    # 2026-01-15 is winter time (UTC+1): 02:00 local = 01:00 UTC
    start = cycles.start_of(ms(2026, 1, 15, 9, 30, tz=BERLIN))
    assert start == ms(2026, 1, 15, 8, tz=BERLIN) and cycles.end_of(start) == ms(2026, 1, 15, 14, tz=BERLIN)
    assert cycles.business_day(start) == (date(2026, 1, 15), 2)
    # 01:30 local belongs to the previous business day's last cycle (20:00 - 02:00)
    late = cycles.start_of(ms(2026, 1, 16, 1, 30, tz=BERLIN))
    assert late == ms(2026, 1, 15, 20, tz=BERLIN) and cycles.business_day(late) == (date(2026, 1, 15), 4)


def test_a_cycle_spanning_the_spring_change_is_five_hours_and_autumn_seven():
    cycles = ClearingCycles(6 * H, "Europe/Berlin", 0)
    # 2026-03-29: clocks go from 02:00 to 03:00 local; the 00:00-06:00 cycle has 5 real hours
    spring = cycles.start_of(ms(2026, 3, 29, 1, 0))  # 01:00 UTC = 03:00 CEST
    assert spring == ms(2026, 3, 29, 0, tz=BERLIN) and cycles.end_of(spring) - spring == 5 * H
    # 2026-10-25: clocks go from 03:00 back to 02:00; the 00:00-06:00 cycle has 7 real hours
    autumn = cycles.start_of(ms(2026, 10, 25, 3, 0))
    assert autumn == ms(2026, 10, 25, 0, tz=BERLIN) and cycles.end_of(autumn) - autumn == 7 * H
    assert cycles.business_day(autumn) == (date(2026, 10, 25), 1)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=ms(2020, 1, 1), max_value=ms(2035, 1, 1)),
       st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kolkata"]),
       st.sampled_from([H, 4 * H, 6 * H, 12 * H, 24 * H]), st.integers(min_value=0, max_value=23 * 60))
def test_cycles_tile_time_without_gaps_or_overlaps(t, zone, size, cutoff_minutes):
    cycles = ClearingCycles(size, zone, cutoff_minutes * 60_000)
    start = cycles.start_of(t)
    end = cycles.end_of(start)
    assert start <= t < end
    assert cycles.start_of(end) == end and cycles.start_of(start - 1) < start  # neighbours touch
    assert cycles.end_of(cycles.start_of(start - 1)) == start
    day, sequence = cycles.business_day(start)
    assert 1 <= sequence <= 24 * H // size


def test_config_names_a_bad_zone_and_a_size_that_does_not_divide_a_day(tmp_path):
    with pytest.raises(ConfigError, match="unknown time zone"):
        parse_config(config_dict(tmp_path, window={"timeZone": "Mars/Olympus"}))
    with pytest.raises(ConfigError, match="must divide 24 hours"):
        parse_config(config_dict(tmp_path, window={"timeZone": "Europe/Berlin", "sizeMs": 7 * H}))


def test_business_date_and_sequence_reach_the_templates(tmp_path):
    from stream_app.core.records import SourceRecord
    from stream_app.core.windows import FileCut, FileKey
    from stream_app.pipeline.wiring import build_assembler, window_policy

    settings = parse_config(config_dict(tmp_path, fileScope="window", window={"timeZone": "Europe/Berlin",
                            "cutoff": "02:00", "sizeMs": 6 * H}, parties={"senderId": "S1", "receiverId": "R1"},
                            fileNameTemplate="F_{{ business_date | ts('%Y%m%d') }}_{{ file_sequence }}_{{ part }}.txt",
                            headerTemplate="H|{{ sender_id }}|{{ receiver_id }}|{{ window_start | ts }}\n"))
    policy = window_policy(settings)
    t = ms(2026, 7, 1, 0, 30, tz=BERLIN)  # summer: belongs to 2026-06-30's 20:00 cycle
    start = policy.start_of(t)
    key = FileKey(None, None, start, policy.end_of(start))
    record = SourceRecord("in", 0, 0, t, {"record_id": "a", "amount": __import__("decimal").Decimal("1"),
                                          "currency": "EUR"})
    assembled = build_assembler(settings).assemble(FileCut.of(key, 0, [record]))
    assert assembled.name == "F_20260630_4_0.txt"
    assert assembled.body.startswith(b"H|S1|R1|2026-06-30T18:00:00Z\n")
    assert timedelta(milliseconds=key.window_end_ms - key.window_start_ms) == timedelta(hours=6)
