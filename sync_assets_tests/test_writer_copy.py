"""The writer's COPY: timestamps exact whatever the server's time zone, the CSV streamed in batches,
and a first sync of a partition COPYed straight into the table (no stage, no merge)."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from sync_assets.apis.esi.datasets import MARKET_ORDERS, MARKET_PRICES
from sync_assets.warehouse import PostgresWarehouse, writer

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
