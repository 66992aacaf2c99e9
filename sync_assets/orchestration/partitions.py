"""A dataset's partitions as Dagster knows them, and which of them the automation keeps fresh."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from ..core.datasets import WINDOW_DIMENSION, Dataset
from ..core.windows import Granularity


def partitions_def(dataset: Dataset) -> dg.PartitionsDefinition | None:
    """Keys, time windows, or both (a seller's month: Dagster's multi-partitions)."""
    by_key, by_window = _key_def(dataset), _window_def(dataset)
    if by_key is not None and by_window is not None:
        return dg.MultiPartitionsDefinition({dataset.partitioning.column.name: by_key, WINDOW_DIMENSION: by_window})  # type: ignore[union-attr]
    return by_key or by_window


def _window_def(dataset: Dataset) -> dg.TimeWindowPartitionsDefinition | None:
    windows = dataset.windows
    if windows is None:
        return None
    # end_offset=1: the window in progress is a partition too (incremental syncs refresh it)
    cls = dg.MonthlyPartitionsDefinition if windows.granularity is Granularity.MONTH else dg.DailyPartitionsDefinition
    return cls(start_date=windows.first.isoformat(), timezone=windows.timezone, end_offset=1)


def _key_def(dataset: Dataset) -> dg.PartitionsDefinition | None:
    if dataset.partitioning is None:
        return None
    if dataset.partitioning.dynamic:
        return dg.DynamicPartitionsDefinition(name=dataset.partitioning.dynamic)
    return dg.StaticPartitionsDefinition(list(dataset.partitioning.keys))


def partitioned(dataset: Dataset) -> bool:
    return dataset.partitioning is not None or dataset.windows is not None


def partition_keys(dataset: Dataset, instance: dg.DagsterInstance, at: datetime | None = None,
                   recent_windows: bool = False) -> list[str | None]:
    """Every partition ([None]: the unpartitioned asset); time windows as of `at` (default now),
    only the most recent `refresh_last` of them with `recent_windows`."""
    windows = _window_def(dataset).get_partition_keys(current_time=at) if dataset.windows else None  # type: ignore[union-attr]
    if windows is not None and recent_windows:
        windows = windows[-dataset.windows.refresh_last:]  # type: ignore[union-attr]
    if dataset.partitioning is None:
        return list(windows) if windows is not None else [None]
    if dataset.partitioning.dynamic:
        keys = list(instance.get_dynamic_partitions(dataset.partitioning.dynamic))
    else:
        keys = list(dataset.partitioning.keys)
    if windows is None:
        return keys
    return [dataset.join_partition(key, window) for key in keys for window in windows]


def kept_fresh(dataset: Dataset, instance: dg.DagsterInstance, at: datetime | None = None) -> list[str | None]:
    """The partitions the automation refreshes: all of them, except for time windows, where only
    the most recent `refresh_last` are (older windows are history: loaded once by a backfill)."""
    return partition_keys(dataset, instance, at, recent_windows=True)
