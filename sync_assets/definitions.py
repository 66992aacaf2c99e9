"""The one Definitions object of the sync_assets code location."""

from __future__ import annotations

import os

import dagster as dg

from .apis.esi import DEFAULT_ESI_URL, EsiResource
from .apis.esi.auth import EsiAuthResource
from .apis.esi.sso.sso import DEFAULT_SSO_URL
from .apis.esi.datasets import ESI_DATASETS
from .core.datasets import WriteMode
from .apis.esi.datasets import CORPORATIONS
from .defs.assets import AUTH_RESOURCE_KEY, IO_MANAGER_KEY, build_sync_asset
from .defs.automation import build_schedule, build_sync_job
from .defs.checks import build_row_change_check, build_schema_check
from .defs.maintenance import maintenance_job, maintenance_schedule
from .defs.sensors import build_corporation_sensor, build_expiry_sensor, build_failure_sensor
from .defs.settings import with_overrides
from .warehouse import PostgresWarehouse, SnapshotIOManager

ESI_URL_ENV = "SYNC_ASSETS_ESI_URL"
DATABASE_URL_ENV = "SYNC_ASSETS_DATABASE_URL"


def build_definitions(
    esi: EsiResource | None = None, warehouse: PostgresWarehouse | None = None, esi_auth: EsiAuthResource | None = None
) -> dg.Definitions:
    esi = esi or EsiResource(base_url=os.environ.get(ESI_URL_ENV) or DEFAULT_ESI_URL, budget_database_url=dg.EnvVar(DATABASE_URL_ENV))
    warehouse = warehouse or PostgresWarehouse(database_url=dg.EnvVar(DATABASE_URL_ENV))
    esi_auth = esi_auth or EsiAuthResource(
        esi=esi,
        database_url=dg.EnvVar(DATABASE_URL_ENV),
        client_id=dg.EnvVar("ESI_CLIENT_ID"),
        client_secret=dg.EnvVar("ESI_CLIENT_SECRET"),
        token_key=dg.EnvVar("SYNC_ASSETS_TOKEN_KEY"),
        sso_url=os.environ.get("ESI_SSO_URL") or DEFAULT_SSO_URL,
        sso_issuer=os.environ.get("ESI_SSO_ISSUER") or None,
    )
    assets, checks, jobs, schedules, entries = [], [], [], [], {}
    for dataset in map(with_overrides, ESI_DATASETS):
        asset = build_sync_asset(dataset, resource_key="esi")
        job = build_sync_job(dataset, asset)
        assets.append(asset)
        checks.append(build_schema_check(dataset, asset))
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
        sensors=[build_corporation_sensor(CORPORATIONS.dynamic or ""), build_expiry_sensor(entries), build_failure_sensor()],
        resources={
            "esi": esi,
            AUTH_RESOURCE_KEY: esi_auth,
            "warehouse": warehouse,
            IO_MANAGER_KEY: SnapshotIOManager(warehouse=warehouse),
        },
    )


defs = build_definitions()
