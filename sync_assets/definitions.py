"""The one Definitions object of the sync_assets code location: every API's datasets through the
same builders. An API brings its spec, its datasets and its resources (`ApiDefinition`)."""

from __future__ import annotations

import os
from typing import Sequence

import dagster as dg

from .apis.esi import ESI_DATASETS, EsiResource
from .apis.esi.auth import EsiAuthResource
from .apis.esi.datasets import CORPORATIONS
from .apis.esi.spec import DEFAULT_ESI_URL, ESI
from .apis.esi.sso.sso import DEFAULT_SSO_URL
from .core.catalog import register
from .core.datasets import WriteMode
from .defs.apis import ApiDefinition
from .defs.assets import IO_MANAGER_KEY, build_sync_asset
from .defs.automation import build_schedule, build_sync_job
from .defs.checks import build_partition_freshness_check, build_row_change_check, build_schema_check
from .defs.failures import build_failure_sensor
from .defs.maintenance import maintenance_job, maintenance_schedule
from .defs.sensors import build_corporation_sensor, build_expiry_sensor
from .defs.settings import with_overrides
from .warehouse import PostgresWarehouse, SnapshotIOManager

DATABASE_URL_ENV = "SYNC_ASSETS_DATABASE_URL"


MAX_BUDGET_WAIT_ENV = "SYNC_ASSETS_MAX_BUDGET_WAIT_S"


def budget_settings() -> dict[str, float]:
    """Settings every API resource takes from the environment."""
    raw = os.environ.get(MAX_BUDGET_WAIT_ENV, "").strip()
    return {"max_budget_wait_s": float(raw)} if raw else {}


def esi_api(esi: EsiResource | None = None, esi_auth: EsiAuthResource | None = None) -> ApiDefinition:
    esi = esi or EsiResource(base_url=os.environ.get(ESI.base_url_env) or DEFAULT_ESI_URL,
                             budget_database_url=dg.EnvVar(DATABASE_URL_ENV), **budget_settings())
    esi_auth = esi_auth or EsiAuthResource(
        esi=esi,
        database_url=dg.EnvVar(DATABASE_URL_ENV),
        client_id=dg.EnvVar("ESI_CLIENT_ID"),
        client_secret=dg.EnvVar("ESI_CLIENT_SECRET"),
        token_key=dg.EnvVar("SYNC_ASSETS_TOKEN_KEY"),
        sso_url=os.environ.get("ESI_SSO_URL") or DEFAULT_SSO_URL,
        sso_issuer=os.environ.get("ESI_SSO_ISSUER") or None,
    )
    return ApiDefinition(ESI, ESI_DATASETS, esi, credentials=esi_auth,
                         sensors=(build_corporation_sensor(CORPORATIONS.dynamic or ""),))


def build_definitions(
    esi: EsiResource | None = None,
    warehouse: PostgresWarehouse | None = None,
    esi_auth: EsiAuthResource | None = None,
    apis: Sequence[ApiDefinition] | None = None,
) -> dg.Definitions:
    """Everything of the code location. `apis`: the APIs to wire (default: ESI with the given
    resources); tests pass their own."""
    warehouse = warehouse or PostgresWarehouse(database_url=dg.EnvVar(DATABASE_URL_ENV))
    apis = list(apis) if apis is not None else [esi_api(esi, esi_auth)]
    assets, checks, jobs, schedules, sensors, entries = [], [], [], [], [], {}
    resources: dict[str, object] = {"warehouse": warehouse, IO_MANAGER_KEY: SnapshotIOManager(warehouse=warehouse)}
    for api in apis:
        register(api.datasets)  # the warehouse finds a dataset by its asset key in the catalog
        resources.update(api.resources())
        sensors.extend(api.sensors)
        for dataset in map(with_overrides, api.datasets):
            asset = build_sync_asset(dataset, api.spec)
            job = build_sync_job(dataset, asset)
            assets.append(asset)
            checks.append(build_schema_check(dataset, asset))
            checks.append(build_partition_freshness_check(dataset, asset))
            if dataset.write_mode is WriteMode.MIRROR:
                checks.append(build_row_change_check(dataset, asset))
            jobs.append(job)
            schedules.append(build_schedule(dataset, asset, job))
            entries[dataset.key] = (dataset, asset, job)
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[*jobs, maintenance_job],
        schedules=[*schedules, maintenance_schedule],
        sensors=[*sensors, build_expiry_sensor(entries), build_failure_sensor()],
        resources=resources,
        # runs of the asset page and backfills too: one process, so a killed run cannot leave a step writing
        executor=dg.in_process_executor,
    )


defs = build_definitions()
