"""Health per partition: the `partitions_fresh` check (WARN) lists the partitions whose last success is
older than the dataset's windows, stalest first, whatever partition ran last; the expiry sensor
reports it when a partition changes state."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Iterator

import dagster as dg
import pytest

from sync_assets.apis.esi import EsiResource
from sync_assets.apis.esi.datasets import MARKET_ORDERS
from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.apis.esi.spec import ESI
from sync_assets.orchestration.assets import IO_MANAGER_KEY, build_sync_asset
from sync_assets.orchestration.automation import build_sync_job
from sync_assets.orchestration.checks import PARTITIONS_FRESH_CHECK, build_dataset_checks, partition_health
from sync_assets.orchestration.sensors import build_expiry_sensor
from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager

FORGE, DOMAIN, SINQ = "10000002", "10000043", "10000032"
ORDERS_1M = dataclasses.replace(MARKET_ORDERS, freshness=(60, 120))  # warn after 1 min, fail after 2
ORDERS = build_sync_asset(ORDERS_1M, ESI)
CHECK = build_dataset_checks(ORDERS_1M, ORDERS)


@pytest.fixture
def env(database_url: str) -> Iterator[tuple[str, PostgresWarehouse, dg.DagsterInstance]]:
    sandbox = EsiSandbox(regions={int(key): 1 for key in MARKET_ORDERS.partitioning.keys}, n_price_types=10)
    with serve_in_thread(sandbox) as url, dg.instance_for_test() as instance:
        yield url, PostgresWarehouse(database_url=database_url), instance


def resources(url: str, warehouse: PostgresWarehouse) -> dict[str, object]:
    return {"esi": EsiResource(base_url=url, expiry_guard_s=0), "warehouse": warehouse,
            IO_MANAGER_KEY: SnapshotIOManager(warehouse=warehouse)}


def test_partitions_never_synced_or_stale_are_listed_stalest_first(env) -> None:
    url, warehouse, instance = env
    for region in (SINQ, FORGE):  # Sinq Laison first: the stalest of the two later
        assert dg.materialize([ORDERS], partition_key=region, resources=resources(url, warehouse), instance=instance).success
    # Forge synced last and fine: the asset's latest materialization is fresh, yet three regions never synced
    result = dg.materialize([ORDERS, CHECK], resources=resources(url, warehouse), instance=instance,
                            selection=dg.AssetSelection.checks(dg.AssetCheckKey(ORDERS.key, PARTITIONS_FRESH_CHECK)))
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    metadata = {k: v.value for k, v in evaluation.metadata.items()}
    assert (metadata["partitions"], metadata["fresh"], metadata["never_synced"], metadata["late"]) == (5, 2, 3, 0)
    assert DOMAIN in metadata["stale_partitions"] and FORGE not in metadata["stale_partitions"]

    now = datetime.now(timezone.utc)
    later = partition_health(ORDERS_1M, ORDERS.key, instance, now + timedelta(seconds=90))  # past warn, not fail
    assert [key for key, _ in later.late] == [SINQ, FORGE] and later.failing == 0
    assert later.late[0][1] > later.late[1][1] >= 90
    much_later = partition_health(ORDERS_1M, ORDERS.key, instance, now + timedelta(seconds=200))
    assert much_later.failing == 2 and not much_later.passed
    for region in (DOMAIN, "10000030", "10000042"):
        dg.materialize([ORDERS], partition_key=region, resources=resources(url, warehouse), instance=instance)
    assert partition_health(ORDERS_1M, ORDERS.key, instance, datetime.now(timezone.utc)).passed


def test_the_expiry_sensor_reports_the_check_when_a_partition_changes_state(env) -> None:
    url, warehouse, instance = env
    job = build_sync_job(ORDERS_1M, ORDERS)
    sensor = build_expiry_sensor({ORDERS_1M.key: (ORDERS_1M, ORDERS, job)})
    repository = dg.Definitions(assets=[ORDERS], asset_checks=[CHECK], jobs=[job], sensors=[sensor],
                                resources=resources(url, warehouse)).get_repository_def()

    def tick(cursor: str | None):
        with dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=repository,
                                     resources={"warehouse": warehouse, "esi": EsiResource(base_url=url)}) as context:
            return sensor.evaluate_tick(context)

    first = tick(None)
    [event] = first.asset_events
    assert isinstance(event, dg.AssetCheckEvaluation) and event.check_name == PARTITIONS_FRESH_CHECK
    assert not event.passed and event.metadata["never_synced"].value == 5
    assert tick(first.cursor).asset_events == []  # nothing changed: nothing reported again
    dg.materialize([ORDERS], partition_key=FORGE, resources=resources(url, warehouse), instance=instance)
    [changed] = tick(first.cursor).asset_events
    assert changed.metadata["never_synced"].value == 4 and changed.metadata["fresh"].value == 1
