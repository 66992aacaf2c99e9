"""End to end through Dagster: `dagster.materialize` -> EsiResource -> the ESI sandbox over real
HTTP on 127.0.0.1 -> SnapshotIOManager -> a real PostgreSQL."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Iterator

import dagster as dg
import orjson
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from sync_assets.apis.esi import EsiResource
from sync_assets.apis.esi.datasets import MARKET_ORDERS, MARKET_PRICES
from sync_assets.core.datasets import Dataset
from sync_assets.orchestration.assets import IO_MANAGER_KEY, build_sync_asset
from sync_assets.apis.esi.spec import ESI
from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager

from .helpers import failure_messages

FORGE = "10000002"
ORDERS_ASSET = build_sync_asset(MARKET_ORDERS, ESI)
PRICES_ASSET = build_sync_asset(MARKET_PRICES, ESI)


class Harness:
    def __init__(self, sandbox: EsiSandbox, base_url: str, database_url: str):
        self.sandbox, self.base_url, self.database_url = sandbox, base_url, database_url
        self.warehouse = PostgresWarehouse(database_url=database_url)
        self.instance = dg.DagsterInstance.ephemeral()

    def resources(self, **esi_overrides: object) -> dict[str, object]:
        esi = dict(base_url=self.base_url, backoff_initial_s=0.01, backoff_max_s=0.05, expiry_guard_s=0, max_attempts=8)
        esi.update(esi_overrides)
        return {
            "esi": EsiResource(**esi),
            "warehouse": self.warehouse,
            IO_MANAGER_KEY: SnapshotIOManager(warehouse=self.warehouse),
        }

    def sync(self, asset: dg.AssetsDefinition = ORDERS_ASSET, partition: str | None = FORGE, *,
             raise_on_error: bool = True, full_refresh: bool = False, **esi: object) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [asset], partition_key=partition if asset is ORDERS_ASSET else None, resources=self.resources(**esi),
            instance=self.instance, raise_on_error=raise_on_error,
            run_config={"ops": {asset.op.name: {"config": {"full_refresh": full_refresh}}}},
        )

    def table(self, dataset: Dataset = MARKET_ORDERS, partition: str | None = FORGE) -> pd.DataFrame:
        return self.warehouse.read_table(dataset, [partition] if dataset.partitioning else None)

    def expected_orders(self, region: str = FORGE) -> pd.DataFrame:
        frame = self.sandbox.orders_snapshot(int(region))
        frame.insert(0, "region_id", int(region))
        return frame

    def wait_for_expiry(self, dataset: Dataset = MARKET_ORDERS, partition: str | None = FORGE) -> None:
        expires = self.warehouse.read_validators(dataset, partition).expires_at
        delay = (expires - datetime.now(timezone.utc)).total_seconds()
        time.sleep(max(delay, 0) + 0.05)

    def counters(self, route: str = "orders") -> dict[str, int]:
        return self.sandbox.counters()[route]


def metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [event] = result.get_asset_materialization_events()
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def data_version(result: dg.ExecuteInProcessResult) -> str:
    [event] = result.get_asset_materialization_events()
    return event.materialization.tags["dagster/data_version"]


def assert_same_rows(actual: pd.DataFrame, expected: pd.DataFrame, key: list[str]) -> None:
    """Equal as sets of rows: same keys, same values in every column."""
    assert len(actual) == len(expected)
    columns = list(actual.columns)
    a = actual.sort_values(key).reset_index(drop=True)
    e = expected[columns].sort_values(key).reset_index(drop=True)
    for column in columns:
        if pd.api.types.is_datetime64_any_dtype(a[column]):
            assert (a[column] == e[column]).all(), column
        else:
            left, right = a[column].astype(object).where(a[column].notna(), None), e[column].astype(object).where(e[column].notna(), None)
            assert left.tolist() == right.tolist(), column


def log_messages(h: Harness, result: dg.ExecuteInProcessResult) -> list[str]:
    return [e.user_message for e in h.instance.all_logs(result.run_id) if e.user_message]


@pytest.fixture
def harness(database_url: str) -> Iterator[Harness]:
    sandbox = EsiSandbox(regions={int(FORGE): 12, 10000043: 2}, n_price_types=2000)
    with serve_in_thread(sandbox) as url:
        yield Harness(sandbox, url, database_url)


def test_first_sync_of_the_forge_loads_every_order(database_url: str) -> None:
    sandbox = EsiSandbox(regions={int(FORGE): 300}, n_price_types=100)  # The Forge at full size: ~300k orders
    with serve_in_thread(sandbox) as url:
        h = Harness(sandbox, url, database_url)
        result = h.sync()
        meta = metadata(result)
        expected = h.expected_orders()
        assert len(expected) > 290_000
        assert_same_rows(h.table(), expected, ["region_id", "order_id"])
        assert meta["rows_inserted"] == len(expected) == meta["dagster/partition_row_count"] == meta["dagster/row_count"]  # one region synced: table = partition
        assert meta["pages"] == meta["status_200"] == sandbox.page_count(int(FORGE)) == 300
        assert meta["status_304"] == 0 and meta["bytes_received"] > 50_000_000
        messages = log_messages(h, result)
        progress = [m for m in messages if "page " in m and "/300 (" in m]
        assert len(progress) >= 10 and any("page 300/300" in m for m in progress)
        assert any("snapshot of" in m and "rows in 300 responses" in m for m in messages)
        assert any("300 pages loaded into the database while fetching" in m for m in messages)  # overlapped, not after


def test_resync_after_expires_asks_page_one_only_while_the_snapshot_is_unchanged(harness: Harness) -> None:
    """Page 1's 304 with the stored Last-Modified and a new Expires stands for the unchanged snapshot
    (ESI: same Last-Modified, new Expires = unchanged content); once the snapshot is regenerated,
    page 1 answers 200 and every page is fetched."""
    harness.sandbox.configure(cache_seconds={"orders": 1})
    first = harness.sync()
    harness.wait_for_expiry()
    harness.sandbox.reset_counters()
    second = harness.sync()
    meta, counters = metadata(second), harness.counters()
    assert counters["status_304"] == 1 and counters["status_200"] == 0 and counters["body_bytes"] == 0
    assert meta["outcome"] == "not_modified" and meta["requests"] == 1 and meta["rows_written"] == 0
    assert data_version(second) == data_version(first)
    stored = harness.warehouse.read_validators(MARKET_ORDERS, FORGE)
    assert stored.expires_at > datetime.now(timezone.utc) and len(stored.page_etags) == harness.sandbox.page_count(int(FORGE))
    harness.sandbox.refresh("orders", int(FORGE))  # a new snapshot: new Last-Modified, new data
    harness.wait_for_expiry()
    third = harness.sync()
    assert metadata(third)["status_200"] == harness.sandbox.page_count(int(FORGE))
    assert_same_rows(harness.table(), harness.expected_orders(), ["region_id", "order_id"])


def test_resync_before_expires_does_not_ask_the_api(harness: Harness) -> None:
    first = harness.sync()
    before = harness.counters()
    second = harness.sync()
    meta = metadata(second)
    assert harness.counters() == before  # not one request
    assert meta["outcome"] == "cache_valid" and meta["requests"] == 0 and meta["rows_written"] == 0
    assert data_version(second) == data_version(first)  # a materialization, same version: freshness advances
    assert_same_rows(harness.table(), harness.expected_orders(), ["region_id", "order_id"])


def test_resync_after_expires_is_all_304_and_writes_nothing(harness: Harness) -> None:
    """Past the periodic full walk (full_walk_every_s=0: every sync), every page is asked conditionally."""
    harness.sandbox.configure(cache_seconds={"orders": 1})
    first = harness.sync(full_walk_every_s=0)
    earlier = harness.warehouse.read_validators(MARKET_ORDERS, FORGE).expires_at
    harness.wait_for_expiry()
    harness.sandbox.reset_counters()
    second = harness.sync(full_walk_every_s=0)
    meta, counters = metadata(second), harness.counters()
    pages = harness.sandbox.page_count(int(FORGE))
    assert counters["status_304"] == pages and counters["status_200"] == 0 and counters["body_bytes"] == 0
    assert meta["outcome"] == "not_modified" and meta["status_304"] == pages and meta["bytes_received"] == 0
    assert meta["rows_written"] == 0 and meta["dagster/partition_row_count"] == len(harness.expected_orders())
    assert data_version(second) == data_version(first)
    later = harness.warehouse.read_validators(MARKET_ORDERS, FORGE).expires_at
    assert later > earlier  # the 304s' new Expires was stored (not compared with the clock: a slow machine may pass it)


def test_after_a_snapshot_refresh_the_table_equals_the_new_snapshot(harness: Harness) -> None:
    harness.sandbox.configure(cache_seconds={"orders": 1})
    first = harness.sync()
    old = harness.expected_orders()
    harness.sandbox.refresh("orders", int(FORGE))
    new = harness.expected_orders()
    harness.wait_for_expiry()
    second = harness.sync()
    meta = metadata(second)
    assert_same_rows(harness.table(), new, ["region_id", "order_id"])
    old_ids, new_ids = set(old.order_id), set(new.order_id)
    merged = old.merge(new, on=["region_id", "order_id"], suffixes=("_old", ""))
    changed = merged[(merged.price_old != merged.price) | (merged.volume_remain_old != merged.volume_remain)]
    assert meta["rows_inserted"] == len(new_ids - old_ids) > 0
    assert meta["rows_deleted"] == len(old_ids - new_ids) > 0
    assert meta["rows_updated"] == len(changed) > 0
    assert data_version(second) != data_version(first)
    # the other partition was never touched
    assert harness.table(partition="10000043").empty


def test_a_refresh_in_the_middle_of_the_walk_never_leaves_a_mixed_snapshot(harness: Harness) -> None:
    harness.sandbox.refresh_after_pages(5, int(FORGE))
    result = harness.sync(max_concurrency=4)
    meta = metadata(result)
    assert meta["page_walks"] == 2
    # pages of the first walk were loaded as they landed, then taken out again with the walk's restart
    assert any("pages loaded into the database while fetching (emptied and reloaded 1x" in m
               for m in log_messages(harness, result))
    assert harness.sandbox.snapshot("orders", int(FORGE)).generation == 1
    assert_same_rows(harness.table(), harness.expected_orders(), ["region_id", "order_id"])


def test_when_no_walk_is_consistent_nothing_is_written(harness: Harness) -> None:
    harness.sandbox.configure(cache_seconds={"orders": 1})
    harness.sync()
    old = harness.expected_orders()
    before = harness.warehouse.read_validators(MARKET_ORDERS, FORGE)
    harness.wait_for_expiry()
    harness.sandbox.refresh_after_pages(3, int(FORGE))
    result = harness.sync(max_walks=1, raise_on_error=False, full_refresh=True)
    assert not result.success
    assert any("no consistent snapshot after 1 walks" in m and "nothing was written" in m for m in failure_messages(result))
    assert_same_rows(harness.table(), old, ["region_id", "order_id"])
    assert harness.warehouse.read_validators(MARKET_ORDERS, FORGE) == before


def test_a_failure_after_copy_before_commit_changes_nothing_and_the_next_run_loads_everything(harness: Harness) -> None:
    harness.sandbox.configure(cache_seconds={"orders": 1})
    harness.sync()
    old = harness.expected_orders()
    before = harness.warehouse.read_validators(MARKET_ORDERS, FORGE)
    engine = create_engine(harness.database_url)
    with engine.begin() as conn:  # fires at COMMIT: after the COPY, the merge and the state write
        conn.execute(text("CREATE FUNCTION fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure before commit'; END $$"))
        conn.execute(text("CREATE CONSTRAINT TRIGGER fail_commit AFTER INSERT OR UPDATE ON sync_assets.sync_state "
                          "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_commit()"))
    harness.sandbox.refresh("orders", int(FORGE))
    harness.wait_for_expiry()
    failed = harness.sync(raise_on_error=False)
    assert not failed.success
    assert any("injected failure before commit" in m for m in failure_messages(failed))
    assert_same_rows(harness.table(), old, ["region_id", "order_id"])
    assert harness.warehouse.read_validators(MARKET_ORDERS, FORGE) == before
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER fail_commit ON sync_assets.sync_state"))
    engine.dispose()
    harness.sandbox.reset_counters()
    meta = metadata(harness.sync())
    pages = harness.sandbox.page_count(int(FORGE))
    assert meta["status_200"] == pages and meta["status_304"] == 0  # no stale 304 from uncommitted validators
    assert_same_rows(harness.table(), harness.expected_orders(), ["region_id", "order_id"])


def test_twenty_percent_5xx_with_html_bodies_still_syncs_exact_data(harness: Harness) -> None:
    harness.sandbox.configure(error_rate=0.2, error_seed=11)
    result = harness.sync()
    meta = metadata(result)
    counters = harness.counters()
    assert counters["status_5xx"] > 0 and meta["retries"] == counters["status_5xx"]
    assert_same_rows(harness.table(), harness.expected_orders(), ["region_id", "order_id"])
    retry_lines = [m for m in log_messages(harness, result) if "retry" in m]
    assert len(retry_lines) == meta["retries"]
    assert all(("HTTP 50" in m) for m in retry_lines)


def test_market_prices_mirror_keeps_missing_averages_as_null(harness: Harness) -> None:
    result = harness.sync(PRICES_ASSET)
    expected = harness.sandbox.prices_snapshot()
    table = harness.table(MARKET_PRICES, None)
    assert_same_rows(table, expected, ["type_id"])
    assert table["average_price"].isna().sum() == expected["average_price"].isna().sum() > 0
    assert metadata(result)["pages"] == 1


def test_downstream_assets_load_the_partition_as_a_dataframe(harness: Harness) -> None:
    harness.sync()

    @dg.asset(ins={"orders": dg.AssetIn(key=ORDERS_ASSET.key)}, partitions_def=ORDERS_ASSET.partitions_def)
    def sell_order_count(orders: pd.DataFrame) -> int:
        return int((~orders["is_buy_order"]).sum())

    result = dg.materialize([ORDERS_ASSET, sell_order_count], partition_key=FORGE, resources=harness.resources(),
                            instance=harness.instance, selection=[sell_order_count])
    expected = harness.expected_orders()
    assert result.output_for_node("sell_order_count") == int((~expected["is_buy_order"]).sum())


class _RepeatARow:
    """ASGI wrapper over the sandbox: page 3 of every walk also carries page 1's first order with a
    new price - the row moved while the pages were fetched. The later copy is the one to keep."""

    def __init__(self, app: object):
        self.app, self.first_row = app, None

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        page = dict(p.split("=", 1) for p in scope.get("query_string", b"").decode().split("&") if "=" in p).get("page")
        if scope["type"] != "http" or page not in ("1", "3"):
            return await self.app(scope, receive, send)
        held: list[dict] = []

        async def hold(message: dict) -> None:
            held.append(message)

        await self.app(scope, receive, hold)
        start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
        if start["status"] == 200:
            rows = orjson.loads(body)
            if page == "1":
                self.first_row = dict(rows[0])
            elif self.first_row is not None:
                body = orjson.dumps(rows + [{**self.first_row, "price": self.first_row["price"] + 1}])
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def test_a_row_repeated_on_a_later_page_is_stored_once_with_its_later_values(database_url: str) -> None:
    sandbox = EsiSandbox(regions={int(FORGE): 5}, n_price_types=100, cache_seconds={"orders": 1})
    wrapper = _RepeatARow(sandbox)
    with serve_in_thread(wrapper) as url:
        h = Harness(sandbox, url, database_url)
        for sync in ("first", "after a refresh"):  # straight into the table, then through the stage
            if sync != "first":
                sandbox.refresh("orders", int(FORGE))
                h.wait_for_expiry()
            result = h.sync()
            moved = wrapper.first_row
            expected = h.expected_orders()
            expected.loc[expected.order_id == moved["order_id"], "price"] = moved["price"] + 1
            assert_same_rows(h.table(), expected, ["region_id", "order_id"])
            assert metadata(result)["dagster/partition_row_count"] == len(expected)
            # the pages loaded during the walk held the row twice: they were rolled back, the
            # de-duplicated frame written instead
            assert not any("loaded into the database while fetching" in m for m in log_messages(h, result))
