"""WHAT a dataset is: declarations, snapshots and the error tree. No I/O, no Dagster, no httpx."""

from .datasets import Auth, Column, ColumnType, Dataset, Downtime, Partitioning, Slices, WriteMode
from .snapshot import FetchStats, Outcome, Snapshot, Validators

__all__ = [
    "Auth",
    "Column",
    "ColumnType",
    "Dataset",
    "Downtime",
    "FetchStats",
    "Outcome",
    "Partitioning",
    "Slices",
    "Snapshot",
    "Validators",
    "WriteMode",
]
