"""A dataset's partitions as Dagster knows them, and which of them the automation keeps fresh."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from ..core.datasets import Dataset
from ..core.windows import Granularity


def partitions_def(dataset: Dataset) -> dg.PartitionsDefinition | None:
    if dataset.windows is not None:
        windows = dataset.windows
        # end_offset=1: the window in progress is a partition too (incremental syncs refresh it)
        cls = dg.MonthlyPartitionsDefinition if windows.granularity is Granularity.MONTH else dg.DailyPartitionsDefinition
        return cls(start_date=windows.first.isoformat(), timezone=windows.timezone, end_offset=1)
    if dataset.partitioning is None:
        return None
    if dataset.partitioning.dynamic:
        return dg.DynamicPartitionsDefinition(name=dataset.partitioning.dynamic)
    return dg.StaticPartitionsDefinition(list(dataset.partitioning.keys))


def partitioned(dataset: Dataset) -> bool:
    return dataset.partitioning is not None or dataset.windows is not None


def partition_keys(dataset: Dataset, instance: dg.DagsterInstance, at: datetime | None = None) -> list[str | None]:
    """Every partition ([None]: the unpartitioned asset); time windows as of `at` (default now)."""
    if dataset.windows is not None:
        return list(partitions_def(dataset).get_partition_keys(current_time=at))  # type: ignore[union-attr]
    if dataset.partitioning is None:
        return [None]
    if dataset.partitioning.dynamic:
        return list(instance.get_dynamic_partitions(dataset.partitioning.dynamic))
    return list(dataset.partitioning.keys)


def kept_fresh(dataset: Dataset, instance: dg.DagsterInstance, at: datetime | None = None) -> list[str | None]:
    """The partitions the automation refreshes: all of them, except for time windows, where only
    the most recent `refresh_last` are (older windows are history: loaded once by a backfill)."""
    keys = partition_keys(dataset, instance, at)
    return keys[-dataset.windows.refresh_last:] if dataset.windows is not None else keys
