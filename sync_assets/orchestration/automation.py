"""Sync jobs, the tags of their runs, and the schedules that are the floor under the expiry sensor.

- One run per (dataset, partition) at a time, from every launcher: each sync run carries
  `sync_assets/slot` = "<dataset>[<partition>]" and dagster.yaml limits every value of that tag to
  one run (`concurrency.runs.tag_concurrency_limits`, `applyLimitPerUniqueValue`). A second launch
  queues behind the first; launches of other datasets or partitions are not held up.
- One process per run (`in_process_executor`): killing the run process kills the sync with it, so a
  failed run cannot go on writing.
- A maximum run time (`dagster/max_runtime`, enforced by run monitoring) from the dataset's cadence.
- One refresh per cache period: the expiry sensor refreshes a partition when its stored `Expires`
  passes and syncs new partitions at once; a schedule tick launches only what that left behind.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Mapping, Protocol

import dagster as dg

from ..core.datasets import Dataset
from ..warehouse import PostgresWarehouse
from .guards import api_blocker, in_progress, last_success, stored_expiry
from .partitions import kept_fresh, partitioned
from .run_queue import SLOT_TAG
from .settings import SettingError, variable

DATASET_TAG = "sync_assets/dataset"
TRIGGER_TAG = "sync_assets/trigger"
DEFERRED_TAG = "sync_assets/deferred_until"  # set by a run whose remaining work waits for an API budget
MAX_RUNTIME_TAG = "dagster/max_runtime"  # read by Dagster's run monitoring (dagster.yaml run_monitoring)
MAX_RUNTIME_ENV = "SYNC_ASSETS_MAX_RUNTIME_S"


class SyncJob(Protocol):
    """What `define_asset_job` returns (its class is not exported by dagster)."""

    name: str


def job_name(dataset: Dataset) -> str:
    return f"sync_{dataset.api}_{dataset.name}"


def slot(dataset: Dataset, partition_key: str | None) -> str:
    return f"{dataset.key}[{partition_key}]" if partition_key else dataset.key


def max_runtime_s(dataset: Dataset, env: Mapping[str, str] | None = None) -> int:
    """Two cache periods, at least 30 minutes (a first sync of a big partition is slow); override per
    dataset with SYNC_ASSETS_MAX_RUNTIME__<API>__<DATASET> or for all with SYNC_ASSETS_MAX_RUNTIME_S."""
    env = os.environ if env is None else env
    for name in (variable("MAX_RUNTIME", dataset), MAX_RUNTIME_ENV):
        if raw := env.get(name, "").strip():
            if not raw.isdigit() or int(raw) < 60:
                raise SettingError(f"{name}={raw!r}: expected whole seconds, at least 60")
            return int(raw)
    return max(1800, 2 * dataset.cache_seconds)


def run_tags(dataset: Dataset, partition_key: str | None, trigger: str | None = None) -> dict[str, str]:
    """Tags of a sync run of one dataset partition (also set by the job itself for UI launches)."""
    tags = {DATASET_TAG: dataset.key, SLOT_TAG: slot(dataset, partition_key), MAX_RUNTIME_TAG: str(max_runtime_s(dataset))}
    return tags | ({TRIGGER_TAG: trigger} if trigger else {})


def build_sync_job(dataset: Dataset, asset: dg.AssetsDefinition) -> SyncJob:
    """The dataset's job. Its tags reach every run of it (schedule, sensor, launchpad, job backfill);
    the partition's slot comes from the job's partitioned config, which Dagster asks for the tags
    of every partition it launches."""
    partitions = asset.partitions_def
    config = None
    if partitions is not None:
        config = dg.PartitionedConfig(
            partitions_def=partitions,
            run_config_for_partition_key_fn=lambda _key: {},
            tags_for_partition_key_fn=lambda key: {SLOT_TAG: slot(dataset, key)},
        )
    tags = run_tags(dataset, None)
    if partitions is not None:
        del tags[SLOT_TAG]  # per partition, above
    return dg.define_asset_job(
        job_name(dataset),
        selection=dg.AssetSelection.assets(asset),
        config=config,
        tags=tags,
        executor_def=dg.in_process_executor,
        description=f"Sync {dataset.key}",
    )


EXPIRY_SENSOR_INTERVAL_S = 30  # the expiry sensor's minimum_interval_seconds


def overdue_after(dataset: Dataset) -> timedelta:
    """How long past its stored Expires a partition may stay before a schedule tick relaunches it:
    one cache period plus two of the expiry sensor's intervals, in which the sensor's launch should
    have refreshed it (a launch still queued or running is never doubled: see `in_progress`)."""
    return timedelta(seconds=dataset.cache_seconds + 2 * EXPIRY_SENSOR_INTERVAL_S)


def due_partitions(
    dataset: Dataset, asset_key: dg.AssetKey, instance: dg.DagsterInstance, warehouse: PostgresWarehouse, at: datetime
) -> tuple[list[str | None], list[str]]:
    """(partitions a schedule tick launches, notes on the others). Due: never materialized, no stored
    Expires (datasets without validators: the schedule is their cadence), or Expires passed more
    than `overdue_after` ago (the sensor's refresh failed or never came). Not due: a run of it is
    still queued or running, or its work waits for an API budget (the sensor resumes it)."""
    keys = kept_fresh(dataset, instance, at)
    synced = last_success(instance, asset_key, partitioned(dataset))
    expiry = stored_expiry(warehouse, dataset)
    deferred = {(p or None): t for d, p, t in warehouse.deferrals() if d == dataset.key}
    due, notes = [], []
    for key in keys:
        label = key or dataset.key
        run_id = in_progress(instance, asset_key, key)
        if run_id:
            notes.append(f"{label}: run {run_id[:8]} still queued or running")
        elif key in deferred and deferred[key] > at:
            notes.append(f"{label}: deferred until {deferred[key]:%H:%M:%S} UTC (API budget); the expiry sensor resumes it")
        elif key in synced and key in expiry and expiry[key] + overdue_after(dataset) > at:
            notes.append(f"{label}: refreshed by the expiry sensor (Expires {expiry[key]:%H:%M:%S} UTC)")
        else:
            due.append(key)
    return due, notes


def build_schedule(dataset: Dataset, asset: dg.AssetsDefinition, job: SyncJob) -> dg.ScheduleDefinition:
    asset_key = asset.key

    @dg.schedule(
        name=f"{job_name(dataset)}_schedule",
        job_name=job.name,
        cron_schedule=dataset.schedule_cron,
        execution_timezone=dataset.schedule_timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        required_resource_keys={"warehouse", dataset.api},
        description=f"Floor under the expiry sensor for {dataset.key} ({dataset.cache_seconds} s cache): launches "
        "partitions never synced, without stored Expires, or a cache period past Expires; skips API downtime "
        "(clock and /status) and an open circuit.",
    )
    def schedule(context: dg.ScheduleEvaluationContext):
        at = context.scheduled_execution_time
        warehouse: PostgresWarehouse = getattr(context.resources, "warehouse")
        blocker = api_blocker(dataset.api, at, warehouse, getattr(context.resources, dataset.api).server_status)
        if blocker:
            return dg.SkipReason(f"{dataset.key}: {blocker}")
        due, notes = due_partitions(dataset, asset_key, context.instance, warehouse, at)
        if notes:
            context.log.info("not launched: " + "; ".join(notes))
        if not due:
            return dg.SkipReason("; ".join(notes) if notes else "no partitions yet (no corporation token)")
        tick = at.isoformat()
        return [
            dg.RunRequest(run_key=f"{tick}:{key}" if key else tick, partition_key=key, tags=run_tags(dataset, key, "schedule"))
            for key in due
        ]

    return schedule


def build_full_pass_schedule(dataset: Dataset, asset: dg.AssetsDefinition, job: SyncJob) -> dg.ScheduleDefinition | None:
    """Incremental datasets: the periodic full read that catches what no "modified since" filter
    shows (a mirror's removals, closures); a run with `full_refresh`, like the launchpad's."""
    incremental = dataset.incremental
    if incremental is None or incremental.full_cron is None:
        return None
    asset_key = asset.key

    @dg.schedule(
        name=f"{job_name(dataset)}_full_pass_schedule",
        job_name=job.name,
        cron_schedule=incremental.full_cron,
        execution_timezone=dataset.schedule_timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        required_resource_keys={"warehouse", dataset.api},
        description=f"Full read of {dataset.key} (everything, not only rows changed since the cursor)"
        + (": removals are mirrored" if dataset.write_mode.value == "mirror" else ""),
    )
    def full_pass(context: dg.ScheduleEvaluationContext):
        at = context.scheduled_execution_time
        warehouse: PostgresWarehouse = getattr(context.resources, "warehouse")
        blocker = api_blocker(dataset.api, at, warehouse, getattr(context.resources, dataset.api).server_status)
        if blocker:
            return dg.SkipReason(f"{dataset.key}: {blocker}")
        keys = [key for key in kept_fresh(dataset, context.instance, at) if not in_progress(context.instance, asset_key, key)]
        config = {"ops": {asset.op.name: {"config": {"full_refresh": True}}}}
        return [dg.RunRequest(run_key=f"{at.isoformat()}:full:{key or ''}", partition_key=key, run_config=config,
                              tags=run_tags(dataset, key, "full_pass")) for key in keys]

    return full_pass
