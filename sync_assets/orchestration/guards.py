"""What the automation reads before it launches: API downtime and circuits, and where each dataset
partition stands (Dagster's own per-partition records, the stored `Expires`).

Nothing here decides that a partition runs only once at a time: Dagster's run queue does, with the
`sync_assets/slot` tag limit in dagster.yaml. `in_progress` only avoids queuing a launch that would
wait behind a run of the same partition and then find nothing to do.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Mapping

import dagster as dg
from sqlalchemy import text

from ..apis import DOWNTIMES
from ..core.datasets import Dataset
from ..fetch.budget import PostgresBudget
from ..warehouse import SYNC_STATE, PostgresWarehouse


def api_blocker(api: str, at: datetime, warehouse: PostgresWarehouse, status: Callable[[], str | None] | None = None) -> str | None:
    """A reason to skip every dataset of `api` now, or None: its daily downtime, an open circuit,
    or what the API's own status route says (`status`)."""
    downtime = DOWNTIMES.get(api)
    if downtime and downtime.contains(at):
        return f"{api} daily downtime ({downtime.start_utc:%H:%M} UTC, {downtime.minutes} min)"
    reason = PostgresBudget(warehouse.engine()).open_circuit(api)
    if reason:
        return f"{api} circuit open: {reason}"
    return status() if status else None


def in_progress(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_key: str | None) -> str | None:
    """Id of an unfinished run that plans to materialize this asset partition, or None. Dagster
    records the plan per asset partition when any launcher creates a run (what
    `AutomationCondition.in_progress()` reads), so a run with no asset selection counts only for
    the assets it really materializes."""
    planned = instance.get_latest_planned_materialization_info(asset_key, partition_key)
    if planned is None:
        return None
    run = instance.get_run_by_id(planned.run_id)
    return run.run_id if run is not None and not run.is_finished else None


def last_success(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitioned: bool) -> dict[str | None, datetime]:
    """When each partition (None: the unpartitioned asset) last materialized, from Dagster's event
    log: two queries per asset, whatever the number of partitions."""
    if not partitioned:
        event = instance.get_latest_materialization_event(asset_key)
        return {None: datetime.fromtimestamp(event.timestamp, timezone.utc)} if event else {}
    storage_ids = instance.get_latest_storage_id_by_partition(asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION)
    if not storage_ids:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(storage_ids.values())), limit=len(storage_ids)
    ).records
    return {r.partition_key: datetime.fromtimestamp(r.timestamp, timezone.utc) for r in records}


def stored_expiry(warehouse: PostgresWarehouse, dataset: Dataset) -> Mapping[str | None, datetime]:
    """The earliest stored `Expires` of each partition of `dataset` (a sliced dataset keeps one state
    row per slice, "<partition>/division=3"). Datasets that keep no validators (immutable items)
    have none."""
    with warehouse.engine().connect() as conn:
        if not conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": SYNC_STATE}).scalar_one():
            return {}
        rows = conn.execute(
            text(f"SELECT split_part(partition_key, '/', 1) AS p, min(expires_at) AS e FROM {SYNC_STATE} "
                 "WHERE dataset = :d AND expires_at IS NOT NULL GROUP BY 1"),
            {"d": dataset.key},
        ).all()
    return {(r.p or None): r.e for r in rows}
