"""The warehouse resource: where snapshots land (Postgres)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Sequence

import dagster as dg
from ..core.lazy import pandas as pd  # imported when a run first uses it
from pydantic import Field
from sqlalchemy import Engine, make_url, text

from ..core.snapshot import Snapshot, Validators
from ..core.datasets import ColumnType, Dataset
from . import counts, history
from .tables import ensure_sync_state, ensure_table, qi, schema_problems, table_name
from ..db.engines import engine_for
from ..db.urls import psycopg2_url
from .loading import PageLoader
from ..db.transaction import Transaction
from .writer import WriteResult, read_validators, write_snapshot

_ready: set[tuple[str, str]] = set()  # (url, dataset key) whose DDL ran in this process


# read back as text, the shape frames carry them in: JSONB as JSON text, NUMERIC as exact decimal text
TEXT_READ = frozenset({ColumnType.JSON, ColumnType.DECIMAL})


class PostgresWarehouse(dg.ConfigurableResource):
    """Postgres holding the synced tables and their sync state (env SYNC_ASSETS_DATABASE_URL)."""

    database_url: str = Field(description="postgresql+psycopg2://user:password@host:port/database")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.url  # a bad URL fails the run at its first step, naming the setting

    @property
    def url(self) -> str:
        # Validated here, not by a pydantic validator: the field may hold an EnvVar until launch.
        return psycopg2_url(self.database_url, "SYNC_ASSETS_DATABASE_URL")

    def qualified_name(self, dataset: Dataset) -> str:
        """database.schema.table, as Dagster's `dagster/table_name` wants it."""
        return f"{make_url(self.url).database}.{dataset.api}.{dataset.name}"

    def engine(self) -> Engine:
        return engine_for(self.url)

    def ensure_dataset(self, dataset: Dataset) -> None:
        key = (self.url, dataset.key)
        if key in _ready:
            return
        with self._begin() as conn:
            ensure_sync_state(conn)
            if ensure_table(conn, dataset):  # a new table, maybe in place of a dropped one: no count stands
                counts.bump(conn, dataset)
        _ready.add(key)

    def read_validators(self, dataset: Dataset, partition_key: str | None) -> Validators | None:
        self.ensure_dataset(dataset)
        with self._begin() as conn:
            return read_validators(conn, dataset, partition_key)

    def write_snapshot(self, dataset: Dataset, snapshot: Snapshot) -> WriteResult:
        self.ensure_dataset(dataset)
        if isinstance(snapshot.staged, PageLoader):  # the rows are in its open transaction already
            with snapshot.staged.completing() as (conn, loaded):
                return write_snapshot(conn, dataset, snapshot, loaded)
        with self._begin() as conn:
            return write_snapshot(conn, dataset, snapshot)

    def page_loader(self, dataset: Dataset, state_key: str, context: Mapping[str, Any]) -> PageLoader:
        """A PageSink that loads a walk's pages as they land, in the transaction write_snapshot ends."""
        self.ensure_dataset(dataset)
        return PageLoader(self.engine(), dataset, state_key, context)

    def expired_partitions(self, margin_s: float) -> list[tuple[str, str, "datetime"]]:
        with self._begin() as conn:
            ensure_sync_state(conn)
            return history.expired(conn, margin_s)

    def record_failure(self, dataset: str, partition_key: str | None, run_id: str, failure_class: str, message: str) -> None:
        with self._begin() as conn:
            history.record_failure(conn, dataset, partition_key, run_id, failure_class, message)

    def record_outcome(self, dataset: str, partition_key: str | None, run_created_at: datetime, run_id: str,
                       failure_class: str | None = None, message: str | None = None) -> None:
        with self._begin() as conn:
            history.record_outcome(conn, dataset, partition_key, run_created_at, run_id, failure_class, message)

    def failing_partitions(self, dataset: str) -> list[tuple[str, str, str, datetime]]:
        with self._begin() as conn:
            return history.failing_partitions(conn, dataset)

    def record_item_failures(self, dataset: str, partition_key: str | None, failures: list[tuple[str, str, str]],
                             backoff_s: float = 300.0, backoff_max_s: float = 86400.0) -> None:
        with self._begin() as conn:
            history.record_item_failures(conn, dataset, partition_key, failures, backoff_s, backoff_max_s)

    def clear_items(self, dataset: str, partition_key: str | None, items: list[str]) -> int:
        with self._begin() as conn:
            return history.clear_items(conn, dataset, partition_key, items)

    def failed_items(self, dataset: str, partition_key: str | None = None) -> list[history.FailedItem]:
        with self._begin() as conn:
            return history.failed_items(conn, dataset, partition_key)

    def record_deferral(self, dataset: str, partition_key: str | None, retry_at: datetime, run_id: str, reason: str) -> None:
        with self._begin() as conn:
            history.record_deferral(conn, dataset, partition_key, retry_at, run_id, reason)

    def clear_deferral(self, dataset: str, partition_key: str | None) -> None:
        with self._begin() as conn:
            history.clear_deferral(conn, dataset, partition_key)

    def deferrals(self) -> list[tuple[str, str, datetime]]:
        """(dataset, partition, retry_at) of the partitions whose work waits for an API budget."""
        with self._begin() as conn:
            return history.deferrals(conn)

    def trim_history(self, keep_days: int) -> dict[str, int]:
        with self._begin() as conn:
            ensure_sync_state(conn)
            return history.trim(conn, keep_days)

    def schema_problems(self, dataset: Dataset) -> list[str]:
        with self._begin() as conn:
            return schema_problems(conn, dataset)

    def count_rows(self, dataset: Dataset, partition_keys: Sequence[str] | None = None) -> int:
        """The table's rows, or those of some partitions (scanned only when a write inserted or
        deleted rows since they were last counted)."""
        if partition_keys is not None:
            return self.count_table_and_partitions(dataset, partition_keys)[1]
        self.ensure_dataset(dataset)
        with self._begin() as conn:
            return counts.row_counts(conn, dataset, None, "", {})[0]

    def count_table_and_partitions(self, dataset: Dataset, partition_keys: Sequence[str]) -> tuple[int, int]:
        """The whole table's rows and those of some partitions: in one scan of the table when they
        must be counted, from the stored counts when no write inserted or deleted rows since."""
        self.ensure_dataset(dataset)
        where, params = partition_filter(dataset, partition_keys)
        with self._begin() as conn:
            total, within = counts.row_counts(conn, dataset, partition_keys, where, params)
        return total, int(within or 0)

    def distinct_values(self, dataset: Dataset, columns: Sequence[str], scope: Mapping[str, Any]) -> list[dict]:
        """Distinct values of `columns` in the dataset's table among the rows of `scope` (column ->
        value: a partition's), e.g. the mining observers whose ledgers to fetch, or the killmails
        already stored."""
        self.ensure_dataset(dataset)
        cols = ", ".join(qi(c) for c in columns)
        sql = f"SELECT DISTINCT {cols} FROM {table_name(dataset)}"
        params = {f"s{i}": value for i, value in enumerate(scope.values())}
        if scope:
            sql += " WHERE " + " AND ".join(f"{qi(name)} = :s{i}" for i, name in enumerate(scope))
        with self._begin() as conn:
            return [dict(row._mapping) for row in conn.execute(text(sql + f" ORDER BY {cols}"), params)]

    def read_table(self, dataset: Dataset, partition_keys: Sequence[str] | None = None) -> pd.DataFrame:
        self.ensure_dataset(dataset)
        cols = ", ".join(f"{qi(c.name)}::text AS {qi(c.name)}" if c.type in TEXT_READ else qi(c.name) for c in dataset.table_columns)
        where, params = partition_filter(dataset, partition_keys)
        sql = f"SELECT {cols} FROM {table_name(dataset)}{where}"
        sql += " ORDER BY " + ", ".join(qi(k) for k in dataset.primary_key)
        with self._begin() as conn:
            frame = pd.read_sql(text(sql), conn, params=params)
        return frame.astype({c.name: c.pandas_dtype for c in dataset.table_columns})

    def _begin(self) -> Transaction:
        return Transaction(self.engine())


def partition_filter(dataset: Dataset, partition_keys: Sequence[str] | None) -> tuple[str, dict[str, Any]]:
    """` WHERE …` selecting the rows of some partitions (all rows for None): by the partition
    column, the time window's column or path columns, or both (a key's window)."""
    if partition_keys is None:
        return "", {}
    clauses, params = [], {}
    for i, partition in enumerate(partition_keys):
        key, window = dataset.split_partition(partition)
        parts = []
        if dataset.partitioning is not None and key is not None:
            parts.append(f"{qi(dataset.partitioning.column.name)} = :k{i}")
            params[f"k{i}"] = dataset.partitioning.value(key)
        windows = dataset.windows
        if windows is not None and window is not None:
            if windows.column is not None:
                span = windows.window(window)
                parts.append(f"{qi(windows.column.name)} >= :s{i} AND {qi(windows.column.name)} < :e{i}")
                params.update({f"s{i}": span.start, f"e{i}": span.end})
            for j, (name, value) in enumerate(windows.path_values(window).items()):
                parts.append(f"{qi(name)} = :w{i}_{j}")
                params[f"w{i}_{j}"] = value
        if parts:
            clauses.append("(" + " AND ".join(parts) + ")")
    return (" WHERE " + " OR ".join(clauses), params) if clauses else ("", {})
