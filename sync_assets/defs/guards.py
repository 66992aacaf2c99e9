"""Why scheduled work should not start now: API downtime, an open circuit, a run still active."""

from __future__ import annotations

from datetime import datetime
from typing import Callable

import dagster as dg
from dagster import DagsterRunStatus

from ..fetch.budget import PostgresBudget
from ..apis import DOWNTIMES
from ..core.datasets import Dataset
from ..warehouse import PostgresWarehouse

ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


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


def active_runs(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_key: str | None) -> list[str]:
    """Ids of queued or running runs that materialize `asset_key` (that partition), from any
    launcher: a schedule, a sensor or the UI."""
    tags = {"dagster/partition": partition_key} if partition_key else None
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE_STATUSES, tags=tags))
    return [run.run_id for run in runs if run.asset_selection is None or asset_key in run.asset_selection]


def partition_keys(dataset: Dataset, instance: dg.DagsterInstance) -> list[str | None]:
    if dataset.partitioning is None:
        return [None]
    if dataset.partitioning.dynamic:
        return list(instance.get_dynamic_partitions(dataset.partitioning.dynamic))
    return list(dataset.partitioning.keys)
