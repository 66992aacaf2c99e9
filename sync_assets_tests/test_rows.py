"""A page's rows as a DataFrame or as an Arrow table (core.rows): both shapes hold the same values,
hash alike, and load into Postgres alike, also mixed in one COPY batch."""

from __future__ import annotations

import json
import random

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from sync_assets.apis.esi.datasets import MARKET_ORDERS
from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.core import rows as page_rows
from sync_assets.core.datasets import Column, ColumnType, Dataset, Partitioning
from sync_assets.core.snapshot import Outcome, Snapshot, Validators
from sync_assets.fetch.frames import DecodedPage, page_decoder, rows_to_frame
from sync_assets.fetch.resource import _key_hashes
from sync_assets.warehouse import PostgresWarehouse

from .test_warehouse import T0

T = ColumnType
COLUMNS = (
    Column("id", T.INT64),
    Column("count", T.INT64, required=False),
    Column("price", T.FLOAT64, required=False),
    Column("buy", T.BOOL),
    Column("flag", T.BOOL, required=False),
    Column("name", T.STRING, required=False),
    Column("at", T.TIMESTAMP, required=False),
    Column("day", T.DATE, required=False),
)
DATASET = Dataset(api="t", name="row_shapes", route="/t/{region}", description="both shapes of a page", columns=COLUMNS,
                  primary_key=("region", "id"), cache_seconds=60,
                  partitioning=Partitioning(path_param="region", column=Column("region", T.INT64), keys=("1",)))


def _records(first_id: int, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def maybe(value):
        return None if rng.random() < 0.2 else value

    return [{"id": first_id + i, "count": maybe(rng.randrange(-5, 10**12)), "price": maybe(rng.uniform(-1e6, 1e6)),
             "buy": rng.random() < 0.5, "flag": maybe(rng.random() < 0.5), "name": maybe(rng.choice(["a", "é ☃", "", 'q"x'])),
             "at": maybe(f"2026-0{rng.randrange(1, 10)}-1{rng.randrange(10)}T0{rng.randrange(10)}:1{rng.randrange(10)}:00Z"),
             "day": maybe(f"2025-1{rng.randrange(3)}-2{rng.randrange(9)}")} for i in range(n)]


def _both(records: list[dict]) -> tuple[pd.DataFrame, pa.Table]:
    body = orjson.dumps(records)
    decoded = page_decoder(COLUMNS)(body)
    assert type(decoded) is DecodedPage  # the test is about the table Arrow made
    return rows_to_frame(records, COLUMNS, "t"), decoded.table


def test_the_table_is_in_the_dataset_schema_and_its_frame_is_the_strict_frame() -> None:
    frame, table = _both(_records(1, 300, seed=1))
    assert table.schema.equals(page_rows.arrow_schema(COLUMNS))
    assert frame.isna().any().sum() >= 5  # nulls in every optional column: the masked and NaT paths are taken
    pd.testing.assert_frame_equal(page_rows.to_frame(table, COLUMNS), frame, check_exact=True)
    assert page_rows.to_frame(frame, COLUMNS) is frame
    pd.testing.assert_frame_equal(page_rows.to_frame(page_rows.to_arrow(frame, COLUMNS), COLUMNS), frame, check_exact=True)
    assert page_rows.to_arrow(frame, COLUMNS).equals(table)
    for column in COLUMNS:
        pd.testing.assert_series_equal(page_rows.series(table, column), frame[column.name], check_names=False)


def test_key_hashes_and_batches_do_not_depend_on_the_shape() -> None:
    frame, table = _both(_records(1, 50, seed=2))
    keys = [COLUMNS[0], COLUMNS[5]]  # an int and a nullable string
    assert np.array_equal(_key_hashes(frame, keys), _key_hashes(table, keys))
    other_frame, other_table = _both(_records(51, 30, seed=3))
    expected = pd.concat([frame, other_frame], ignore_index=True)
    mixed = page_rows.concat([frame, other_table], COLUMNS)
    assert isinstance(mixed, pa.Table)
    pd.testing.assert_frame_equal(page_rows.to_frame(mixed, COLUMNS), expected, check_exact=True)
    pd.testing.assert_frame_equal(page_rows.concat([frame, other_frame], COLUMNS), expected, check_exact=True)


@pytest.mark.parametrize("straight", [True, False], ids=["first sync: straight COPY", "later sync: stage and merge"])
def test_pages_of_both_shapes_load_into_postgres_as_the_frame_does(database_url: str, straight: bool) -> None:
    wh = PostgresWarehouse(database_url=database_url)
    if not straight:  # a stored partition: the loader stages and the writer merges
        seed_frame, _ = _both(_records(1, 10, seed=9))
        seed_frame.insert(0, "region", pd.Series([1] * len(seed_frame), dtype="int64"))
        wh.write_snapshot(DATASET, Snapshot(DATASET.key, "1", Outcome.CHANGED, Validators(('"s"',), T0, None), seed_frame,
                                            context={"region": 1}))
    pages = [_both(_records(1 + 100 * p, 100, seed=10 + p)) for p in range(4)]
    loader = wh.page_loader(DATASET, "1", {"region": 1})
    for page, (frame, table) in enumerate(pages, start=1):
        loader.put(page, table if page % 2 else frame)  # the loader batches whatever queued up
    assert loader.finish()
    snapshot = Snapshot(DATASET.key, "1", Outcome.CHANGED, Validators(('"p"',), T0, None), context={"region": 1},
                        staged=loader, rows=400)
    result = wh.write_snapshot(DATASET, snapshot)
    assert result.total == 400
    stored = wh.read_table(DATASET, ["1"]).sort_values("id", ignore_index=True)
    expected = pd.concat([frame for frame, _ in pages], ignore_index=True)
    expected.insert(0, "region", pd.Series([1] * 400, dtype="int64"))
    pd.testing.assert_frame_equal(stored[expected.columns.tolist()], expected, check_exact=True)


def test_market_orders_is_read_into_its_table_shape() -> None:
    body = orjson.dumps([{"order_id": 1, "type_id": 34, "is_buy_order": True, "price": 1.5, "volume_remain": 1,
                          "volume_total": 2, "min_volume": 1, "range": "station", "location_id": 6, "system_id": 3,
                          "issued": "2026-07-23T12:02:15Z", "duration": 90, "new_field": {"ignored": True}}])
    table = page_decoder(MARKET_ORDERS.columns)(body).table
    assert table.column_names == [c.name for c in MARKET_ORDERS.columns]
    assert table.schema.equals(page_rows.arrow_schema(MARKET_ORDERS.columns))


@pytest.mark.parametrize("column, value", [
    (Column("region", T.INT64), 10000002),
    (Column("region", T.INT64), "10000002"),  # a partition key spelled as text: converted as a frame converts it
    (Column("shop", T.STRING), "é ☃"),
    (Column("active", T.BOOL), True),
    (Column("at", T.TIMESTAMP), pd.Timestamp("2026-11-20T08:14:03.25Z")),
    (Column("price", T.FLOAT64), 1.5),
], ids=lambda x: x.name if isinstance(x, Column) else repr(x))
def test_a_context_column_is_repeated_as_a_frame_would_hold_it(column: Column, value) -> None:
    from sync_assets.warehouse.writer import _repeated

    as_frame = pa.array(pd.Series(value, index=pd.RangeIndex(3), dtype=column.pandas_dtype), type=page_rows.arrow_type(column))
    assert _repeated(value, column, 3).equals(as_frame)


NO_PANDAS = """
import json, sys, time
import dagster as dg
from sync_assets.core.lazy import ARROW_LIBRARIES, importing, prefetch
from sync_assets.definitions import defs
prefetch(*ARROW_LIBRARIES)  # what the walk prefetches, imported first: then every page is one Arrow reads
while importing():
    time.sleep(0.01)
key = dg.AssetKey(["esi", "market_orders"])
asset = defs.get_assets_def(key)
checks = [c for c in (defs.asset_checks or []) if any(k.asset_key == key for k in c.check_keys)]
result = dg.materialize([asset, *checks], partition_key="10000002", resources=dict(defs.resources),
                        instance=dg.DagsterInstance.ephemeral())
rows = [e for e in result.get_asset_materialization_events()][0].materialization.metadata["rows_written"].value
print(json.dumps({"success": result.success, "rows": rows, "pandas": "pandas" in sys.modules}))
"""


def test_a_sync_of_pages_arrow_reads_never_imports_pandas(database_url: str) -> None:
    """The run worker of an ESI market sync: Arrow reads the pages, they go to the COPY as tables.
    pandas would cost each such process 0.17 s and 43 MB; it loads only if a page goes the strict way.
    A page that lands while the Arrow libraries are still importing goes that way too (how soon that
    import ends depends on the machine's load), so the worker imports them before the sync here."""
    import os
    import subprocess
    import sys

    with serve_in_thread(EsiSandbox(regions={10000002: 4}, n_price_types=10)) as url:
        env = {**os.environ, "SYNC_ASSETS_ESI_URL": url, "SYNC_ASSETS_DATABASE_URL": database_url, "SYNC_ASSETS_APIS": "esi"}
        env.pop("DAGSTER_HOME", None)
        done = subprocess.run([sys.executable, "-c", NO_PANDAS], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["success"] and outcome["rows"] > 3000  # 4 pages of orders, written
    assert outcome["pandas"] is False
