"""Expiry-driven launches, failure recording, checks, the mirror guard and retention, against
the sandbox over HTTP and a real PostgreSQL."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Iterator

import dagster as dg
import pytest
from sqlalchemy import create_engine, text

from sync_assets.apis.esi import EsiResource
from sync_assets.apis.esi.datasets import MARKET_ORDERS, MARKET_PRICES
from sync_assets.orchestration.assets import IO_MANAGER_KEY, LAST_SYNC_CHECK, build_sync_asset
from sync_assets.apis.esi.spec import ESI
from sync_assets.orchestration.automation import build_sync_job
from sync_assets.orchestration.checks import build_dataset_checks
from sync_assets.orchestration.maintenance import maintenance_job
from sync_assets.orchestration.failures import build_failure_sensor
from sync_assets.orchestration.sensors import EXPIRY_MARGIN_ENV, build_expiry_sensor
from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager

from .helpers import failure_messages

FORGE = "10000002"
ORDERS = build_sync_asset(MARKET_ORDERS, ESI)
PRICES = build_sync_asset(MARKET_PRICES, ESI)


@pytest.fixture
def env(database_url: str) -> Iterator[tuple[EsiSandbox, str, PostgresWarehouse, dg.DagsterInstance]]:
    regions = {int(key): 1 for key in MARKET_ORDERS.partitioning.keys} | {int(FORGE): 4}
    sandbox = EsiSandbox(regions=regions, n_price_types=2000, request_log=True)
    with serve_in_thread(sandbox) as url, dg.instance_for_test() as instance:
        yield sandbox, url, PostgresWarehouse(database_url=database_url), instance


def resources(url: str, warehouse: PostgresWarehouse, **esi: object) -> dict[str, object]:
    return {"esi": EsiResource(base_url=url, expiry_guard_s=0, backoff_initial_s=0.01, backoff_max_s=0.02, **esi),
            "warehouse": warehouse, IO_MANAGER_KEY: SnapshotIOManager(warehouse=warehouse)}


def test_expiry_sensor_launches_after_expires_and_never_before(env, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox, url, warehouse, instance = env
    monkeypatch.setenv(EXPIRY_MARGIN_ENV, "1")
    # the sensor holds launches during ESI's daily downtime (11:00-11:15 UTC, tested with the
    # schedules): a test that happens to run then must not depend on the time of day
    monkeypatch.setattr("sync_assets.orchestration.guards.DOWNTIMES", {})
    sandbox.configure(cache_seconds={"orders": 3})
    job = build_sync_job(MARKET_ORDERS, ORDERS)
    sensor = build_expiry_sensor({MARKET_ORDERS.key: (MARKET_ORDERS, ORDERS, job)})
    repository = dg.Definitions(assets=[ORDERS], jobs=[job], sensors=[sensor], resources=resources(url, warehouse)).get_repository_def()

    def tick():
        with dg.build_sensor_context(instance=instance, resources={"warehouse": warehouse, "esi": EsiResource(base_url=url)},
                                     repository_def=repository) as context:
            return sensor.evaluate_tick(context)

    first = tick()  # a fresh deployment: every region is launched at once, once
    assert sorted(r.partition_key for r in first.run_requests) == sorted(MARKET_ORDERS.partitioning.keys)
    assert all(r.tags["sync_assets/trigger"] == "new_partition" for r in first.run_requests)
    for region in [*sorted(set(MARKET_ORDERS.partitioning.keys) - {FORGE}), FORGE]:  # as their runs would
        dg.materialize([ORDERS], partition_key=region, resources=resources(url, warehouse), instance=instance)
    expires = warehouse.read_validators(MARKET_ORDERS, FORGE).expires_at
    assert FORGE not in {r.partition_key for r in tick().run_requests}  # synced, its cache still valid
    first_sync_requests = sandbox.counters()["orders"]["requests"]
    while datetime.now(timezone.utc).timestamp() < expires.timestamp() + 1.2:
        time.sleep(0.2)
    [request] = [r for r in tick().run_requests if r.partition_key == FORGE]
    assert request.job_name == "sync_esi_market_orders" and request.tags["sync_assets/slot"] == f"esi.market_orders[{FORGE}]"
    assert sandbox.counters()["orders"]["requests"] == first_sync_requests  # nothing asked before Expires
    sandbox.refresh("orders", int(FORGE))
    result = dg.materialize([ORDERS], partition_key=FORGE, resources=resources(url, warehouse), instance=instance,
                            tags=request.tags)
    assert result.success
    later = [e["time"] for e in sandbox.request_log() if e["route"] == "orders"][first_sync_requests:]  # Forge's only
    assert later and min(later) >= expires.timestamp()
    assert warehouse.read_table(MARKET_ORDERS, [FORGE])["order_id"].tolist() == sorted(sandbox.orders_snapshot(int(FORGE))["order_id"])
    assert FORGE not in {r.partition_key for r in tick().run_requests}  # the new Expires is in the future again


def test_failed_sync_is_recorded_with_its_class_and_marks_the_check_red(env) -> None:
    sandbox, url, warehouse, instance = env
    sandbox.configure(error_rate=1.0)
    result = dg.materialize([PRICES], resources=resources(url, warehouse, max_attempts=2), instance=instance, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure = next(e for e in instance.all_logs(result.run_id) if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE)
    sensor = build_failure_sensor()
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=failure.dagster_event, dagster_instance=instance, dagster_run=run,
        resources={"warehouse": warehouse},
    ).for_run_failure()
    sensor._run_status_sensor_fn(context, warehouse=warehouse)
    with warehouse.engine().connect() as conn:
        row = conn.execute(text("SELECT dataset, failure_class, message FROM sync_assets.sync_failures")).one()
    assert row.dataset == MARKET_PRICES.key and row.failure_class == "transient" and "HTTP 50" in row.message
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(PRICES.key, LAST_SYNC_CHECK)])[dg.AssetCheckKey(PRICES.key, LAST_SYNC_CHECK)]
    assert check.status.value == "FAILED"


def test_schema_check_passes_then_catches_a_hand_edit(env) -> None:
    sandbox, url, warehouse, instance = env
    check = build_dataset_checks(MARKET_PRICES, PRICES)
    result = dg.materialize([PRICES, check], resources=resources(url, warehouse), instance=instance)
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == "schema_matches"]
    assert evaluation.passed
    with warehouse.engine().begin() as conn:
        conn.execute(text("ALTER TABLE esi.market_prices ADD COLUMN note text"))
    again = dg.materialize([PRICES, check], resources=resources(url, warehouse), instance=instance)
    [evaluation] = [e for e in again.get_asset_check_evaluations() if e.check_name == "schema_matches"]
    assert not evaluation.passed and "undeclared column note" in evaluation.metadata["problems"].value


def test_a_sync_runs_every_check_of_its_dataset_in_one_step_and_each_check_runs_alone(env) -> None:
    """The dataset's checks are one multi-asset check: a run of the asset has two steps (the sync and
    the checks), not one per check; the UI's "Execute" on one check runs that check only."""
    sandbox, url, warehouse, instance = env
    checks = build_dataset_checks(MARKET_PRICES, PRICES)
    result = dg.materialize([PRICES, checks], resources=resources(url, warehouse), instance=instance)
    steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert steps == {PRICES.op.name, checks.node_def.name}
    assert {e.check_name for e in result.get_asset_check_evaluations()} == {
        "last_sync", "schema_matches", "partitions_fresh", "row_change_within_bounds"}
    alone = dg.materialize([PRICES, checks], resources=resources(url, warehouse), instance=instance,
                           selection=dg.AssetSelection.checks(dg.AssetCheckKey(PRICES.key, "schema_matches")))
    assert [e.check_name for e in alone.get_asset_check_evaluations()] == ["schema_matches"]
    assert not alone.get_asset_materialization_events()  # nothing synced


def test_a_mirror_that_would_delete_most_rows_stops_before_writing(env) -> None:
    sandbox, url, warehouse, instance = env
    dg.materialize([PRICES], resources=resources(url, warehouse), instance=instance)
    real = len(warehouse.read_table(MARKET_PRICES))
    with warehouse.engine().begin() as conn:  # rows the next snapshot will not contain: more than half of the table
        conn.execute(text("INSERT INTO esi.market_prices (type_id, average_price, adjusted_price) "
                          "SELECT 900000000 + g, 1, 1 FROM generate_series(1, :n) g"), {"n": real * 2})
        conn.execute(text("UPDATE sync_assets.sync_state SET expires_at = now() - interval '1 second'"))
    full = {"ops": {PRICES.op.name: {"config": {"full_refresh": True}}}}  # a changed snapshot, not a 304
    refused = dg.materialize([PRICES], resources=resources(url, warehouse), instance=instance, raise_on_error=False, run_config=full)
    assert not refused.success
    messages = failure_messages(refused)
    assert any(f"would delete {real * 2:,} of {real * 3:,} rows" in m and "nothing was written" in m for m in messages)
    assert len(warehouse.read_table(MARKET_PRICES)) == real * 3  # nothing written
    allowed = dg.materialize([PRICES], resources=resources(url, warehouse), instance=instance,
                             run_config={"ops": {PRICES.op.name: {"config": {"full_refresh": True, "max_delete_share": 1.0}}}})
    assert allowed.success and len(warehouse.read_table(MARKET_PRICES)) == real
    flagged = dg.materialize([PRICES, build_dataset_checks(MARKET_PRICES, PRICES)], resources=resources(url, warehouse),
                             instance=instance, selection=dg.AssetSelection.checks(dg.AssetCheckKey(PRICES.key, "row_change_within_bounds")))
    [evaluation] = flagged.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["rows_deleted"].value == real * 2


def test_retention_trims_old_bookkeeping_but_never_data(env) -> None:
    sandbox, url, warehouse, instance = env
    dg.materialize([PRICES], resources=resources(url, warehouse), instance=instance)
    warehouse.record_failure("esi.market_prices", None, "old-run", "transient", "HTTP 502")
    warehouse.record_failure("esi.market_prices", None, "new-run", "transient", "HTTP 502")
    engine = create_engine(warehouse.url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE sync_assets.sync_failures SET failed_at = now() - interval '40 days' WHERE run_id = 'old-run'"))
    rows = len(warehouse.read_table(MARKET_PRICES))
    result = maintenance_job.execute_in_process(resources={"warehouse": warehouse},
                                                run_config={"ops": {"trim_sync_history": {"config": {"keep_days": 30}}}})
    assert result.success
    with engine.connect() as conn:
        assert conn.execute(text("SELECT run_id FROM sync_assets.sync_failures")).scalars().all() == ["new-run"]
        assert conn.execute(text("SELECT count(*) FROM sync_assets.sync_state")).scalar_one() == 1
    engine.dispose()
    assert len(warehouse.read_table(MARKET_PRICES)) == rows
