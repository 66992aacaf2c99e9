"""The warehouse against a real PostgreSQL: merges, atomicity, sync state, clear failures."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from sync_assets.core.snapshot import Outcome, Snapshot, Validators
from sync_assets.apis.esi.datasets import MARKET_ORDERS, MARKET_PRICES
from sync_assets.warehouse import DatabaseUnavailable, PostgresWarehouse, SchemaMismatch

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def prices(rows: list[tuple[int, float | None, float]], lm: datetime = T0, etag: str = '"a"') -> Snapshot:
    frame = pd.DataFrame(rows, columns=["type_id", "average_price", "adjusted_price"]).astype(
        {c.name: c.pandas_dtype for c in MARKET_PRICES.columns}
    )
    return Snapshot(MARKET_PRICES.key, "", Outcome.CHANGED, Validators((etag,), lm, lm + timedelta(hours=1)), frame)


def orders(region: str, ids: list[int], price: float = 1.0, lm: datetime = T0) -> Snapshot:
    n = len(ids)
    frame = pd.DataFrame(
        {
            "order_id": ids, "type_id": [34] * n, "is_buy_order": [False] * n, "price": [price] * n,
            "volume_remain": [5] * n, "volume_total": [10] * n, "min_volume": [1] * n, "range": ["station"] * n,
            "location_id": [60003760] * n, "system_id": [30000142] * n,
            "issued": [pd.Timestamp("2026-11-20T08:14:03Z")] * n, "duration": [90] * n,
        }
    ).astype({c.name: c.pandas_dtype for c in MARKET_ORDERS.columns})
    frame.insert(0, "region_id", pd.Series([int(region)] * n, dtype="int64"))
    validators = Validators(('"p1"',), lm, lm + timedelta(minutes=5))
    return Snapshot(MARKET_ORDERS.key, region, Outcome.CHANGED, validators, frame, context={"region_id": int(region)})


def test_mirror_upserts_changes_and_deletes_only_what_vanished(database_url: str) -> None:
    wh = PostgresWarehouse(database_url=database_url)
    first = wh.write_snapshot(MARKET_PRICES, prices([(1, 10.0, 9.0), (2, None, 5.0), (3, 7.0, 7.0)]))
    assert (first.inserted, first.updated, first.deleted, first.total) == (3, 0, 0, 3)
    second = wh.write_snapshot(MARKET_PRICES, prices([(1, 10.0, 9.0), (2, 6.0, 5.0), (4, 1.0, 1.0)], lm=T0 + timedelta(hours=1)))
    assert (second.inserted, second.updated, second.deleted, second.total) == (1, 1, 1, 3)
    table = wh.read_table(MARKET_PRICES)
    assert table["type_id"].tolist() == [1, 2, 4]
    assert table["average_price"].tolist() == [10.0, 6.0, 1.0]


def test_mirror_deletes_are_scoped_to_the_partition(database_url: str) -> None:
    wh = PostgresWarehouse(database_url=database_url)
    wh.write_snapshot(MARKET_ORDERS, orders("10000002", [1, 2, 3]))
    wh.write_snapshot(MARKET_ORDERS, orders("10000043", [1, 7]))
    result = wh.write_snapshot(MARKET_ORDERS, orders("10000002", [3, 4], lm=T0 + timedelta(minutes=5)))
    assert (result.inserted, result.deleted, result.total) == (1, 2, 2)
    assert wh.read_table(MARKET_ORDERS, ["10000043"])["order_id"].tolist() == [1, 7]
    assert wh.read_table(MARKET_ORDERS, ["10000002"])["order_id"].tolist() == [3, 4]


def test_not_modified_writes_no_rows_but_updates_expiry(database_url: str) -> None:
    wh = PostgresWarehouse(database_url=database_url)
    wh.write_snapshot(MARKET_PRICES, prices([(1, 1.0, 1.0)]))
    later = Validators(('"a"',), T0, T0 + timedelta(hours=2))
    result = wh.write_snapshot(MARKET_PRICES, Snapshot(MARKET_PRICES.key, "", Outcome.NOT_MODIFIED, later))
    assert (result.inserted, result.updated, result.deleted, result.total) == (0, 0, 0, 1)
    assert wh.read_validators(MARKET_PRICES, None).expires_at == T0 + timedelta(hours=2)


def test_a_failure_at_commit_leaves_table_and_validators_unchanged(database_url: str) -> None:
    wh = PostgresWarehouse(database_url=database_url)
    wh.write_snapshot(MARKET_PRICES, prices([(1, 1.0, 1.0), (2, 2.0, 2.0)]))
    before = wh.read_validators(MARKET_PRICES, None)
    engine = create_engine(database_url)
    with engine.begin() as conn:  # a deferred trigger fails the transaction at COMMIT, after COPY and merge
        conn.execute(text("CREATE FUNCTION fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure at commit'; END $$"))
        conn.execute(text("CREATE CONSTRAINT TRIGGER fail_commit AFTER INSERT OR UPDATE ON sync_assets.sync_state "
                          "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_commit()"))
    with pytest.raises(Exception, match="injected failure at commit"):
        wh.write_snapshot(MARKET_PRICES, prices([(3, 3.0, 3.0)], lm=T0 + timedelta(hours=1), etag='"b"'))
    assert wh.read_table(MARKET_PRICES)["type_id"].tolist() == [1, 2]
    assert wh.read_validators(MARKET_PRICES, None) == before
    engine.dispose()


def test_an_older_snapshot_never_overwrites_a_newer_one(database_url: str) -> None:
    wh = PostgresWarehouse(database_url=database_url)
    wh.write_snapshot(MARKET_PRICES, prices([(1, 1.0, 1.0)], lm=T0 + timedelta(hours=1)))
    late = wh.write_snapshot(MARKET_PRICES, prices([(9, 9.0, 9.0)], lm=T0))
    assert late.skipped_reason and "older" in late.skipped_reason
    assert wh.read_table(MARKET_PRICES)["type_id"].tolist() == [1]


def test_table_migration_is_idempotent_and_refuses_type_changes(database_url: str) -> None:
    wh = PostgresWarehouse(database_url=database_url)
    wh.ensure_dataset(MARKET_PRICES)
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text('ALTER TABLE esi.market_prices DROP COLUMN adjusted_price'))
    fresh = PostgresWarehouse(database_url=_variant(database_url, "second"))  # bypass the per-process cache
    fresh.ensure_dataset(MARKET_PRICES)  # re-adds the missing column
    with engine.begin() as conn:
        cols = conn.execute(text("SELECT column_name FROM information_schema.columns WHERE table_name='market_prices'")).scalars().all()
        assert "adjusted_price" in cols
        conn.execute(text('ALTER TABLE esi.market_prices ALTER COLUMN average_price TYPE text'))
    with pytest.raises(SchemaMismatch, match="average_price: table has text, declared double precision"):
        PostgresWarehouse(database_url=_variant(database_url, "third")).ensure_dataset(MARKET_PRICES)
    engine.dispose()


def _variant(url: str, name: str) -> str:
    """The same database under another URL, so the per-process DDL cache runs again."""
    return make_url(url).update_query_dict({"application_name": name}).render_as_string(hide_password=False)


def test_unreachable_database_is_a_clear_error_without_the_password() -> None:
    wh = PostgresWarehouse(database_url="postgresql+psycopg2://sync:s3cret-pw@127.0.0.1:1/data")
    with pytest.raises(DatabaseUnavailable) as info:
        wh.read_validators(MARKET_PRICES, None)
    assert "cannot reach the data database" in str(info.value)
    assert "s3cret-pw" not in str(info.value)


def test_row_counts_scan_the_table_only_after_a_write_that_inserted_or_deleted_rows(database_url: str) -> None:
    """`dagster/row_count` on every sync used to be a count(*) of the whole table, unchanged
    re-syncs included. A count now stands until a write inserts or deletes rows (the table's version,
    bumped in the write's own transaction); a row added by hand shows that nothing rescans before."""
    wh = PostgresWarehouse(database_url=database_url)
    wh.write_snapshot(MARKET_ORDERS, orders("10000002", [1, 2, 3]))
    wh.write_snapshot(MARKET_ORDERS, orders("10000043", [1, 7]))
    assert wh.count_table_and_partitions(MARKET_ORDERS, ["10000002"]) == (5, 3)
    assert wh.count_table_and_partitions(MARKET_ORDERS, ["10000043"]) == (5, 2)
    engine = create_engine(database_url)
    with engine.begin() as conn:  # not through the writer: no version bump
        conn.execute(text("INSERT INTO esi.market_orders SELECT 10000002, 99, type_id, is_buy_order, price, volume_remain,"
                          " volume_total, min_volume, range, location_id, system_id, issued, duration"
                          " FROM esi.market_orders WHERE order_id = 1 AND region_id = 10000002"))
        stored = conn.execute(text("SELECT scope, row_count FROM sync_assets.row_counts ORDER BY scope")).all()
    assert [tuple(r) for r in stored] == [("", 5), ("10000002", 3), ("10000043", 2)]
    assert wh.count_table_and_partitions(MARKET_ORDERS, ["10000002"]) == (5, 3)  # the stored counts
    assert wh.count_rows(MARKET_ORDERS) == 5
    # an unchanged re-sync and a write that only updates rows leave the counts standing
    later = Validators(('"p1"',), T0, T0 + timedelta(hours=1))
    wh.write_snapshot(MARKET_ORDERS, Snapshot(MARKET_ORDERS.key, "10000043", Outcome.NOT_MODIFIED, later, context={"region_id": 10000043}))
    wh.write_snapshot(MARKET_ORDERS, orders("10000043", [1, 7], price=2.0, lm=T0 + timedelta(minutes=5)))
    assert wh.count_table_and_partitions(MARKET_ORDERS, ["10000002"]) == (5, 3)
    # a write that inserts rows (in another partition) makes both counts scan again: the hand-made row shows
    wh.write_snapshot(MARKET_ORDERS, orders("10000043", [1, 7, 8], lm=T0 + timedelta(minutes=10)))
    assert wh.count_table_and_partitions(MARKET_ORDERS, ["10000002"]) == (7, 4)
    assert wh.count_table_and_partitions(MARKET_ORDERS, ["10000043"]) == (7, 3)
    assert wh.count_table_and_partitions(MARKET_ORDERS, ["10000002", "10000043"]) == (7, 7)  # a range: counted each time
    # deletes bump the version too
    wh.write_snapshot(MARKET_ORDERS, orders("10000043", [8], lm=T0 + timedelta(minutes=15)))
    assert wh.count_table_and_partitions(MARKET_ORDERS, ["10000043"]) == (5, 1)
    engine.dispose()


def test_a_recreated_table_is_counted_again(database_url: str) -> None:
    wh = PostgresWarehouse(database_url=database_url)
    wh.write_snapshot(MARKET_PRICES, prices([(1, 1.0, 1.0), (2, 2.0, 2.0)]))
    assert wh.count_rows(MARKET_PRICES) == 2
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE esi.market_prices"))
    fresh = PostgresWarehouse(database_url=_variant(database_url, "recreated"))  # a new process's DDL check
    assert fresh.count_rows(MARKET_PRICES) == 0
    engine.dispose()
