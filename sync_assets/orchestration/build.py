"""Definitions built from declarations: one API's (`api_definitions`) and the platform every API
shares (`platform_definitions`: the warehouse, its IO manager, the failure sensor, maintenance).
`sync_assets/defs/` holds one module per API calling these; `dg` loads that folder."""

from __future__ import annotations

import os
from typing import Sequence

import dagster as dg

from ..core.catalog import register
from ..warehouse import PostgresWarehouse, SnapshotIOManager
from .apis import ApiDefinition
from .assets import IO_MANAGER_KEY, build_derived_asset, build_sync_asset
from .automation import build_full_pass_schedule, build_schedule, build_sync_job
from .checks import build_dataset_checks
from .failures import build_failure_sensor
from .maintenance import maintenance_job, maintenance_schedule
from .sensors import build_expiry_sensor
from .settings import with_overrides

DATABASE_URL_ENV = "SYNC_ASSETS_DATABASE_URL"
MAX_BUDGET_WAIT_ENV = "SYNC_ASSETS_MAX_BUDGET_WAIT_S"


TUNABLE = ("max_attempts", "backoff_initial_s", "backoff_max_s", "max_walks", "walk_deadline_s", "retry_round_pause_s",
           "max_concurrency", "max_budget_wait_s", "rate_limit", "report_wait_s", "full_walk_every_s")


def budget_settings(api: str | None = None) -> dict[str, str]:
    """Settings an API resource takes from the environment: SYNC_ASSETS_MAX_BUDGET_WAIT_S for every
    API, and SYNC_ASSETS_<API>__<SETTING> (e.g. SYNC_ASSETS_IRIS__MAX_ATTEMPTS=3) for one; the
    resource validates them and names the field when one is wrong."""
    settings: dict[str, str] = {}
    if raw := os.environ.get(MAX_BUDGET_WAIT_ENV, "").strip():
        settings["max_budget_wait_s"] = raw
    for name in TUNABLE if api else ():
        if raw := os.environ.get(f"SYNC_ASSETS_{api.upper()}__{name.upper()}", "").strip():  # type: ignore[union-attr]
            settings[name] = raw
    return settings


def api_definitions(api: ApiDefinition) -> dg.Definitions:
    """One API: an asset, its checks, job and schedule per dataset; the API's sensors and its
    expiry sensor; the API's resources."""
    register(api.datasets)  # the warehouse finds a dataset by its asset key in the catalog
    assets, checks, jobs, schedules, entries = [], [], [], [], {}
    for dataset in map(with_overrides, api.datasets):
        if dataset.derived_from:  # computed from other datasets, re-derived when they change: no schedule, no API
            asset = build_derived_asset(dataset)
            assets.append(asset)
            checks.append(build_dataset_checks(dataset, asset))
            jobs.append(build_sync_job(dataset, asset))
            continue
        asset = build_sync_asset(dataset, api.spec)
        job = build_sync_job(dataset, asset)
        assets.append(asset)
        checks.append(build_dataset_checks(dataset, asset))
        jobs.append(job)
        schedules.append(build_schedule(dataset, asset, job))
        if full_pass := build_full_pass_schedule(dataset, asset, job):
            schedules.append(full_pass)
        entries[dataset.key] = (dataset, asset, job)
    return dg.Definitions(
        assets=assets, asset_checks=checks, jobs=jobs, schedules=schedules,
        sensors=[*api.sensors, build_expiry_sensor(entries, name=f"{api.spec.name}_expiry_sensor")],
        resources=api.resources(),
    )


def platform_definitions(warehouse: PostgresWarehouse | None = None) -> dg.Definitions:
    """What every API shares: the data database, its IO manager, the failure sensor, maintenance,
    and the executor of every run (asset page and backfills too): one process, so a killed run
    cannot leave a step writing."""
    warehouse = warehouse or PostgresWarehouse(database_url=dg.EnvVar(DATABASE_URL_ENV))
    return dg.Definitions(
        jobs=[maintenance_job],
        schedules=[maintenance_schedule],
        sensors=[build_failure_sensor()],
        resources={"warehouse": warehouse, IO_MANAGER_KEY: SnapshotIOManager(warehouse=warehouse)},
        executor=dg.in_process_executor,
    )


def build_definitions(apis: Sequence[ApiDefinition], warehouse: PostgresWarehouse | None = None) -> dg.Definitions:
    """The platform and the given APIs in one Definitions (tests and scripts wire their own)."""
    return dg.Definitions.merge(platform_definitions(warehouse), *map(api_definitions, apis))
