"""The one Definitions object of the sync_assets code location."""

from __future__ import annotations

import os

import dagster as dg

from .api import DEFAULT_ESI_URL, EsiResource
from .datasets import ESI_DATASETS
from .defs.assets import IO_MANAGER_KEY, build_sync_asset
from .defs.automation import build_schedule, build_sync_job
from .warehouse import PostgresWarehouse, SnapshotIOManager

ESI_URL_ENV = "SYNC_ASSETS_ESI_URL"
DATABASE_URL_ENV = "SYNC_ASSETS_DATABASE_URL"


def build_definitions(esi: EsiResource | None = None, warehouse: PostgresWarehouse | None = None) -> dg.Definitions:
    esi = esi or EsiResource(base_url=os.environ.get(ESI_URL_ENV) or DEFAULT_ESI_URL)
    warehouse = warehouse or PostgresWarehouse(database_url=dg.EnvVar(DATABASE_URL_ENV))
    assets, jobs, schedules = [], [], []
    for dataset in ESI_DATASETS:
        asset = build_sync_asset(dataset, resource_key="esi")
        job = build_sync_job(dataset, asset)
        assets.append(asset)
        jobs.append(job)
        schedules.append(build_schedule(dataset, asset, job))
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        resources={
            "esi": esi,
            "warehouse": warehouse,
            IO_MANAGER_KEY: SnapshotIOManager(warehouse=warehouse),
        },
    )


defs = build_definitions()
