"""Schedules derived from dataset cadences, each guarded against overlapping runs."""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from ..core.datasets import Dataset
from ..warehouse import PostgresWarehouse
from .guards import active_runs, api_blocker, partition_keys

def job_name(dataset: Dataset) -> str:
    return f"sync_{dataset.api}_{dataset.name}"


def build_sync_job(dataset: Dataset, asset: dg.AssetsDefinition) -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(job_name(dataset), selection=dg.AssetSelection.assets(asset), description=f"Sync {dataset.key}")


def build_schedule(dataset: Dataset, asset: dg.AssetsDefinition, job: UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    asset_key = asset.key

    @dg.schedule(
        name=f"{job_name(dataset)}_schedule",
        job=job,
        cron_schedule=dataset.schedule_cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        required_resource_keys={"warehouse", dataset.api},
        description=f"Refresh {dataset.key} at its API cache cadence ({dataset.cache_seconds} s); "
        "skips busy partitions, API downtime (clock and /status) and an open circuit.",
    )
    def schedule(context: dg.ScheduleEvaluationContext):
        tick = context.scheduled_execution_time.isoformat()
        warehouse: PostgresWarehouse = getattr(context.resources, "warehouse")
        api = getattr(context.resources, dataset.api)
        blocker = api_blocker(dataset.api, context.scheduled_execution_time, warehouse, api.server_status)
        if blocker:
            return dg.SkipReason(f"{dataset.key}: {blocker}")
        requests, busy = [], []
        for key in partition_keys(dataset, context.instance):
            running = active_runs(context.instance, asset_key, key)
            if running:
                busy.append(f"{key or dataset.key} (run {running[0][:8]} still active)")
                continue
            run_key = f"{tick}:{key}" if key else tick
            requests.append(dg.RunRequest(run_key=run_key, partition_key=key, tags={"sync_assets/dataset": dataset.key}))
        if busy:
            context.log.info("skipped: " + "; ".join(busy))
        if not requests:
            return dg.SkipReason(
                "still running from an earlier launch: " + "; ".join(busy) if busy else "no partitions yet (no corporation token)"
            )
        return requests

    return schedule
