"""Time-window partitions: a month or a day in the declared time zone, asked as start/end
parameters split by the API's maximum span, ending the API's minimum age before now, with a
lookback; a mirror replaces exactly its window."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pytest

from sync_assets.core.datasets import Column, ColumnType, Dataset, WriteMode
from sync_assets.core.requests import plan_requests
from sync_assets.core.snapshot import Outcome, Snapshot, Validators
from sync_assets.core.windows import Granularity, TimeRange, TimeWindows
from sync_assets.warehouse import PostgresWarehouse

UTC = timezone.utc
T = ColumnType.TIMESTAMP


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_month_in_dublin_starts_at_local_midnight_across_summer_time() -> None:
    months = TimeWindows(Granularity.MONTH, date(2024, 4, 1), "from", "to", timezone="Europe/Dublin",
                         format="%m/%d/%Y", end_inclusive=True)
    april = months.window("2024-04-01")
    assert (april.start, april.end) == (utc(2024, 3, 31, 23), utc(2024, 4, 30, 23))  # IST is UTC+1
    assert months.window("2024-10-01").end == utc(2024, 11, 1, 0)  # back to GMT in October
    assert months.params(april) == {"from": "04/01/2024", "to": "04/30/2024"}  # an inclusive "to" date


def test_spans_respect_the_maximum_span_the_minimum_age_and_the_lookback() -> None:
    finances = TimeWindows(Granularity.MONTH, date(2024, 1, 1), "postedAfter", "postedBefore",
                           max_span=timedelta(days=10), min_age=timedelta(minutes=2), lookback=timedelta(days=2))
    spans = finances.spans("2026-11-01", now=utc(2026, 12, 1, 12))
    assert spans[0].start == utc(2026, 10, 30) and spans[-1].end == utc(2026, 12, 1)
    assert all(s.end - s.start <= timedelta(days=10) for s in spans) and len(spans) == 4
    assert all(a.end == b.start for a, b in zip(spans, spans[1:]))  # contiguous: nothing missed, nothing twice
    assert finances.params(spans[0]) == {"postedAfter": "2026-10-30T00:00:00Z", "postedBefore": "2026-11-09T00:00:00Z"}

    current = finances.spans("2026-12-01", now=utc(2026, 12, 1, 12))  # the month in progress: up to 2 min ago
    assert current[-1].end == utc(2026, 12, 1, 11, 58)
    assert finances.spans("2027-01-01", now=utc(2026, 12, 1, 12)) == []  # not begun: nothing to ask


SALES = Dataset(
    api="window_test",
    name="sales",
    route="/sales",
    description="Sales by month; the month's sales mirrored.",
    columns=(Column("sale_id", ColumnType.INT64), Column("sold_at", T), Column("amount", ColumnType.FLOAT64)),
    primary_key=("sale_id",),
    windows=TimeWindows(Granularity.MONTH, date(2026, 1, 1), "from", "to", column=Column("sold_at", T)),
    write_mode=WriteMode.MIRROR,
    cache_seconds=3600,
)


def snapshot(month: str, sales: list[tuple[int, datetime]], at: datetime) -> Snapshot:
    [request] = plan_requests(SALES, month, now=utc(2026, 12, 15))
    assert isinstance(request.context["sold_at"], TimeRange)
    frame = pd.DataFrame({"sale_id": [s for s, _ in sales], "sold_at": [t for _, t in sales], "amount": [1.0] * len(sales)})
    frame = frame.astype({c.name: c.pandas_dtype for c in SALES.columns})
    return Snapshot(SALES.key, request.state_key, Outcome.CHANGED, Validators(last_modified=at), frame, context=request.context)


def test_a_mirror_by_month_replaces_its_month_only(database_url: str) -> None:
    wh = PostgresWarehouse(database_url=database_url)
    wh.write_snapshot(SALES, snapshot("2026-10-01", [(1, utc(2026, 10, 3)), (2, utc(2026, 10, 31, 23))], utc(2026, 11, 1)))
    wh.write_snapshot(SALES, snapshot("2026-11-01", [(3, utc(2026, 11, 1)), (4, utc(2026, 11, 20))], utc(2026, 12, 1)))
    result = wh.write_snapshot(SALES, snapshot("2026-10-01", [(2, utc(2026, 10, 31, 23))], utc(2026, 11, 2)))
    assert (result.inserted, result.deleted, result.total) == (0, 1, 1)
    assert wh.read_table(SALES)["sale_id"].tolist() == [2, 3, 4]
    assert wh.count_rows(SALES, ["2026-11-01"]) == 2 and wh.count_rows(SALES, ["2026-10-01", "2026-11-01"]) == 3


def test_declarations_refuse_a_window_mirror_without_its_column() -> None:
    with pytest.raises(ValueError, match="needs the window's column"):
        Dataset(api="x", name="y", route="/y", description="", columns=(Column("id", ColumnType.INT64),), primary_key=("id",),
                windows=TimeWindows(Granularity.DAY, date(2026, 1, 1), "from"), write_mode=WriteMode.MIRROR, cache_seconds=60)
