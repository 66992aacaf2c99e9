"""Dataset declarations: WHAT is synced. Pure data, no I/O.

Everything else (tables, assets, schedules, freshness, checks) is derived from a `Dataset`,
so adding an endpoint is a declaration here, not a new module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Mapping


class WriteMode(str, Enum):
    """How a snapshot lands in its table."""

    MIRROR = "mirror"  # the table equals the latest complete snapshot (upsert + delete absent rows)
    UPSERT = "upsert"  # insert new rows, update changed ones, never delete
    APPEND = "append"  # insert rows not seen before, never update or delete


class ColumnType(str, Enum):
    """Logical column types; each maps to one pandas dtype and one Postgres type."""

    INT64 = "int64"
    FLOAT64 = "float64"
    BOOL = "bool"
    STRING = "string"
    TIMESTAMP = "timestamp"
    DATE = "date"


# Nullable (optional) columns use pandas' masked dtypes; required ones plain numpy dtypes.
NULLABLE_DTYPES: Mapping[ColumnType, str] = {ColumnType.INT64: "Int64", ColumnType.BOOL: "boolean"}
PANDAS_DTYPES: Mapping[ColumnType, str] = {
    ColumnType.INT64: "int64",
    ColumnType.FLOAT64: "float64",
    ColumnType.BOOL: "bool",
    ColumnType.STRING: "string",
    ColumnType.TIMESTAMP: "datetime64[us, UTC]",
    ColumnType.DATE: "datetime64[us]",
}

POSTGRES_TYPES: Mapping[ColumnType, str] = {
    ColumnType.INT64: "bigint",
    ColumnType.FLOAT64: "double precision",
    ColumnType.BOOL: "boolean",
    ColumnType.STRING: "text",
    ColumnType.TIMESTAMP: "timestamp with time zone",
    ColumnType.DATE: "date",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    required: bool = True
    description: str = ""

    @property
    def pandas_dtype(self) -> str:
        return PANDAS_DTYPES[self.type] if self.required else NULLABLE_DTYPES.get(self.type, PANDAS_DTYPES[self.type])

    @property
    def numpy_dtype(self) -> str:
        """dtype of a column without nulls."""
        return PANDAS_DTYPES[self.type]

    @property
    def postgres_type(self) -> str:
        return POSTGRES_TYPES[self.type]


@dataclass(frozen=True)
class Partitioning:
    """A dataset split by one path parameter, e.g. market orders by region."""

    path_param: str  # route placeholder filled with the partition key
    column: Column  # table column holding the partition key (part of the primary key)
    keys: tuple[str, ...]  # static partition keys, in display order
    labels: Mapping[str, str] = field(default_factory=dict)  # key -> human name

    def value(self, key: str) -> int | str:
        return int(key) if self.column.type is ColumnType.INT64 else key


@dataclass(frozen=True)
class Dataset:
    api: str  # API name; also the Postgres schema and the asset key prefix
    name: str  # table name and asset name
    route: str  # route template, e.g. "/markets/{region_id}/orders"
    description: str
    columns: tuple[Column, ...]  # payload columns, in the API's field names
    primary_key: tuple[str, ...]
    cache_seconds: int  # the API's cache time (x-cache-age): drives cadence and freshness
    write_mode: WriteMode = WriteMode.MIRROR
    query: Mapping[str, str] = field(default_factory=dict)  # fixed query parameters
    paginated: bool = False  # X-Pages pagination
    partitioning: Partitioning | None = None
    rate_limit_group: str | None = None
    cron: str | None = None  # schedule; derived from cache_seconds when None
    group: str | None = None  # Dagster asset group; the API name when None

    @property
    def asset_group(self) -> str:
        return self.group or self.api

    @property
    def key(self) -> str:
        return f"{self.api}.{self.name}"

    @property
    def table_columns(self) -> tuple[Column, ...]:
        """Payload columns plus the partition column, which the payload does not carry."""
        if self.partitioning is None:
            return self.columns
        return (self.partitioning.column, *self.columns)

    @property
    def schedule_cron(self) -> str:
        return self.cron or cron_for_cache_time(self.cache_seconds)

    @property
    def freshness_windows(self) -> tuple[timedelta, timedelta]:
        """(warn, fail): a dataset is late after missing two refreshes, failing after five."""
        period = max(self.cache_seconds, 60)
        return timedelta(seconds=3 * period), timedelta(seconds=6 * period)

    def __post_init__(self) -> None:
        names = [c.name for c in self.table_columns]
        if len(names) != len(set(names)):
            raise ValueError(f"dataset {self.key}: duplicate column names in {names}")
        missing = [k for k in self.primary_key if k not in names]
        if missing:
            raise ValueError(f"dataset {self.key}: primary key columns {missing} are not columns")
        if self.partitioning and self.partitioning.column.name not in self.primary_key:
            raise ValueError(f"dataset {self.key}: the partition column must be part of the primary key")


def cron_for_cache_time(cache_seconds: int) -> str:
    """A cron at the API's cache cadence, offset from the top of the hour.

    ESI asks clients not to align on */5 or on the hour (load spikes); a small fixed offset
    spreads our load without polling faster than the cache allows.
    """
    minutes = max(1, cache_seconds // 60)
    if minutes < 60:
        step = minutes
        return f"{2 % step}-59/{step} * * * *" if step > 1 else "* * * * *"
    hours = minutes // 60
    if hours < 24:
        return f"7 */{hours} * * *" if hours > 1 else "7 * * * *"
    return "17 11 * * *"  # daily data: after ESI's 11:05 UTC static-data expiry
