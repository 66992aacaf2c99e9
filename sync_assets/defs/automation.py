"""Schedules derived from dataset cadences, each guarded against overlapping runs."""

from __future__ import annotations

import dagster as dg
from dagster import DagsterRunStatus

from ..datasets import Dataset

ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def job_name(dataset: Dataset) -> str:
    return f"sync_{dataset.api}_{dataset.name}"


def build_sync_job(dataset: Dataset, asset: dg.AssetsDefinition) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(job_name(dataset), selection=dg.AssetSelection.assets(asset), description=f"Sync {dataset.key}")


def active_runs(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_key: str | None) -> list[str]:
    """Ids of queued or running runs that materialize `asset_key` (that partition), from any
    launcher: this schedule, another schedule, a sensor or the UI."""
    tags = {"dagster/partition": partition_key} if partition_key else None
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE_STATUSES, tags=tags))
    return [run.run_id for run in runs if run.asset_selection is None or asset_key in run.asset_selection]


def _partition_keys(dataset: Dataset, instance: dg.DagsterInstance) -> list[str | None]:
    if dataset.partitioning is None:
        return [None]
    if dataset.partitioning.dynamic:
        return list(instance.get_dynamic_partitions(dataset.partitioning.dynamic))
    return list(dataset.partitioning.keys)


def build_schedule(dataset: Dataset, asset: dg.AssetsDefinition, job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    asset_key = asset.key

    @dg.schedule(
        name=f"{job_name(dataset)}_schedule",
        job=job,
        cron_schedule=dataset.schedule_cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Refresh {dataset.key} at its API cache cadence ({dataset.cache_seconds} s); skips busy partitions.",
    )
    def schedule(context: dg.ScheduleEvaluationContext):
        tick = context.scheduled_execution_time.isoformat()
        requests, busy = [], []
        for key in _partition_keys(dataset, context.instance):
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
