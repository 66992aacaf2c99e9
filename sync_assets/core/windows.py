"""Time-window partitions: a day or a month of data, asked with start/end query parameters or
addressed by path (IRIS residuals: `/residuals/reports/summary/{year}/{month}`).

A partition key ("2024-04-01") is a window [start, end) in the declared time zone. The requests of
one partition cover it whole, split into spans no longer than the API allows (SP-API finances: 180
days), ending no later than the API's minimum age before now (SP-API: 2 minutes), and starting a
lookback earlier when late changes must be picked up. The window is part of the write's scope: a
mirror replaces exactly the rows whose time column lies in it.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo

from .datasets import Column


class Granularity(str, Enum):
    DAY = "day"
    MONTH = "month"


@dataclass(frozen=True)
class TimeRange:
    """A scope value: rows whose column lies in [start, end)."""

    start: datetime
    end: datetime

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"


@dataclass(frozen=True)
class TimeWindows:
    granularity: Granularity
    first: date  # the first partition (IRIS history: 2024-04-01)
    start_param: str | None  # query parameter of the window's start ("postedAfter", "start_date"); None: by path only
    end_param: str | None = None  # and of its end, when the API takes one
    column: Column | None = None  # the rows' time column: a mirror's scope within the window
    max_span: timedelta | None = None  # longest window one request may ask
    min_age: timedelta = timedelta(0)  # the end is at least this long before now
    lookback: timedelta = timedelta(0)  # ask this much earlier than the window (late changes)
    timezone: str = "UTC"  # where days and months begin (Europe/Dublin for an Irish team)
    format: str = "iso"  # "iso" (UTC, "2024-04-01T00:00:00Z") or a strftime pattern in `timezone` ("%m/%d/%Y")
    end_inclusive: bool = False  # the API's end is the last day included ("to" date filters)
    # windows addressed by path: (column, strftime format) per route placeholder, e.g.
    # (Column("year", INT), "%Y"); the values (from the window's start, in its zone) are stored as
    # columns and are the mirror's scope
    path_columns: tuple[tuple[Column, str], ...] = ()
    # the most recent partitions the automation keeps refreshing (the current month and the one
    # before: 2); older ones are history, loaded once (a backfill) and never due again
    refresh_last: int = 1

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)  # an unknown zone fails at declaration
        if self.max_span is not None and self.max_span <= timedelta(0):
            raise ValueError("max_span must be positive")
        if self.end_inclusive and self.format == "iso":
            raise ValueError("end_inclusive applies to date formats, not to ISO instants")
        if self.start_param is None and not self.path_columns:
            raise ValueError("a window is asked by a start parameter or addressed by path columns")
        if self.refresh_last < 1:
            raise ValueError("refresh_last: at least the current window")

    @property
    def scope_columns(self) -> tuple[Column, ...]:
        """The columns whose values say which window a row belongs to."""
        return ((self.column,) if self.column else ()) + tuple(column for column, _ in self.path_columns)

    def path_values(self, key: str) -> dict[str, Any]:
        """The route placeholders of partition `key` (its window's start in the declared zone)."""
        start = self.window(key).start.astimezone(self.zone)
        return {column.name: int(start.strftime(fmt)) if column.type.value == "int64" else start.strftime(fmt)
                for column, fmt in self.path_columns}

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def window(self, key: str) -> TimeRange:
        """The partition `key` ("2024-04-01") as [start, end) in UTC."""
        day = date.fromisoformat(key[:10])
        if self.granularity is Granularity.MONTH:
            day = day.replace(day=1)
            following = day + timedelta(days=calendar.monthrange(day.year, day.month)[1])
        else:
            following = day + timedelta(days=1)
        return TimeRange(self._instant(day), self._instant(following))

    def spans(self, key: str, now: datetime) -> list[TimeRange]:
        """What to ask for partition `key` now: its window with the lookback, ending no later than
        now minus the minimum age, split into spans of at most `max_span`. Empty for a window that
        has not begun."""
        window = self.window(key)
        start = window.start - self.lookback
        end = min(window.end, now.astimezone(timezone.utc) - self.min_age)
        spans: list[TimeRange] = []
        while start < end:
            stop = min(end, start + self.max_span) if self.max_span else end
            spans.append(TimeRange(start, stop))
            start = stop
        return spans

    def params(self, span: TimeRange) -> dict[str, Any]:
        if self.start_param is None:
            return {}
        params = {self.start_param: self._format(span.start)}
        if self.end_param:
            # an inclusive "to" date names the day holding the window's last instant
            end = span.end - timedelta(microseconds=1) if self.end_inclusive else span.end
            params[self.end_param] = self._format(end)
        return params

    def _instant(self, day: date) -> datetime:
        return datetime.combine(day, time(0), self.zone).astimezone(timezone.utc)

    def _format(self, instant: datetime) -> str:
        if self.format == "iso":
            return instant.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return instant.astimezone(self.zone).strftime(self.format)
