"""Sensors: corporations appear as partitions when a token for them is stored; expired caches and new
partitions are launched. (The run-failure sensor is in failures.py.)"""


import json
import os
from collections import defaultdict
from datetime import datetime, timezone
from typing import Mapping

import dagster as dg

from ..apis.esi.sso import tokens
from ..core.catalog import DATASETS_BY_KEY
from ..core.datasets import Dataset
from ..warehouse import PostgresWarehouse
from .automation import EXPIRY_SENSOR_INTERVAL_S, SyncJob, run_tags, slot
from .failures import build_failure_sensor  # noqa: F401  (moved to failures.py; still importable from here)
from .checks import partition_health, partition_health_evaluation
from .guards import api_blocker, in_progress, last_success
from .partitions import kept_fresh, partition_keys, partitioned


def build_corporation_sensor(partitions_name: str) -> dg.SensorDefinition:
    @dg.sensor(
        name="esi_corporations_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={"warehouse"},  # tokens live in the data database; no SSO settings needed to list them
        description="Adds a corporation partition when a token of a new corporation is stored; reports (never deletes) "
        "corporations whose tokens all stopped working.",
    )
    def esi_corporations_sensor(context: dg.SensorEvaluationContext):
        stored = tokens.list_tokens(getattr(context.resources, "warehouse").engine())
        by_corporation: dict[int, list[tokens.TokenInfo]] = defaultdict(list)
        for token in stored:
            if token.corporation_id is not None:
                by_corporation[token.corporation_id].append(token)
        usable = {corp for corp, group in by_corporation.items() if any(t.status == "valid" for t in group)}
        known = set(context.instance.get_dynamic_partitions(partitions_name))
        new = sorted(str(corp) for corp in usable if str(corp) not in known)
        dead = sorted(key for key in known if int(key) not in usable)
        report = f"; no usable token (partition kept, data kept): {', '.join(dead)}" if dead else ""
        if dead:
            context.log.warning(f"corporations without a usable token: {', '.join(dead)}")
        if not new:
            return dg.SkipReason(f"no new corporation ({len(known)} known){report}")
        context.log.info(f"adding corporation partitions: {', '.join(new)}")
        return dg.SensorResult(
            dynamic_partitions_requests=[dg.DynamicPartitionsDefinition(name=partitions_name).build_add_request(new)]
        )

    return esi_corporations_sensor


EXPIRY_MARGIN_ENV = "SYNC_ASSETS_EXPIRY_MARGIN_S"


def build_expiry_sensor(entries: Mapping[str, tuple[Dataset, dg.AssetsDefinition, SyncJob]],
                        name: str = "expiry_sensor") -> dg.SensorDefinition:
    """Launch a dataset partition once the API's cache for it has expired (plus a margin): as fresh
    as the API allows, never a request before the API would answer differently, one launch per
    Expires (the run key). Partitions never synced (a corporation just connected, a new region, a
    fresh deployment) are launched at once, once; work a spent API budget deferred is relaunched
    when the budget has refilled, once per deferral; a schedule tick retries what failed."""
    margin_s = float(os.environ.get(EXPIRY_MARGIN_ENV) or 15)

    @dg.sensor(
        name=name,
        jobs=[job for _, _, job in entries.values()],
        minimum_interval_seconds=EXPIRY_SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={"warehouse", *{dataset.api for dataset, _, _ in entries.values()}},
        description=f"Refreshes a dataset partition {margin_s:.0f}s after its stored Expires and syncs new partitions at "
        "once; skips downtime, open circuits and partitions with a run still queued or running. Reports each "
        "dataset's partitions_fresh check when a partition turns stale or fresh.",
    )
    def expiry_sensor(context: dg.SensorEvaluationContext):
        warehouse: PostgresWarehouse = getattr(context.resources, "warehouse")
        instance = context.instance
        now = datetime.now(timezone.utc)
        known = {key: set(kept_fresh(dataset, instance)) for key, (dataset, _, _) in entries.items()}
        every = {key: set(partition_keys(dataset, instance)) for key, (dataset, _, _) in entries.items()}
        candidates: list[tuple[str, str | None, str, str]] = []  # (dataset, partition, trigger, why: the run key's tail)
        waiting: dict[tuple[str, str | None], datetime] = {}  # deferred until a budget refills
        for dataset_key, partition, retry_at in warehouse.deferrals():  # a backfilled history window too
            if (partition or None) not in every.get(dataset_key, ()):
                continue
            if retry_at > now:
                waiting[(dataset_key, partition or None)] = retry_at
            else:
                candidates.append((dataset_key, partition or None, "deferred", f"deferred {retry_at.isoformat()}"))
        for dataset_key, partition, expires_at in warehouse.expired_partitions(margin_s):
            if (partition or None) in known.get(dataset_key, ()):  # a removed region or corporation is not launched
                candidates.append((dataset_key, partition or None, "expiry", f"expires {expires_at.isoformat()}"))
        reported: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        health_events = []
        for dataset_key, (dataset, asset, _) in entries.items():
            synced = last_success(instance, asset.key, partitioned(dataset))
            # every partition never synced, history windows too: what nobody synced is synced at once
            candidates += [(dataset_key, key, "new_partition", "first sync") for key in sorted(every[dataset_key], key=str) if key not in synced]
            # per-partition health (the partitions_fresh check), reported when a partition changes state
            health = partition_health(dataset, asset.key, instance, now, synced)
            if reported.get(dataset_key) != health.fingerprint:
                reported[dataset_key] = health.fingerprint
                health_events.append(partition_health_evaluation(dataset, asset.key, health))
        requests, notes, blockers, seen = [], [], {}, set()
        sources: dict[str, dict[str | None, datetime]] = {}
        for dataset_key, key, trigger, why in candidates:
            if (dataset_key, key) in seen:  # expired and never materialized (Dagster's storage was reset): once
                continue
            seen.add((dataset_key, key))
            dataset, asset, job = entries[dataset_key]
            label = slot(dataset, key)
            if (dataset_key, key) in waiting:
                notes.append(f"{label}: deferred until {waiting[dataset_key, key]:%H:%M:%S} UTC (API budget)")
                continue
            if (missing := _source_missing(dataset, key, instance, sources)) is not None:
                notes.append(f"{label}: waiting for its source {missing} to be synced first")  # its slices come from there
                continue
            if dataset.api not in blockers:
                blockers[dataset.api] = api_blocker(dataset.api, now, warehouse, getattr(context.resources, dataset.api).server_status)
            if blockers[dataset.api]:
                notes.append(f"{label}: {blockers[dataset.api]}")
                continue
            run_id = in_progress(instance, asset.key, key)
            if run_id:
                notes.append(f"{label}: run {run_id[:8]} still queued or running")
                continue
            requests.append(dg.RunRequest(job_name=job.name, partition_key=key, run_key=f"{label}:{why}",
                                          tags=run_tags(dataset, key, trigger)))
        if notes:
            context.log.info("not launched: " + "; ".join(notes))
        skip = None if requests else ("; ".join(notes) if notes else "nothing expired, no new partition")
        return dg.SensorResult(run_requests=requests, skip_reason=skip, cursor=json.dumps(reported, sort_keys=True),
                               asset_events=health_events)

    return expiry_sensor


def _source_missing(dataset: Dataset, key: str | None, instance: dg.DagsterInstance,
                    cache: dict[str, dict[str | None, datetime]]) -> str | None:
    """The slot of a sliced dataset's source partition never synced yet (its slices would be none:
    an empty partition reported as synced), or None."""
    if dataset.slices is None or dataset.slices.source is None:
        return None
    source = DATASETS_BY_KEY[dataset.slices.source]
    if source.key not in cache:
        cache[source.key] = last_success(instance, dg.AssetKey(source.key.split(".")), partitioned(source))
    wanted = key if partitioned(source) else None
    return None if wanted in cache[source.key] else slot(source, wanted)
