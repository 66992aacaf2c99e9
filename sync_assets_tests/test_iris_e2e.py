"""IRIS CRM end to end: Dagster materializations -> IrisResource -> the IRIS simulator over real
HTTP -> PostgreSQL, for the seeded tenant; every table compared with the simulator's own data."""

from __future__ import annotations

import threading
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd
import pytest
from sqlalchemy import text

from sync_assets.apis.iris import IRIS, IRIS_DATASETS, IrisResource
from sync_assets.apis.iris.datasets import (
    MERCHANT_MONTHLY_METRICS, MERCHANTS, RESIDUAL_LINE_ITEMS, RESIDUAL_ROWS, RESIDUAL_SUMMARIES, TRANSACTIONS,
)
from sync_assets.apis.iris.sandbox.app import IrisSandbox
from sync_assets.apis.sandbox_serving import serve_in_thread
from sync_assets.orchestration.apis import ApiDefinition
from sync_assets.orchestration.assets import IO_MANAGER_KEY
from sync_assets.orchestration.build import build_definitions
from sync_assets.orchestration.checks import FAILED_ITEMS_CHECK
from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager

from .helpers import failure_messages

KEY = "iris_live_9f8e7d-team-key"
MONTH, YEAR_MONTH = "2026-09-01", (2026, 9)
DUBLIN = ZoneInfo("Europe/Dublin")


class Tenant:
    def __init__(self, sandbox: IrisSandbox, url: str, database_url: str, instance: dg.DagsterInstance):
        self.sandbox, self.world, self.instance = sandbox, sandbox.world, instance
        self.warehouse = PostgresWarehouse(database_url=database_url)
        self.iris = IrisResource(base_url=f"{url}/api/v1", api_key=KEY, budget_database_url=database_url,
                                 backoff_initial_s=0.01, backoff_max_s=0.05)
        self.defs = build_definitions([ApiDefinition(IRIS, IRIS_DATASETS, self.iris)], self.warehouse)

    def asset(self, dataset) -> dg.AssetsDefinition:
        return self.defs.get_assets_def(dg.AssetKey(["iris", dataset.name]))

    def sync(self, dataset, partition: str | None = None, instance: dg.DagsterInstance | None = None,
             **kwargs: Any) -> dg.ExecuteInProcessResult:
        resources = {"iris": self.iris, "warehouse": self.warehouse, IO_MANAGER_KEY: SnapshotIOManager(warehouse=self.warehouse)}
        every = [self.asset(d) for d in IRIS_DATASETS]  # upstream inputs of a derived dataset come from its inputs' tables
        return dg.materialize(every, partition_key=partition, resources=resources, instance=instance or self.instance,
                              selection=[self.asset(dataset).key], **kwargs)

    def run_check(self, key: dg.AssetCheckKey) -> list[dg.AssetCheckEvaluation]:
        """The check alone, as the UI's "Execute" on a check runs it."""
        check = self.defs.get_asset_checks_def(key)
        return dg.materialize([*(self.asset(d) for d in IRIS_DATASETS), check], selection=dg.AssetSelection.checks(key),
                              resources={"warehouse": self.warehouse, "iris": self.iris,
                                         IO_MANAGER_KEY: SnapshotIOManager(warehouse=self.warehouse)},
                              instance=self.instance).get_asset_check_evaluations()

    def table(self, dataset, partition: str | None = None) -> pd.DataFrame:
        return self.warehouse.read_table(dataset, [partition] if partition else None)

    def requests(self, route: str) -> int:
        return sum(c["routes"].get(route, 0) for c in self.sandbox.counters().values())


@pytest.fixture
def tenant(database_url: str) -> Iterator[Tenant]:
    sandbox = IrisSandbox(api_keys={"team": KEY}, merchants=24, today=date(2026, 11, 20))
    with serve_in_thread(sandbox) as url, dg.instance_for_test() as instance:
        yield Tenant(sandbox, url, database_url, instance)


def _money(value: Any) -> Decimal | None:
    return None if value is None or pd.isna(value) else Decimal(str(value)).quantize(Decimal("0.01"))


def _us_date(value: str | None) -> date | None:
    return None if value is None else datetime.strptime(value, "%m/%d/%Y").date()


def _sync_month(tenant: Tenant) -> None:
    assert tenant.sync(MERCHANTS).success
    for dataset in (TRANSACTIONS, RESIDUAL_SUMMARIES, RESIDUAL_ROWS, RESIDUAL_LINE_ITEMS, MERCHANT_MONTHLY_METRICS):
        assert tenant.sync(dataset, MONTH).success, dataset.key


def test_every_dataset_equals_the_simulator_and_the_key_never_leaks(tenant: Tenant) -> None:
    _sync_month(tenant)
    world, (year, month) = tenant.world, YEAR_MONTH

    merchants = tenant.table(MERCHANTS).set_index("mid")
    expected = {m["mid"]: m for m in world.merchant_list()}
    assert set(merchants.index) == set(expected) and any(mid.startswith("0") for mid in expected)
    for mid, source in expected.items():
        row = merchants.loc[mid]
        assert row["name"] == source["name"] and row["status"] == source["status"]
        assert (None if pd.isna(row["closed"]) else row["closed"].date()) == _us_date(source["closed"])
        assert row["modified"] == pd.Timestamp(source["modified"])

    stored = tenant.table(TRANSACTIONS, MONTH)
    want = {t["id"]: (mid, t) for mid in expected for t in world.transactions_for(mid, year, month)}
    assert len(want) > 50 and sorted(stored["id"]) == sorted(want)
    for row in stored.itertuples():
        mid, source = want[row.id]
        assert row.mid == mid and _money(row.amount) == _money(source["amount"]) and row.type == source["type"]
        assert row.date.date() == _us_date(source["date"])

    summaries = tenant.table(RESIDUAL_SUMMARIES, MONTH)
    source_summaries = world.residual_summary(year, month)
    assert sorted(summaries["processor_id"]) == sorted(s["processor_id"] for s in source_summaries)
    assert {r.processor_id: _money(r.sum_net) for r in summaries.itertuples()} == {s["processor_id"]: _money(s["sum_net"]) for s in source_summaries}

    rows = tenant.table(RESIDUAL_ROWS, MONTH)
    want_rows = {(s["processor_id"], str(r["mid"])): _money(r["net"]) for s in source_summaries
                 for r in world.residual_rows(s["processor_id"], year, month, template=False, hide_null_merchants=False)}
    assert want_rows and {(r.processor_id, r.mid): _money(r.net) for r in rows.itertuples()} == want_rows

    items = tenant.table(RESIDUAL_LINE_ITEMS, MONTH)
    assert sorted(items["id"]) == sorted(i["id"] for i in world.line_items(year, month))

    # the metrics, computed here from the simulator's data alone
    metrics = tenant.table(MERCHANT_MONTHLY_METRICS, MONTH).set_index("mid")
    residual_by_mid: dict[int, Decimal] = {}
    for (_, mid), net in want_rows.items():
        residual_by_mid[int(mid)] = residual_by_mid.get(int(mid), Decimal(0)) + (net or 0)
    for mid in expected:
        txs = world.transactions_for(mid, year, month)
        if not txs and int(mid) not in residual_by_mid:
            assert mid not in metrics.index
            continue
        sales = [Decimal(t["amount"]) for t in txs if t["type"] == "SALE"]
        row = metrics.loc[mid]
        assert row["sales_count"] == len(sales) and _money(row["sales_volume"]) == _money(sum(sales, Decimal(0)))
        assert _money(row["net_volume"]) == _money(sum((Decimal(t["amount"]) for t in txs), Decimal(0)))
        assert row["transaction_count"] == len(txs)
        assert _money(row["average_ticket"]) == (_money(sum(sales) / len(sales)) if sales else None)
        assert _money(row["residual_net"]) == _money(residual_by_mid.get(int(mid)))

    # the key reached the API and nothing else
    logs = " ".join(str(e.dagster_event or e.user_message) for e in tenant.instance.all_logs(tenant.instance.get_runs()[0].run_id))
    assert KEY not in logs
    with tenant.warehouse.engine().connect() as conn:
        dump = conn.execute(text("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM sync_assets.sync_state) t")).scalar() or ""
    assert KEY not in dump


def test_merchants_are_read_incrementally_and_a_full_pass_mirrors_removals(tenant: Tenant) -> None:
    assert tenant.sync(MERCHANTS).success
    first_count = len(tenant.table(MERCHANTS))
    changed_mid = tenant.world.merchant_list()[3]["mid"]
    tenant.world.modify_merchant(changed_mid, name="Renamed Ltd")
    with tenant.warehouse.engine().begin() as conn:  # a merchant IRIS no longer lists (no delete feed exists)
        conn.execute(text("INSERT INTO iris.merchants (mid, modified) VALUES ('999000111', now() - interval '400 days')"))
    tenant.sandbox.reset_counters()
    incremental = tenant.sync(MERCHANTS)
    assert incremental.success
    table = tenant.table(MERCHANTS).set_index("mid")
    assert table.loc[changed_mid, "name"] == "Renamed Ltd" and "999000111" in table.index  # upserted, nothing deleted
    meta = incremental.get_asset_materialization_events()[0].materialization.metadata
    assert meta["rows_written"].value < first_count  # only what changed since the cursor came back
    full = tenant.sync(MERCHANTS, run_config={"ops": {"iris__merchants": {"config": {"full_refresh": True}}}})
    assert full.success and "999000111" not in set(tenant.table(MERCHANTS)["mid"])  # the weekly full pass mirrors
    assert len(tenant.table(MERCHANTS)) == first_count


def test_a_failing_merchant_is_recorded_backed_off_and_recovered_with_exact_data(tenant: Tenant) -> None:
    assert tenant.sync(MERCHANTS).success
    year, month = YEAR_MONTH
    active = [m["mid"] for m in tenant.world.merchant_list() if tenant.world.transactions_for(m["mid"], year, month)]
    broken = active[0]
    tenant.sandbox.set_failing_merchants([broken])
    failed = tenant.sync(TRANSACTIONS, MONTH, raise_on_error=False)
    assert not failed.success  # the month is incomplete: the run says so...
    assert any(broken in m and "failed" in m for m in failure_messages(failed))
    stored = set(tenant.table(TRANSACTIONS, MONTH)["mid"])
    assert broken not in stored and set(active) - {broken} <= stored  # ...and the other merchants are committed
    [item] = tenant.warehouse.failed_items(TRANSACTIONS.key)
    assert item.item == f"{MONTH}/mid={broken}" and item.attempts == 1 and item.failure_class == "transient"

    check = dg.AssetCheckKey(dg.AssetKey(["iris", "transactions"]), FAILED_ITEMS_CHECK)
    [evaluation] = tenant.run_check(check)
    assert not evaluation.passed and broken in evaluation.metadata["items"].value

    asked = tenant.requests("transactions")
    again = tenant.sync(TRANSACTIONS, MONTH, raise_on_error=False)
    assert not again.success and any("not asked again before" in m for m in failure_messages(again))
    assert tenant.requests("transactions") - asked == len(active) - 1  # the broken merchant waits out its backoff

    tenant.sandbox.set_failing_merchants([])
    with tenant.warehouse.engine().begin() as conn:  # the backoff has passed
        conn.execute(text("UPDATE sync_assets.failed_items SET retry_at = now() - interval '1 second'"))
    assert tenant.sync(TRANSACTIONS, MONTH).success
    want = sorted(t["id"] for mid in active for t in tenant.world.transactions_for(mid, year, month))
    assert sorted(tenant.table(TRANSACTIONS, MONTH)["id"]) == want
    assert tenant.warehouse.failed_items(TRANSACTIONS.key) == []
    [evaluation] = tenant.run_check(check)
    assert evaluation.passed


def test_unchanged_processor_reports_are_not_read_again_and_a_republished_month_is(tenant: Tenant) -> None:
    assert tenant.sync(RESIDUAL_SUMMARIES, MONTH).success and tenant.sync(RESIDUAL_ROWS, MONTH).success
    asked = tenant.requests("residual_rows")
    assert asked >= 3
    assert tenant.sync(RESIDUAL_SUMMARIES, MONTH).success and tenant.sync(RESIDUAL_ROWS, MONTH).success
    assert tenant.requests("residual_rows") == asked  # every summary's `modified` unchanged
    year, month = YEAR_MONTH
    [state] = tenant.world.republish(year, month, processor_id=6, drop_rows=1)
    assert tenant.sync(RESIDUAL_SUMMARIES, MONTH).success and tenant.sync(RESIDUAL_ROWS, MONTH).success
    assert tenant.requests("residual_rows") == asked + 1  # only the republished processor
    rows = tenant.table(RESIDUAL_ROWS, MONTH)
    want = {str(r["mid"]): _money(r["net"]) for r in tenant.world.residual_rows(6, year, month, template=False, hide_null_merchants=False)}
    assert {r.mid: _money(r.net) for r in rows.itertuples() if r.processor_id == 6} == want  # the dropped row is gone


def test_four_concurrent_runs_stay_within_the_key_limit(tenant: Tenant) -> None:
    tenant.sandbox.configure(rate_limit=20, rate_limit_window=5)
    tenant.iris = IrisResource(base_url=tenant.iris.base_url, api_key=KEY, budget_database_url=tenant.iris.budget_database_url,
                               rate_limit="20/5")
    assert tenant.sync(MERCHANTS).success
    months = ["2026-06-01", "2026-07-01", "2026-08-01", "2026-09-01"]
    results: list[dg.ExecuteInProcessResult] = []
    # four runs at once, as four run processes would be: each its own Dagster instance, one shared budget
    threads = [threading.Thread(target=lambda m=m: results.append(tenant.sync(TRANSACTIONS, m, instance=dg.DagsterInstance.ephemeral())))
               for m in months]
    tenant.sandbox.reset_counters()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r.success for r in results)
    [counters] = tenant.sandbox.counters().values()
    assert counters["requests"] > 3 * 20  # more than three windows' worth: the limit set the pace
    assert counters["rate_limited"] == 0 and counters["max_in_sliding_window"] <= 20


@pytest.mark.parametrize("local", ["2026-03-28T11:00", "2026-03-29T11:00", "2026-03-29T19:00", "2026-10-24T19:00",
                                   "2026-10-25T11:00"])
def test_the_twice_daily_syncs_fire_at_11_and_19_dublin_time_on_both_sides_of_dst(tenant: Tenant, local: str) -> None:
    at = datetime.fromisoformat(local).replace(tzinfo=DUBLIN)
    repository = tenant.defs.get_repository_def()
    schedule = repository.get_schedule_def("sync_iris_transactions_schedule")
    assert schedule.cron_schedule == "0 11,19 * * *" and schedule.execution_timezone == "Europe/Dublin"
    with dg.build_schedule_context(instance=tenant.instance, scheduled_execution_time=at, repository_def=repository,
                                   resources={"warehouse": tenant.warehouse, "iris": tenant.iris}) as context:
        requests = schedule.evaluate_tick(context).run_requests
    # the current month and the one before (the schedule's partitions: the last two windows)
    assert [r.partition_key for r in requests] == [p for p in TRANSACTIONS_PARTITIONS(at)]
    assert {r.tags["sync_assets/trigger"] for r in requests} == {"schedule"}


def TRANSACTIONS_PARTITIONS(at: datetime) -> list[str]:  # noqa: N802 - the expected value, computed independently
    current = date(at.year, at.month, 1)
    previous = date(current.year - (current.month == 1), (current.month - 2) % 12 + 1, 1)
    return [previous.isoformat(), current.isoformat()]
