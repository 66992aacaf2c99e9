"""The writer's COPY: timestamps exact whatever the server's time zone, the input streamed in batches,
binary and CSV storing the same values, and a first sync of a partition COPYed straight into the
table (no stage, no merge)."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from sync_assets.apis.esi.datasets import MARKET_ORDERS, MARKET_PRICES
from sync_assets.core import rows as page_rows
from sync_assets.core.datasets import Column, ColumnType, Dataset
from sync_assets.fetch.frames import rows_to_frame
from sync_assets.warehouse import PostgresWarehouse, writer
from sync_assets.warehouse.tables import ensure_table, table_name

from .test_warehouse import T0, orders, prices


@pytest.fixture
def far_east_database(database_url: str) -> str:
    """The test database with a session time zone of UTC+14, to catch a naive timestamp read as local."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{make_url(database_url).database}" SET timezone = \'Pacific/Kiritimati\''))
    engine.dispose()
    return database_url


def _epochs(url: str, region: int) -> dict[int, float]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT order_id, extract(epoch FROM issued) FROM esi.market_orders WHERE region_id = :r"),
                            {"r": region}).all()
    engine.dispose()
    return {int(order_id): float(epoch) for order_id, epoch in rows}


@pytest.mark.parametrize("batch_rows", [writer.COPY_BATCH_ROWS, 2])
def test_timestamps_are_stored_exactly_in_both_write_paths_whatever_the_server_time_zone(
    far_east_database: str, batch_rows: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(writer, "COPY_BATCH_ROWS", batch_rows)
    wh = PostgresWarehouse(database_url=far_east_database)
    issued = pd.Timestamp("2026-11-20T08:14:03.250000Z")
    first = orders("10000002", [1, 2, 3, 4, 5])
    first.frame["issued"] = pd.Series([issued] * 5, dtype="datetime64[us, UTC]")
    result = wh.write_snapshot(MARKET_ORDERS, first)  # empty partition: straight COPY
    assert (result.inserted, result.updated, result.deleted, result.total) == (5, 0, 0, 5)
    assert _epochs(far_east_database, 10000002) == {i: issued.timestamp() for i in range(1, 6)}

    later = issued + timedelta(hours=3, microseconds=1)
    second = orders("10000002", [4, 5, 6], lm=T0 + timedelta(minutes=5))
    second.frame["issued"] = pd.Series([issued, later, later], dtype="datetime64[us, UTC]")
    result = wh.write_snapshot(MARKET_ORDERS, second)  # stage + merge
    assert (result.inserted, result.updated, result.deleted, result.total) == (1, 1, 3, 3)
    assert _epochs(far_east_database, 10000002) == {4: issued.timestamp(), 5: later.timestamp(), 6: later.timestamp()}
    table = wh.read_table(MARKET_ORDERS, ["10000002"])
    assert table["issued"].tolist() == [issued, later, later]


def test_a_first_sync_is_copied_straight_in_and_a_later_one_is_merged(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    wh = PostgresWarehouse(database_url=database_url)
    staged: list[str] = []
    create_stage = writer._create_stage
    monkeypatch.setattr(writer, "_create_stage", lambda conn, dataset: (staged.append(dataset.key), create_stage(conn, dataset))[1])
    wh.write_snapshot(MARKET_ORDERS, orders("10000002", [1, 2, 3]))
    wh.write_snapshot(MARKET_ORDERS, orders("10000043", [1, 2]))  # another partition's first sync: the same keys, its own scope
    wh.write_snapshot(MARKET_PRICES, prices([(1, 1.0, 1.0)]))  # unpartitioned, empty table
    assert staged == []
    result = wh.write_snapshot(MARKET_ORDERS, orders("10000002", [3, 4], price=2.0, lm=T0 + timedelta(minutes=5)))
    assert staged == [MARKET_ORDERS.key]
    assert (result.inserted, result.updated, result.deleted, result.total) == (1, 1, 2, 2)
    assert wh.read_table(MARKET_ORDERS, ["10000043"])["order_id"].tolist() == [1, 2]
    # a partition emptied by an earlier mirror snapshot is copied straight in again
    assert wh.write_snapshot(MARKET_ORDERS, orders("10000043", [], lm=T0 + timedelta(minutes=5))).total == 0
    staged.clear()
    assert wh.write_snapshot(MARKET_ORDERS, orders("10000043", [7], lm=T0 + timedelta(minutes=10))).inserted == 1
    assert staged == []


# Every column type, with the values text formats get wrong: COPY's binary format (what the writer
# uses when a table has no DECIMAL column) must store exactly what its CSV does.
_T = ColumnType
EVERY_TYPE = Dataset(
    api="t", name="every_type", route="/t", description="one column of each type", primary_key=("id",), cache_seconds=60,
    columns=(Column("id", _T.INT64), Column("n", _T.INT64, required=False), Column("x", _T.FLOAT64, required=False),
             Column("b", _T.BOOL, required=False), Column("s", _T.STRING, required=False),
             Column("at", _T.TIMESTAMP, required=False), Column("day", _T.DATE, required=False),
             Column("doc", _T.JSON, required=False)),
)
WITH_DECIMAL = Dataset(api="t", name="with_decimal", route="/t", description="money", primary_key=("id",), cache_seconds=60,
                       columns=(Column("id", _T.INT64), Column("amount", _T.DECIMAL, required=False),
                                Column("at", _T.TIMESTAMP, required=False)))


def _every_type_records() -> list[dict]:
    odd_floats = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 5e-324, 1.7976931348623157e308, 0.1 + 0.2]
    odd_strings = ["", "é ☃ 𝄞", 'a "quoted", comma', "line\nbreak\ttab\\back", "NULL", r"\N", " "]
    odd_times = ["1999-12-31T23:59:59.999999Z", "2000-01-01T00:00:00Z", "1969-07-20T20:17:40.000001Z",
                 "2026-11-20T08:14:03.25Z", "9999-12-31T23:59:59Z"]
    odd_days = ["1999-12-31", "2000-01-01", "1901-02-03", "2024-02-29"]
    odd_docs = [{"a": [1, 2.5, None, "x"]}, [], {"q": "a \"b\", c\n"}, [12, {}], {"nested": {"é": "☃"}}, {"big": 1e300}]
    records = []
    for i in range(60):
        records.append({"id": i, "n": [None, 0, -1, 2**63 - 1, -(2**63)][i % 5], "x": None if i % 9 == 8 else odd_floats[i % 8],
                        "b": [True, False, None][i % 3], "s": None if i % 8 == 7 else odd_strings[i % 7],
                        "at": None if i % 6 == 5 else odd_times[i % 5], "day": None if i % 5 == 4 else odd_days[i % 4],
                        "doc": None if i % 7 == 6 else odd_docs[i % 6]})
    return records


def _copied_rows(database_url: str, dataset: Dataset, rows, binary: bool, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The rows as the server stores them (each row's text form), COPYed in one format or the other."""
    monkeypatch.setattr(writer, "BINARY_COPY_TYPES", frozenset(ColumnType) if binary else frozenset())
    engine = create_engine(database_url)
    with engine.begin() as conn:
        ensure_table(conn, dataset)
        conn.execute(text(f"TRUNCATE {table_name(dataset)}"))
        writer._copy(conn, table_name(dataset), dataset, rows)
        conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))  # timestamps shown in UTC whichever format set what
        stored = [row for (row,) in conn.execute(text(f"SELECT t::text FROM {table_name(dataset)} t ORDER BY id"))]
    engine.dispose()
    return stored


@pytest.mark.parametrize("shape", ["frame", "arrow"])
def test_binary_copy_stores_exactly_what_csv_does_for_every_column_type(
    far_east_database: str, shape: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = _every_type_records()
    frame = rows_to_frame(records, EVERY_TYPE.columns, "t")
    rows = frame if shape == "frame" else page_rows.to_arrow(frame, EVERY_TYPE.columns)
    monkeypatch.setattr(writer, "COPY_BATCH_ROWS", 7)  # several encoded batches in one COPY
    as_csv = _copied_rows(far_east_database, EVERY_TYPE, rows, binary=False, monkeypatch=monkeypatch)
    as_binary = _copied_rows(far_east_database, EVERY_TYPE, rows, binary=True, monkeypatch=monkeypatch)
    assert len(as_binary) == len(records) and as_binary == as_csv
    assert as_binary[0].startswith('(0,,0,t,"","1999-12-31 23:59:59.999999+00",1999-12-31,')  # the instant, whatever the zone
    assert as_binary[1].startswith("(1,0,-0,f,") and as_binary[2].startswith("(2,-1,,,")  # a frame's NaN is its null
    assert as_binary[3].startswith("(3,9223372036854775807,Infinity,") and as_binary[4].startswith("(4,-9223372036854775808,-Infinity,")
    assert '"1969-07-20 20:17:40.000001+00"' in as_binary[2] and ',1901-02-03,' in as_binary[2]


def test_a_table_with_a_decimal_column_is_copied_as_csv_keeping_each_value_as_written(
    database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame = rows_to_frame([{"id": 1, "amount": "12.50", "at": "2026-01-02T03:04:05Z"}, {"id": 2, "amount": 7}], WITH_DECIMAL.columns, "t")
    formats: list[str] = []
    real_copy_stream = writer._CsvStream
    monkeypatch.setattr(writer, "_CsvStream", lambda table: (formats.append("csv"), real_copy_stream(table))[1])
    engine = create_engine(database_url)
    with engine.begin() as conn:
        ensure_table(conn, WITH_DECIMAL)
        writer._copy(conn, table_name(WITH_DECIMAL), WITH_DECIMAL, frame)
        stored = conn.execute(text(f"SELECT amount::text, extract(epoch FROM at) FROM {table_name(WITH_DECIMAL)} ORDER BY id")).all()
    engine.dispose()
    assert formats == ["csv"]
    assert [amount for amount, _ in stored] == ["12.50", "7"]
    assert float(stored[0][1]) == pd.Timestamp("2026-01-02T03:04:05Z").timestamp()
