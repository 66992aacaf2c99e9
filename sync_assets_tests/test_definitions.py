"""The code location loads, validates and exposes what users expect in the UI."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import dagster as dg
import pytest
from dagster import DagsterRunStatus

from sync_assets.apis.esi.datasets import MARKET_ORDERS, MARKET_PRICES
from sync_assets.orchestration.automation import job_name
from sync_assets.definitions import defs

ROOT = Path(__file__).resolve().parent.parent
ORDERS, PRICES = dg.AssetKey(["esi", "market_orders"]), dg.AssetKey(["esi", "market_prices"])


def test_dagster_definitions_validate_passes(database_url: str, tmp_path: Path) -> None:
    """As a user runs it from the project directory (dagster.yaml there wants DAGSTER_PG_URL)."""
    dagster = Path(sys.executable).with_name("dagster")
    env = {k: v for k, v in os.environ.items() if k not in ("SYNC_ASSETS_DATABASE_URL", "DAGSTER_HOME")}
    env["DAGSTER_PG_URL"] = database_url
    proc = subprocess.run([str(dagster), "definitions", "validate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All code locations passed validation" in proc.stdout + proc.stderr


def test_the_code_location_holds_every_definition_dg_finds_in_its_defs_folder() -> None:
    """It builds `defs/` at the folder itself; `dg.load_from_defs_folder` builds it at the project
    root, which adds only the component library's metadata."""
    everything = dg.load_from_defs_folder(path_within_project=ROOT / "sync_assets")

    def inventory(d: dg.Definitions) -> dict[str, set]:
        repo = d.get_repository_def()
        return {
            "assets": set(repo.assets_defs_by_key),
            "checks": {k for c in d.asset_checks or [] for k in c.check_keys},
            "jobs": {job.name for job in repo.get_all_jobs()},
            "schedules": {s.name for s in repo.schedule_defs},
            "sensors": {s.name for s in repo.sensor_defs},
            "resources": set(d.resources or {}),
        }

    ours, dgs = inventory(defs), inventory(everything)
    assert ours == dgs and all(ours.values())
    assert set(everything.metadata or {}) - set(defs.metadata or {}) == {"plugin_component_types_json"}


def test_assets_are_partitioned_grouped_pooled_and_have_freshness() -> None:
    specs = {s.key: s for s in defs.resolve_all_asset_specs()}
    assert {ORDERS, PRICES} <= set(specs)
    orders, prices = specs[ORDERS], specs[PRICES]
    assert orders.partitions_def.get_partition_keys() == ["10000002", "10000043", "10000032", "10000030", "10000042"]
    assert prices.partitions_def is None
    for spec, dataset in ((orders, MARKET_ORDERS), (prices, MARKET_PRICES)):
        assert spec.group_name == "esi_public"
        assert spec.kinds == {"postgres", "python"}
        assert defs.resolve_assets_def(spec.key).op.pool == "esi"
        assert spec.description and dataset.route in spec.description
        warn, fail = dataset.freshness_windows
        assert spec.freshness_policy.fail_window.to_timedelta() == fail
        assert spec.freshness_policy.warn_window.to_timedelta() == warn
        schema = spec.metadata["dagster/column_schema"]
        assert [c.name for c in schema.columns] == [c.name for c in dataset.table_columns]
    assert MARKET_ORDERS.freshness_windows[0].total_seconds() == 900


def test_schedules_run_by_default_at_the_dataset_cadence() -> None:
    schedules = {s.name: s for s in defs.schedules}
    orders = schedules[f"{job_name(MARKET_ORDERS)}_schedule"]
    prices = schedules[f"{job_name(MARKET_PRICES)}_schedule"]
    assert orders.default_status == dg.DefaultScheduleStatus.RUNNING
    assert orders.cron_schedule == "2-59/5 * * * *" and prices.cron_schedule == "7 * * * *"


@pytest.fixture(autouse=True)
def _database_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs are only created, never executed, here: the URL just has to be well-formed.
    monkeypatch.setenv("SYNC_ASSETS_DATABASE_URL", "postgresql+psycopg2://sync@127.0.0.1:1/unused")


@pytest.fixture(scope="module")
def esi_url() -> Iterator[str]:
    from sync_assets.apis.esi.sandbox.esi import EsiSandbox
    from sync_assets.apis.esi.sandbox.server import serve_in_thread

    sandbox = EsiSandbox(regions={10000002: 1}, n_price_types=10)
    with serve_in_thread(sandbox) as url:
        sandbox_ref.append(sandbox)
        yield url
        sandbox_ref.clear()


sandbox_ref: list = []


def _tick(schedule: dg.ScheduleDefinition, instance: dg.DagsterInstance, database_url: str, esi_url: str, hour: int = 5):
    from sync_assets.apis.esi import EsiResource
    from sync_assets.warehouse import PostgresWarehouse

    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 11, 23, hour, 7, tzinfo=timezone.utc),
        repository_def=defs.get_repository_def(),
        resources={"warehouse": PostgresWarehouse(database_url=database_url), "esi": EsiResource(base_url=esi_url)},
    ) as ctx:
        return schedule.evaluate_tick(ctx)


def test_schedule_skips_a_partition_whose_run_is_still_active(database_url: str, esi_url: str) -> None:
    schedules = {s.name: s for s in defs.schedules}
    schedule = schedules[f"{job_name(MARKET_ORDERS)}_schedule"]
    job = defs.resolve_job_def(job_name(MARKET_ORDERS))
    with dg.instance_for_test() as instance:
        assert sorted(r.partition_key for r in _tick(schedule, instance, database_url, esi_url).run_requests) == sorted(MARKET_ORDERS.partitioning.keys)
        instance.create_run_for_job(job_def=job, status=DagsterRunStatus.STARTED, tags={"dagster/partition": "10000002"},
                                    asset_selection=frozenset({ORDERS}))
        result = _tick(schedule, instance, database_url, esi_url)
        assert "10000002" not in {r.partition_key for r in result.run_requests}
        assert len(result.run_requests) == 4


def test_unpartitioned_schedule_returns_a_skip_reason_while_running(database_url: str, esi_url: str) -> None:
    schedules = {s.name: s for s in defs.schedules}
    schedule = schedules[f"{job_name(MARKET_PRICES)}_schedule"]
    job = defs.resolve_job_def(job_name(MARKET_PRICES))
    with dg.instance_for_test() as instance:
        assert len(_tick(schedule, instance, database_url, esi_url).run_requests) == 1
        run = instance.create_run_for_job(job_def=job, status=DagsterRunStatus.STARTING, asset_selection=frozenset({PRICES}))
        result = _tick(schedule, instance, database_url, esi_url)
        assert result.run_requests == [] and run.run_id[:8] in result.skip_message
        # a run of another asset does not block this one
        other = defs.resolve_job_def(job_name(MARKET_ORDERS))
        instance.report_run_canceled(run)
        instance.create_run_for_job(job_def=other, status=DagsterRunStatus.STARTED, asset_selection=frozenset({ORDERS}),
                                    tags={"dagster/partition": "10000002"})
        assert len(_tick(schedule, instance, database_url, esi_url).run_requests) == 1


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url", "postgresql+psycopg://u@h/db", "postgresql://u@h"])
def test_bad_database_url_names_the_setting(url: str) -> None:
    from sync_assets.warehouse import DatabaseConfigError, PostgresWarehouse

    with pytest.raises(DatabaseConfigError, match="SYNC_ASSETS_DATABASE_URL"):
        PostgresWarehouse(database_url=url).url


def test_bad_esi_url_names_the_setting() -> None:
    from sync_assets.apis.esi import EsiResource

    with pytest.raises(Exception, match="SYNC_ASSETS_ESI_URL"):
        EsiResource(base_url="esi.evetech.net")


def test_schedules_skip_the_daily_esi_downtime_with_a_reason(database_url: str, esi_url: str) -> None:
    schedule = {s.name: s for s in defs.schedules}[f"{job_name(MARKET_PRICES)}_schedule"]
    with dg.instance_for_test() as instance:
        result = _tick(schedule, instance, database_url, esi_url, hour=11)
        assert result.run_requests == [] and "daily downtime" in result.skip_message


def test_schedules_skip_while_esi_status_says_it_is_down(database_url: str, esi_url: str) -> None:
    schedule = {s.name: s for s in defs.schedules}[f"{job_name(MARKET_PRICES)}_schedule"]
    sandbox_ref[0].configure(error_rate=1.0, error_routes=["status"])
    try:
        with dg.instance_for_test() as instance:
            result = _tick(schedule, instance, database_url, esi_url)
            assert result.run_requests == [] and "ESI /status answered 50" in result.skip_message
    finally:
        sandbox_ref[0].configure(error_rate=0.0)


def test_assets_carry_filterable_tags_owners_storage_and_a_link_to_their_declaration() -> None:
    from sync_assets.apis.esi.datasets import ESI_DATASETS

    specs = {s.key: s for s in defs.resolve_all_asset_specs()}
    for dataset in ESI_DATASETS:
        spec = specs[dg.AssetKey([dataset.api, dataset.name])]
        assert spec.tags["api"] == "esi" and spec.tags["write_mode"] == dataset.write_mode.value
        assert spec.tags["auth"] == ("token" if dataset.auth else "public")
        assert spec.owners == ["team:sync_assets"]
        assert spec.metadata["dagster/storage_kind"] == "postgres"
        assert spec.metadata["dagster/table_name"].endswith(f"esi.{dataset.name}")
        [reference] = spec.metadata["dagster/code_references"].code_references
        line = Path(reference.file_path).read_text().splitlines()[reference.line_number - 1]
        # the module-level statement that declares it, even when a helper builds the Dataset
        assert Path(reference.file_path).name == "datasets.py" and line.split("=")[0].strip().isupper(), line
        assert f'"{dataset.name}"' in "\n".join(Path(reference.file_path).read_text().splitlines()[reference.line_number - 1:reference.line_number + 3])


def test_owners_come_from_the_environment_and_bad_ones_name_the_setting() -> None:
    from sync_assets.orchestration.settings import SettingError, owners

    assert owners("esi", {"SYNC_ASSETS_OWNERS": "team:trading, ops@example.com"}) == ["team:trading", "ops@example.com"]
    assert owners("esi", {"SYNC_ASSETS_OWNERS": "team:all", "SYNC_ASSETS_OWNERS__ESI": "team:eve"}) == ["team:eve"]
    with pytest.raises(SettingError, match="SYNC_ASSETS_OWNERS__ESI='bob'"):
        owners("esi", {"SYNC_ASSETS_OWNERS__ESI": "bob"})


def test_an_apis_schedule_zone_comes_from_the_environment_and_a_bad_one_names_the_setting() -> None:
    from sync_assets.apis.iris.datasets import TRANSACTIONS
    from sync_assets.orchestration.settings import SettingError, with_overrides

    assert with_overrides(TRANSACTIONS, {}).schedule_timezone == "Europe/Dublin"
    assert with_overrides(TRANSACTIONS, {"SYNC_ASSETS_SCHEDULE_TIMEZONE__IRIS": "America/New_York"}).schedule_timezone == "America/New_York"
    with pytest.raises(SettingError, match="SYNC_ASSETS_SCHEDULE_TIMEZONE__IRIS='Mars/Olympus'"):
        with_overrides(TRANSACTIONS, {"SYNC_ASSETS_SCHEDULE_TIMEZONE__IRIS": "Mars/Olympus"})
