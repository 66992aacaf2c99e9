"""Dataset declarations: WHAT is synced. Pure data, no I/O.

Everything else (tables, assets, schedules, freshness, checks) is derived from a `Dataset`,
so adding an endpoint is a declaration here, not a new module.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from datetime import time as time_of_day
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .paging import SINGLE, FromId, Paginator

if TYPE_CHECKING:
    from .windows import TimeWindows


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
    JSON = "json"  # nested payload kept whole (e.g. killmail attackers); JSON text in frames
    DECIMAL = "decimal"  # money: exact (NUMERIC); APIs send it as a number or a string; decimal text in frames


# Nullable (optional) columns use pandas' masked dtypes; required ones plain numpy dtypes.
NULLABLE_DTYPES: Mapping[ColumnType, str] = {ColumnType.INT64: "Int64", ColumnType.BOOL: "boolean"}
PANDAS_DTYPES: Mapping[ColumnType, str] = {
    ColumnType.INT64: "int64",
    ColumnType.FLOAT64: "float64",
    ColumnType.BOOL: "bool",
    ColumnType.STRING: "string",
    ColumnType.TIMESTAMP: "datetime64[us, UTC]",
    ColumnType.DATE: "datetime64[us]",
    ColumnType.JSON: "string",
    ColumnType.DECIMAL: "string",
}

POSTGRES_TYPES: Mapping[ColumnType, str] = {
    ColumnType.INT64: "bigint",
    ColumnType.FLOAT64: "double precision",
    ColumnType.BOOL: "boolean",
    ColumnType.STRING: "text",
    ColumnType.TIMESTAMP: "timestamp with time zone",
    ColumnType.DATE: "date",
    ColumnType.JSON: "jsonb",
    ColumnType.DECIMAL: "numeric",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    required: bool = True
    description: str = ""
    source: str | None = None  # payload path when it differs from the name, e.g. "victim.items"
    # dates/timestamps not in ISO 8601: the strptime formats accepted besides it, e.g. ("%m/%d/%Y",)
    formats: tuple[str, ...] = ()

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
class Downtime:
    """A daily window when the API is down (ESI: 11:00 UTC, usually ~15 minutes)."""

    start_utc: time_of_day
    minutes: int

    def contains(self, at: datetime) -> bool:
        at = at.astimezone(timezone.utc)
        start = at.replace(hour=self.start_utc.hour, minute=self.start_utc.minute, second=0, microsecond=0)
        return start <= at < start + timedelta(minutes=self.minutes)


@dataclass(frozen=True)
class Auth:
    """What a credential needs for a route: a scope (ESI SSO) and, for corporation data, any one of
    some roles. The API's credential provider interprets it; None on a dataset means a public route
    (or one served by the API's own key, see the API's spec)."""

    scope: str
    roles: tuple[str, ...] = ()  # any of; empty means membership is enough


@dataclass(frozen=True)
class Partitioning:
    """A dataset split by one path parameter: market orders by region, corporation data by corporation."""

    path_param: str  # route placeholder filled with the partition key
    column: Column  # table column holding the partition key (part of the primary key)
    keys: tuple[str, ...] = ()  # static partition keys, in display order
    labels: Mapping[str, str] = field(default_factory=dict)  # key -> human name
    dynamic: str | None = None  # name of a Dagster dynamic partitions definition instead of static keys

    def value(self, key: str) -> int | str:
        return int(key) if self.column.type is ColumnType.INT64 else key


@dataclass(frozen=True)
class Slices:
    """One partition fetched as several requests, one per value of extra path parameters:
    static values (wallet divisions 1-7) or the rows of an upstream dataset (mining observers)."""

    columns: tuple[Column, ...]  # the extra path parameters; stored as table columns
    values: tuple[tuple[Any, ...], ...] = ()  # static values, one tuple per slice
    source: str | None = None  # or: key of the dataset whose table lists them (same partition)
    # or: the partition's credential lists them (`Credential.scope` by column name: the marketplaces
    # a seller sells in, as stored with its authorization)
    from_credential: bool = False
    only_new: bool = False  # immutable payloads: skip slices whose rows are already stored
    # time-window datasets: the source's (first, last) date columns; a source row whose span does
    # not meet the window is no slice of it (a merchant closed before the month, or not yet open)
    active_between: tuple[str, str] | None = None
    # a source column that changes whenever the slice's rows change (IRIS: the summary's `modified`):
    # a slice whose value equals the one stored at its last sync is not asked again
    version_column: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


WINDOW_DIMENSION = "window"  # the time dimension's name when a dataset is partitioned by key and window


@dataclass(frozen=True)
class Incremental:
    """Read only what changed since the stored cursor (the newest `cursor_column` value synced),
    minus an overlap for clock skew and late commits; upsert it, never delete. The first sync and
    every full pass (`full_cron`, or a run with full_refresh) read everything and, for a mirror,
    remove what is gone."""

    cursor_column: str  # payload timestamp column ("modified")
    start_param: str  # query parameter of the "since" instant
    end_param: str | None = None  # and of "until now", when the API requires both
    fixed: Mapping[str, str] = field(default_factory=dict)  # parameters that make it a filter ({"date_filter": "modified"})
    overlap: timedelta = timedelta(hours=1)
    full_cron: str | None = "23 3 * * 0"  # the periodic full pass (weekly), in the dataset's schedule zone
    # APIs that refuse an unfiltered read (SP-API searchOrders needs an "after"): the first sync and
    # full passes ask for what changed in this period before now instead of everything
    first_since: timedelta | None = None


@dataclass(frozen=True)
class Report:
    """Data made by a long-running report job (create, poll, download) instead of a GET: the API's
    report runner (`ApiSpec.reports`) is asked for `report_type` over the request's time window (the
    window's start/end parameters), for the credential's marketplaces. The document is a TSV whose
    headers name the columns (`Column.source`, or the name with `-`/spaces for `_`)."""

    report_type: str
    options: Mapping[str, str] = field(default_factory=dict)  # reportOptions
    day_first: bool = False  # slash dates are DD/MM/YYYY (EU/IN files)
    computed: tuple[str, ...] = ()  # columns the dataset's transform adds (a row hash), not in the document


@dataclass(frozen=True)
class Dataset:
    api: str  # API name; also the Postgres schema and the asset key prefix
    name: str  # table name and asset name
    route: str  # route template, e.g. "/markets/{region_id}/orders"
    description: str
    columns: tuple[Column, ...]  # payload columns, in the API's field names
    primary_key: tuple[str, ...]
    # The refresh period: the API's cache time where it has one (ESI's x-cache-age), else the
    # cadence declared for it; drives the schedule and freshness unless cron/freshness are given.
    cache_seconds: int
    write_mode: WriteMode = WriteMode.MIRROR
    query: Mapping[str, str] = field(default_factory=dict)  # fixed query parameters
    paginator: Paginator = SINGLE  # how results are split into pages (core.paging)
    partitioning: Partitioning | None = None
    windows: TimeWindows | None = None  # time-window partitions (a day, a month) sent as start/end parameters
    slices: Slices | None = None
    auth: Auth | None = None  # None: a public route
    transform: Callable[[Any], Any] | None = None  # payload -> list of row dicts, when not already that
    rate_limit_group: str | None = None
    cron: str | None = None  # schedule; derived from cache_seconds when None
    freshness: tuple[int, int] | None = None  # (warn, fail) seconds; derived from cache_seconds when None
    group: str | None = None  # Dagster asset group; the API name when None
    schedule_timezone: str = "UTC"  # the zone of `cron` (IRIS: 11:00 and 19:00 Europe/Dublin)
    incremental: Incremental | None = None
    report: Report | None = None  # made by a report job, not read from a route
    # derived datasets (no API call): computed from the partitions of these datasets (same
    # partitions), read through the IO manager; `compute(inputs by key, scope) -> rows`
    derived_from: tuple[str, ...] = ()
    compute: Callable[..., Any] | None = None
    # where the declaration is written (file, line): the asset's code reference in the UI. Found
    # from the module-level statement that builds it, so helpers that build datasets still point
    # at the declaration itself.
    declared_at: tuple[str, int] | None = field(default=None, compare=False)

    @property
    def asset_group(self) -> str:
        return self.group or self.api

    @property
    def key(self) -> str:
        return f"{self.api}.{self.name}"

    @property
    def scope_columns(self) -> tuple[Column, ...]:
        """The partition and slice columns: one request's rows are exactly those with its values
        here, so a mirror replaces that scope and nothing else (whether or not the payload has them)."""
        window = self.windows.scope_columns if self.windows else ()
        return ((self.partitioning.column,) if self.partitioning else ()) + window + (self.slices.columns if self.slices else ())

    def split_partition(self, key: str | None) -> tuple[str | None, str | None]:
        """(key part, window part) of a partition key. Partitioned both ways (a seller's month), the
        key is Dagster's multi-partition key: both parts joined by "|" in the order of the dimension
        names (`partitioning.column.name` and "window")."""
        if key is None or not (self.partitioning and self.windows):
            return (key, None) if self.partitioning else (None, key)
        names = sorted([self.partitioning.column.name, WINDOW_DIMENSION])
        parts = dict(zip(names, key.split("|")))
        return parts[self.partitioning.column.name], parts[WINDOW_DIMENSION]

    def join_partition(self, key: str, window: str) -> str:
        names = sorted([self.partitioning.column.name, WINDOW_DIMENSION])  # type: ignore[union-attr]
        parts = {self.partitioning.column.name: key, WINDOW_DIMENSION: window}  # type: ignore[union-attr]
        return "|".join(parts[name] for name in names)

    @property
    def context_columns(self) -> tuple[Column, ...]:
        """Scope columns the payload does not carry: filled in from the request."""
        payload = {c.name for c in self.columns}
        return tuple(c for c in self.scope_columns if c.name not in payload)

    @property
    def table_columns(self) -> tuple[Column, ...]:
        return (*self.context_columns, *self.columns)

    @property
    def schedule_cron(self) -> str:
        return self.cron or cron_for_cache_time(self.cache_seconds)

    @property
    def freshness_windows(self) -> tuple[timedelta, timedelta]:
        """(warn, fail): a dataset is late after missing two refreshes, failing after five."""
        if self.freshness is not None:
            return timedelta(seconds=self.freshness[0]), timedelta(seconds=self.freshness[1])
        period = max(self.cache_seconds, 60)
        return timedelta(seconds=3 * period), timedelta(seconds=6 * period)

    def __post_init__(self) -> None:
        if self.declared_at is None:
            object.__setattr__(self, "declared_at", _module_statement())
        names = [c.name for c in self.table_columns]
        if len(names) != len(set(names)):
            raise ValueError(f"dataset {self.key}: duplicate column names in {names}")
        missing = [k for k in self.primary_key if k not in names]
        if missing:
            raise ValueError(f"dataset {self.key}: primary key columns {missing} are not columns")
        if self.partitioning and self.partitioning.column.name not in self.primary_key:
            raise ValueError(f"dataset {self.key}: the partition column must be part of the primary key")
        if isinstance(self.paginator, FromId) and self.paginator.field not in names:
            raise ValueError(f"dataset {self.key}: from_id paging walks {self.paginator.field!r}, which is not a column")
        if self.windows and self.windows.column and self.windows.column.name not in {c.name for c in self.columns}:
            raise ValueError(f"dataset {self.key}: the window column {self.windows.column.name!r} must be a payload column")
        if self.write_mode is WriteMode.MIRROR and self.windows and not self.windows.scope_columns:
            raise ValueError(f"dataset {self.key}: a mirror by time window needs the window's column or path columns (its scope)")
        if self.incremental and self.incremental.cursor_column not in {c.name for c in self.columns}:
            raise ValueError(f"dataset {self.key}: the incremental cursor {self.incremental.cursor_column!r} is not a column")
        if bool(self.derived_from) != (self.compute is not None):
            raise ValueError(f"dataset {self.key}: a derived dataset names its inputs and its compute function")
        if self.slices and sum((bool(self.slices.values), bool(self.slices.source), self.slices.from_credential)) != 1:
            raise ValueError(f"dataset {self.key}: slices take static values, a source dataset or the credential's values")
        if self.report and not (self.windows and self.windows.start_param and self.windows.end_param):
            raise ValueError(f"dataset {self.key}: a report dataset asks for time windows (start and end parameters)")


def _module_statement() -> tuple[str, int] | None:
    frame = sys._getframe(2)  # skip __post_init__ and the dataclass __init__
    while frame is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    return (frame.f_code.co_filename, frame.f_lineno) if frame is not None else None


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
