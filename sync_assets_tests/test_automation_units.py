"""The tags every sync run carries, derived from the dataset, and the run queue's tagging of the asset
page's runs (no database, no server)."""

from __future__ import annotations

import dagster as dg
import pytest

from sync_assets.apis.esi.datasets import MARKET_ORDERS, MARKET_PRICES
from sync_assets.orchestration.automation import MAX_RUNTIME_TAG, job_name, max_runtime_s, run_tags
from sync_assets.orchestration.run_queue import SLOT_TAG, slot_for_run
from sync_assets.orchestration.settings import SettingError
from sync_assets.definitions import defs


def test_max_runtime_follows_the_cadence_and_can_be_overridden() -> None:
    assert max_runtime_s(MARKET_ORDERS, {}) == 1800  # 300 s cache: the 30 min floor
    assert max_runtime_s(MARKET_PRICES, {}) == 7200  # two hourly periods
    assert max_runtime_s(MARKET_ORDERS, {"SYNC_ASSETS_MAX_RUNTIME_S": "900"}) == 900
    specific = {"SYNC_ASSETS_MAX_RUNTIME__ESI__MARKET_ORDERS": "600", "SYNC_ASSETS_MAX_RUNTIME_S": "900"}
    assert max_runtime_s(MARKET_ORDERS, specific) == 600
    with pytest.raises(SettingError, match="SYNC_ASSETS_MAX_RUNTIME__ESI__MARKET_ORDERS"):
        max_runtime_s(MARKET_ORDERS, {"SYNC_ASSETS_MAX_RUNTIME__ESI__MARKET_ORDERS": "10m"})


def test_sync_jobs_run_in_one_process_and_tag_every_run_with_its_slot() -> None:
    orders, prices = defs.resolve_job_def(job_name(MARKET_ORDERS)), defs.resolve_job_def(job_name(MARKET_PRICES))
    assert orders.executor_def is dg.in_process_executor and prices.executor_def is dg.in_process_executor
    assert prices.run_tags[SLOT_TAG] == "esi.market_prices" and prices.run_tags[MAX_RUNTIME_TAG] == "7200"
    assert SLOT_TAG not in orders.run_tags  # per partition: from the job's partitioned config
    assert orders.get_tags_for_partition_key("10000002", None)[SLOT_TAG] == "esi.market_orders[10000002]"
    assert run_tags(MARKET_ORDERS, "10000043", "expiry")[SLOT_TAG] == "esi.market_orders[10000043]"


def test_the_run_queue_gives_a_single_asset_run_its_slot() -> None:
    orders = dg.AssetKey(["esi", "market_orders"])
    page = dg.DagsterRun(job_name="__ASSET_JOB", run_id="r1", asset_selection=frozenset({orders}),
                         tags={"dagster/partition": "10000002"})
    assert slot_for_run(page) == "esi.market_orders[10000002]"
    tagged = dg.DagsterRun(job_name="sync_esi_market_orders", run_id="r2", tags={SLOT_TAG: "esi.market_orders[10000002]"})
    assert slot_for_run(tagged) is None  # already has one
    several = dg.DagsterRun(job_name="__ASSET_JOB", run_id="r3", asset_selection=frozenset({orders, dg.AssetKey(["esi", "market_prices"])}))
    assert slot_for_run(several) is None
    # a sync job started through the API with only a partition tag (DagsterGraphQLClient.submit_job_execution):
    # the job's own tags name the dataset
    job_tags = defs.resolve_job_def(job_name(MARKET_ORDERS)).run_tags
    client = dg.DagsterRun(job_name=job_name(MARKET_ORDERS), run_id="r4", tags={**job_tags, "dagster/partition": "10000043"})
    assert slot_for_run(client) == "esi.market_orders[10000043]"
    assert slot_for_run(dg.DagsterRun(job_name="other", run_id="r5", tags={"dagster/partition": "x"})) is None
