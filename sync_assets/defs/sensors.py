"""Sensors: corporations appear as partitions when a token for them is stored."""


import os
from collections import defaultdict
from datetime import datetime, timezone
from typing import Mapping

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from ..apis.esi.sso import tokens
from ..core.catalog import DATASETS_BY_KEY
from ..core.datasets import Dataset
from ..warehouse import PostgresWarehouse
from .failures import classify, redact
from .guards import active_runs, api_blocker


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


def build_expiry_sensor(entries: Mapping[str, tuple[Dataset, dg.AssetsDefinition, UnresolvedAssetJobDefinition]]) -> dg.SensorDefinition:
    """Launch a dataset partition once ESI's cache for it has expired (plus a margin): as fresh as
    the API allows, and never a request before the API would answer differently."""
    margin_s = float(os.environ.get(EXPIRY_MARGIN_ENV) or 15)

    @dg.sensor(
        name="expiry_sensor",
        jobs=[job for _, _, job in entries.values()],
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={"warehouse", "esi"},
        description=f"Refreshes a dataset partition {margin_s:.0f}s after its stored Expires; skips downtime, open circuits "
        "and partitions still running.",
    )
    def expiry_sensor(context: dg.SensorEvaluationContext):
        warehouse: PostgresWarehouse = getattr(context.resources, "warehouse")
        now = datetime.now(timezone.utc)
        requests, notes, blockers = [], [], {}
        for dataset_key, partition, expires_at in warehouse.expired_partitions(margin_s):
            if dataset_key not in entries:
                continue
            dataset, asset, job = entries[dataset_key]
            if dataset.api not in blockers:
                blockers[dataset.api] = api_blocker(dataset.api, now, warehouse, getattr(context.resources, dataset.api).server_status)
            if blockers[dataset.api]:
                notes.append(f"{dataset_key}[{partition}]: {blockers[dataset.api]}")
                continue
            key = partition or None
            running = active_runs(context.instance, asset.key, key)
            if running:
                notes.append(f"{dataset_key}[{partition}]: run {running[0][:8]} still active")
                continue
            requests.append(
                dg.RunRequest(
                    job_name=job.name,
                    partition_key=key,
                    run_key=f"{dataset_key}:{partition}:{expires_at.isoformat()}",  # one launch per expiry
                    tags={"sync_assets/dataset": dataset_key, "sync_assets/trigger": "expiry"},
                )
            )
        if notes:
            context.log.info("not launched: " + "; ".join(notes))
        if requests:
            return requests
        return dg.SkipReason("nothing expired" if not notes else "; ".join(notes))

    return expiry_sensor


LAST_SYNC_CHECK = "last_sync"


def build_failure_sensor() -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name="sync_failure_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records every failed sync (dataset, partition, class, reason) and marks the asset's "
        f"`{LAST_SYNC_CHECK}` check failed, so the UI shows why a dataset is red.",
    )
    def sync_failure_sensor(context: dg.RunFailureSensorContext, warehouse: PostgresWarehouse):
        run = context.dagster_run
        message = redact(_failure_text(context))
        failure_class = classify(message)
        partition = run.tags.get("dagster/partition")
        for key in sorted(_run_assets(context), key=lambda k: k.to_user_string()):
            dataset_key = ".".join(key.path)
            if dataset_key not in DATASETS_BY_KEY:
                continue
            warehouse.record_failure(dataset_key, partition, run.run_id, failure_class, message)
            context.instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(
                    asset_key=key,
                    check_name=LAST_SYNC_CHECK,
                    passed=False,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=f"{failure_class}: {message[:500]}",
                    metadata={"failure_class": failure_class, "partition": partition or "", "run_id": run.run_id,
                              "reason": message[:2000]},
                )
            )
        context.log.info(f"run {run.run_id[:8]} failed ({failure_class})")

    return sync_failure_sensor


def _run_assets(context: dg.RunFailureSensorContext) -> set[dg.AssetKey]:
    """The assets the failed run was to materialize (its selection, or its planned materializations)."""
    run = context.dagster_run
    if run.asset_selection:
        return set(run.asset_selection)
    planned = context.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    return {entry.dagster_event.event_specific_data.asset_key for entry in planned if entry.dagster_event}


def _failure_text(context: dg.RunFailureSensorContext) -> str:
    texts = [context.failure_event.message or ""]
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            texts.append(error.message.strip())
            error = error.cause
    return "\n".join(t for t in texts if t)
