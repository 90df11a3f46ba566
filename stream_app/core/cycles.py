"""Clearing cycles: tumbling windows aligned to a daily cut-off in a named time zone.

The default is plain UTC windows of ``size`` milliseconds aligned to the epoch.  With a time zone
(or a cut-off), a business day starts at the cut-off in local time and is divided into cycles of
``size`` local hours: 6-hour cycles from 02:00 Europe/Berlin start at 02:00, 08:00, 14:00 and
20:00 local time every day.  Boundaries are local wall-clock times, so a cycle that spans a
daylight-saving change is an hour shorter (spring) or longer (autumn) than the others; a
boundary that falls into the skipped hour is taken at the same UTC offset as the hour before it
(Python's ``fold=0``), an ambiguous one at its first occurrence.

Each cycle has a **business date** (the local date its business day started on) and a
**sequence** (its 1-based ordinal within that business day), both functions of the window alone.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

DAY_MS = 86_400_000
_UTC = UTC


class ClearingCycles:
    def __init__(self, size_ms: int, time_zone: str = "UTC", cutoff_ms: int = 0) -> None:
        self.size_ms = size_ms
        self.time_zone = time_zone
        self.cutoff_ms = cutoff_ms
        # Plain UTC windows aligned to the epoch: arithmetic, no calendar.
        self.plain = time_zone == "UTC" and cutoff_ms == 0
        if not self.plain and (DAY_MS % size_ms or cutoff_ms >= DAY_MS):
            raise ValueError("clearing cycles need a window size that divides 24 hours and a cut-off within the day")
        self._zone = ZoneInfo(time_zone)
        self._days: dict[date, list[int]] = {}
        self._last: tuple[int, int] = (0, 0)

    # -- boundaries ---------------------------------------------------------------------------
    def _boundaries(self, day: date) -> list[int]:
        """UTC epoch ms of every cycle start of a business day, then the next day's first."""
        cached = self._days.get(day)
        if cached is None:
            if len(self._days) > 4096:
                self._days.clear()
            base = datetime(day.year, day.month, day.day)
            starts = [base + timedelta(milliseconds=self.cutoff_ms + k * self.size_ms)
                      for k in range(DAY_MS // self.size_ms + 1)]
            cached = self._days[day] = [int(s.replace(tzinfo=self._zone).timestamp() * 1000) for s in starts]
        return cached

    def _business_day_of(self, t_ms: int) -> date:
        local = datetime.fromtimestamp(t_ms / 1000, tz=self._zone).replace(tzinfo=None)
        day = (local - timedelta(milliseconds=self.cutoff_ms)).date()
        while t_ms < self._boundaries(day)[0]:
            day -= timedelta(days=1)
        while t_ms >= self._boundaries(day)[-1]:
            day += timedelta(days=1)
        return day

    def start_of(self, t_ms: int) -> int:
        if self.plain:
            return t_ms - t_ms % self.size_ms
        start, end = self._last
        if start <= t_ms < end:
            return start
        bounds = self._boundaries(self._business_day_of(t_ms))
        i = bisect_right(bounds, t_ms) - 1
        self._last = (bounds[i], bounds[i + 1])
        return bounds[i]

    def end_of(self, start_ms: int) -> int:
        if self.plain:
            return start_ms + self.size_ms
        bounds = self._boundaries(self._business_day_of(start_ms))
        return bounds[bisect_right(bounds, start_ms)]

    # -- business calendar --------------------------------------------------------------------
    def business_day(self, start_ms: int) -> tuple[date, int]:
        """(business date, 1-based sequence of the cycle within it) of a cycle start."""
        if self.plain:
            day_start = start_ms - start_ms % DAY_MS
            first = -(-day_start // self.size_ms) * self.size_ms  # first window start in that day
            return datetime.fromtimestamp(day_start / 1000, tz=_UTC).date(), (start_ms - first) // self.size_ms + 1
        day = self._business_day_of(start_ms)
        return day, self._boundaries(day).index(start_ms) + 1

    def local(self, t_ms: int) -> datetime:
        return datetime.fromtimestamp(t_ms / 1000, tz=self._zone)
