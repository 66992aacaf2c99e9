"""Land a snapshot in ONE transaction: COPY into a temp table, merge by write mode, and commit
the validators with the rows they describe. A failure anywhere leaves table and validators as
they were."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Sequence

from ..core.lazy import (  # imported when a run first uses them
    pandas as pd, pgpq, pgpq_encoders, pgpq_schema, pyarrow as pa, pyarrow_csv as pacsv,
)
from sqlalchemy import Connection, text

from ..core.snapshot import Outcome, Snapshot, Validators
from ..core.datasets import Column, ColumnType, Dataset, WriteMode
from ..core.rows import arrow_type, repeated_int64, to_arrow
from ..core.errors import GuardRefused
from ..core.windows import TimeRange
from . import counts as row_counts
from .tables import SYNC_STATE, qi, table_name

STAGE = "_sync_stage"


@dataclass(frozen=True)
class WriteResult:
    table: str
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    total: int = 0
    skipped_reason: str | None = None  # set when no data rows were written on purpose


@dataclass(frozen=True)
class Loaded:
    """Rows this transaction already COPYed while the walk fetched them (see loading.PageLoader)."""

    straight: bool  # into the table itself (the partition's first sync) rather than the stage


def write_snapshot(conn: Connection, dataset: Dataset, snapshot: Snapshot, loaded: Loaded | None = None) -> WriteResult:
    """Call inside a transaction (`engine.begin()`); the caller's commit publishes everything.
    `loaded`: the snapshot's rows are already in this transaction (begin_load/load_page)."""
    partition = snapshot.state_key
    if snapshot.outcome is Outcome.CACHE_VALID:  # the API was not asked: nothing new to record
        return WriteResult(table_name(dataset), total=_count(conn, dataset, snapshot))
    _lock_partition(conn, dataset, partition)
    stored, stored_rows = _stored_state(conn, dataset, partition)
    new_lm = snapshot.validators.last_modified
    if stored is not None and new_lm is not None and new_lm < stored:
        if loaded is not None:
            reset_load(conn, dataset, loaded, snapshot.context)  # the caller commits: take the loaded rows back out
        return WriteResult(
            table_name(dataset), total=_count(conn, dataset, snapshot),
            skipped_reason=f"snapshot of {new_lm.isoformat()} is older than the stored {stored.isoformat()}",
        )
    counts: dict[str, int] = {}
    if snapshot.changed:
        if loaded is None:
            loaded = Loaded(straight=_copy_straight_in(conn, dataset, snapshot.context))
            if loaded.straight:
                _copy(conn, table_name(dataset), dataset, snapshot.table_frame())
            else:
                _create_stage(conn, dataset)
                _copy(conn, STAGE, dataset, snapshot.table_frame())
        if loaded.straight:  # first sync of the partition: nothing to merge with
            counts = {"inserted": snapshot.rows}
        else:
            conn.execute(text(f"ANALYZE {STAGE}"))
            if dataset.write_mode is WriteMode.MIRROR and snapshot.max_delete_share is not None and not snapshot.partial:
                _guard_mirror(conn, dataset, snapshot)
            counts = _merge(conn, dataset, snapshot.context, deletes=not snapshot.partial)
    # nothing written: the scope holds what the last write counted (under this same lock)
    total = stored_rows if not snapshot.changed and stored_rows is not None else _count(conn, dataset, snapshot)
    if not (dataset.slices and dataset.slices.only_new):  # immutable items need no validators
        _save_state(conn, dataset, partition, snapshot.validators, total, changed=snapshot.changed)
    if counts.get("inserted") or counts.get("deleted"):
        row_counts.bump(conn, dataset)  # last: its row lock lasts until the commit only
    return WriteResult(table_name(dataset), total=total, **counts)


def read_validators(conn: Connection, dataset: Dataset, state_key: str | None) -> Validators | None:
    row = conn.execute(
        text(f"SELECT page_etags, last_modified, expires_at, cursor, walked_at FROM {SYNC_STATE} WHERE dataset = :d AND partition_key = :p"),
        {"d": dataset.key, "p": state_key or ""},
    ).first()
    if row is None:
        return None
    return Validators(tuple(row.page_etags), row.last_modified, row.expires_at, row.cursor, row.walked_at)


def _stored_state(conn: Connection, dataset: Dataset, partition: str) -> tuple[datetime | None, int | None]:
    """The partition's stored Last-Modified and row count, its state row locked for this transaction."""
    row = conn.execute(
        text(f"SELECT last_modified, row_count FROM {SYNC_STATE} WHERE dataset = :d AND partition_key = :p FOR UPDATE"),
        {"d": dataset.key, "p": partition},
    ).first()
    return (row.last_modified, row.row_count) if row is not None else (None, None)


def _copy_straight_in(conn: Connection, dataset: Dataset, context: Mapping[str, Any]) -> bool:
    """True when the snapshot's scope (partition/slice) holds no row yet and no row outside it can
    share a key with the snapshot (the key includes every scope column): COPY straight into the
    table then inserts exactly what stage + merge would, in the same transaction, without the
    temp table, its ANALYZE and three joins."""
    if not set(context) <= set(dataset.primary_key):  # a row outside the scope could share a key
        return False
    scope, params = _scope(context)
    where = f"WHERE {scope.removesuffix(' AND ')}" if scope else ""
    return conn.execute(text(f"SELECT NOT EXISTS (SELECT 1 FROM {table_name(dataset)} t {where})"), params).scalar_one()


def _create_stage(conn: Connection, dataset: Dataset) -> None:
    """A temp table shaped like the dataset's, dropped at commit."""
    conn.execute(text(f"CREATE TEMP TABLE {STAGE} (LIKE {table_name(dataset)} INCLUDING DEFAULTS) ON COMMIT DROP"))


def _lock_partition(conn: Connection, dataset: Dataset, partition: str) -> None:
    """Writers of one dataset partition take turns; different partitions proceed in parallel."""
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"{dataset.key}/{partition}"})


# -- loading pages while they are fetched (loading.PageLoader), in the transaction write_snapshot ends

def begin_load(conn: Connection, dataset: Dataset, partition: str, context: Mapping[str, Any]) -> Loaded:
    _lock_partition(conn, dataset, partition)
    _stored_state(conn, dataset, partition)  # locks in write_snapshot's order: state row, then table
    loaded = Loaded(straight=_copy_straight_in(conn, dataset, context))
    if not loaded.straight:
        _create_stage(conn, dataset)
    return loaded


def load_page(conn: Connection, dataset: Dataset, loaded: Loaded, rows: Any, context: Mapping[str, Any]) -> None:
    """COPY one page's rows, a DataFrame or an Arrow table (core.rows) of the dataset columns; the
    context columns are added here."""
    table = to_arrow(rows, dataset.columns)
    for column in dataset.context_columns:
        table = table.append_column(pa.field(column.name, arrow_type(column)),
                                    _repeated(context[column.name], column, table.num_rows))
    _copy(conn, table_name(dataset) if loaded.straight else STAGE, dataset, table)


def _repeated(value: Any, column: Column, rows: int) -> Any:
    """The scope's value of a context column on every row, as an Arrow array holding what a frame
    would: an integer scope (a region, a corporation) straight from a buffer (no pandas), any other
    value ("10000002" for a bigint, a text scope) converted as a frame converts it."""
    if column.type is ColumnType.INT64 and type(value) is int:
        return repeated_int64(value, rows)
    return pa.array(pd.Series(value, index=pd.RangeIndex(rows), dtype=column.pandas_dtype), type=arrow_type(column))


def reset_load(conn: Connection, dataset: Dataset, loaded: Loaded, context: Mapping[str, Any]) -> None:
    """Void the pages loaded so far (the walk restarted, or the snapshot is not written)."""
    if loaded.straight:  # the scope was empty when loading began, and the partition lock is held since
        scope, params = _scope(context)
        where = f"WHERE {scope.removesuffix(' AND ')}" if scope else ""
        conn.execute(text(f"DELETE FROM {table_name(dataset)} t {where}"), params)
    else:
        conn.execute(text(f"TRUNCATE {STAGE}"))


COPY_BATCH_ROWS = 65_536  # rows encoded at a time: the COPY input never exists whole in memory


def _copy(conn: Connection, target: str, dataset: Dataset, rows: Any) -> None:
    """COPY the rows (a frame or an Arrow table in table shape) into `target` inside the caller's
    transaction, encoded from Arrow outside the interpreter: in PostgreSQL's binary format when
    every column has one here, else as CSV.

    Binary is the server's own representation: it parses no text, so the COPY of The Forge's 300k
    orders took half the time (0.35-0.49 s against 0.62-0.95 s) and less of the client's CPU.
    NUMERIC's binary form cannot be made from a decimal's text without fixing a scale, and "12.50"
    must stay "12.50" (as CSV keeps it): a table with a DECIMAL column goes as CSV."""
    table = to_arrow(rows, dataset.table_columns)
    if all(c.type in BINARY_COPY_TYPES for c in dataset.table_columns):
        stream, fmt = _BinaryStream(table, dataset.table_columns), "binary"
    else:
        stream, fmt = _CsvStream(_csv_shape(conn, table)), "csv"
    cols = ", ".join(qi(c.name) for c in dataset.table_columns)
    cursor = conn.connection.dbapi_connection.cursor()  # the same transaction as `conn`
    try:
        cursor.copy_expert(f"COPY {target} ({cols}) FROM STDIN WITH (FORMAT {fmt})", stream, size=1 << 20)
    finally:
        cursor.close()


# What _BinaryStream encodes: a timestamp as microseconds since 2000 UTC (timestamptz's own form),
# a date (held as midnight) as days, JSON text as jsonb (its version byte, then the text)
BINARY_COPY_TYPES = frozenset(ColumnType) - {ColumnType.DECIMAL}


class _BinaryStream:
    """A file for copy_expert: PostgreSQL's binary COPY format (pgpq), one batch of rows at a time."""

    def __init__(self, table: Any, columns: Sequence[Column]):
        for i, column in enumerate(columns):
            if column.type is ColumnType.DATE:
                table = table.set_column(i, column.name, table.column(i).cast(pa.date32()))
        encode = pgpq.ArrowToPostgresBinaryEncoder
        builders = {field.name: encode.infer_encoder(field) for field in table.schema}
        for column in columns:
            if column.type is ColumnType.JSON:
                builders[column.name] = pgpq_encoders.LargeStringEncoderBuilder.new_with_output(
                    table.schema.field(column.name), pgpq_schema.Jsonb())
        self._chunks = self._encode(encode.new_with_encoders(table.schema, builders), table)

    @staticmethod
    def _encode(encoder: Any, table: Any) -> Iterator[bytes]:
        yield encoder.write_header()
        for batch in table.to_batches(max_chunksize=COPY_BATCH_ROWS):
            chunk = encoder.write_batch(batch)  # the encoder buffers: b"" until about 1 MB is ready
            if chunk:
                yield chunk
        yield encoder.finish()  # what is still buffered, and the trailer

    def read(self, size: int = -1) -> bytes:
        return next(self._chunks, b"")  # b"" ends the COPY: only the end is empty


def _csv_shape(conn: Connection, table: Any) -> Any:
    """Timestamps as naive UTC (Arrow formats a zoned timestamp several times slower), read back as
    UTC: the transaction's time zone is set to UTC first (SET LOCAL: this transaction only).
    Arrow quotes every string and leaves nulls unquoted-empty: exactly COPY's CSV NULL convention."""
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            table = table.set_column(i, field.name, table.column(i).cast(pa.timestamp(field.type.unit)))
    conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))
    return table


class _CsvStream:
    """A file for copy_expert: CSV of one batch of rows at a time (read() may return more than asked)."""

    def __init__(self, table: Any):
        self._batches = iter(table.to_batches(max_chunksize=COPY_BATCH_ROWS))
        self._write_csv, self._options = pacsv.write_csv, pacsv.WriteOptions(include_header=False)

    def read(self, size: int = -1) -> bytes:
        for batch in self._batches:
            if batch.num_rows:
                sink = pa.BufferOutputStream()
                self._write_csv(batch, sink, self._options)
                return sink.getvalue().to_pybytes()
        return b""


MIRROR_GUARD_MIN_ROWS = 100  # small tables change wholesale legitimately


class MirrorGuardError(GuardRefused):
    """A mirror snapshot would delete an implausible share of the table; nothing was written."""


def _guard_mirror(conn: Connection, dataset: Dataset, snapshot: Snapshot) -> None:
    scope, params = _scope(snapshot.context)
    match = " AND ".join(f"s.{qi(k)} = t.{qi(k)}" for k in dataset.primary_key)
    # NOT EXISTS in WHERE (not in an aggregate FILTER) so Postgres plans a hash anti-join, not a
    # correlated scan of the stage per stored row.
    target = table_name(dataset)
    stored, vanishing = conn.execute(
        text(
            f"SELECT (SELECT count(*) FROM {target} t {'WHERE ' + scope.removesuffix(' AND ') if scope else ''}), "
            f"(SELECT count(*) FROM {target} t WHERE {scope} NOT EXISTS (SELECT 1 FROM {STAGE} s WHERE {match}))"
        ),
        params,
    ).one()
    share = snapshot.max_delete_share or 0.0
    if stored >= MIRROR_GUARD_MIN_ROWS and vanishing > share * stored:
        where = f"{dataset.key}[{snapshot.state_key}]" if snapshot.state_key else dataset.key
        raise MirrorGuardError(
            f"{where}: the new snapshot would delete {vanishing:,} of {stored:,} rows ({vanishing / stored:.0%}), more than "
            f"the allowed {share:.0%}; nothing was written. If the API really dropped them, rerun with run config "
            "max_delete_share: 1.0 (or raise SYNC_ASSETS_MAX_DELETE_SHARE)."
        )


def _merge(conn: Connection, dataset: Dataset, context: Mapping[str, Any], deletes: bool = True) -> dict[str, int]:
    """Set-based merge (hash joins, not per-row conflict probes): delete vanished rows (mirror),
    update rows whose values changed (mirror, upsert), insert new rows (all modes)."""
    target = table_name(dataset)
    names = [c.name for c in dataset.table_columns]
    rest = [n for n in names if n not in dataset.primary_key]
    match = " AND ".join(f"s.{qi(k)} = t.{qi(k)}" for k in dataset.primary_key)
    scope, params = _scope(context)
    deleted = updated = 0
    if dataset.write_mode is WriteMode.MIRROR and deletes:
        # Deletes come only from a complete snapshot of 200s: that is the only way here.
        deleted = conn.execute(
            text(f"DELETE FROM {target} t WHERE {scope} NOT EXISTS (SELECT 1 FROM {STAGE} s WHERE {match})"), params
        ).rowcount
    if dataset.write_mode is not WriteMode.APPEND and rest:
        assign = ", ".join(f"{qi(n)} = s.{qi(n)}" for n in rest)
        old = ", ".join(f"t.{qi(n)}" for n in rest)
        new = ", ".join(f"s.{qi(n)}" for n in rest)
        updated = conn.execute(
            text(f"UPDATE {target} t SET {assign} FROM {STAGE} s WHERE {match} AND ROW({old}) IS DISTINCT FROM ROW({new})")
        ).rowcount
    cols = ", ".join(qi(n) for n in names)
    inserted = conn.execute(
        text(
            f"INSERT INTO {target} ({cols}) SELECT {', '.join(f's.{qi(n)}' for n in names)} FROM {STAGE} s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {match})"
        )
    ).rowcount
    return {"inserted": int(inserted), "updated": int(updated), "deleted": int(deleted)}


def _scope(context: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """`t.col = :v AND ...` for the snapshot's partition/slice columns, and `start <= t.col < end`
    for its time window: what a mirror replaces."""
    clause, params = "", {}
    for i, name in enumerate(sorted(context)):
        value = context[name]
        if isinstance(value, TimeRange):
            clause += f"t.{qi(name)} >= :scope_{i}_start AND t.{qi(name)} < :scope_{i}_end AND "
            params.update({f"scope_{i}_start": value.start, f"scope_{i}_end": value.end})
        else:
            clause += f"t.{qi(name)} = :scope_{i} AND "
            params[f"scope_{i}"] = value
    return clause, params


def _count(conn: Connection, dataset: Dataset, snapshot: Snapshot) -> int:
    scope, params = _scope(snapshot.context)
    where = f"WHERE {scope.removesuffix(' AND ')}" if scope else ""
    return int(conn.execute(text(f"SELECT count(*) FROM {table_name(dataset)} t {where}"), params).scalar_one())


def _save_state(conn: Connection, dataset: Dataset, partition: str, v: Validators, total: int, changed: bool) -> None:
    now = datetime.now(timezone.utc)
    conn.execute(
        text(
            f"INSERT INTO {SYNC_STATE} AS s (dataset, partition_key, page_etags, last_modified, expires_at, cursor,"
            " walked_at, data_version, row_count, last_checked_at, last_changed_at, last_success_at)"
            " VALUES (:d, :p, CAST(:etags AS jsonb), :lm, :exp, :cursor, :walked, :dv, :rows, :now, :changed_at, :now)"
            " ON CONFLICT (dataset, partition_key) DO UPDATE SET page_etags = EXCLUDED.page_etags, cursor = EXCLUDED.cursor,"
            " walked_at = EXCLUDED.walked_at,"
            " last_modified = EXCLUDED.last_modified, expires_at = EXCLUDED.expires_at,"
            " data_version = EXCLUDED.data_version, row_count = EXCLUDED.row_count,"
            " last_checked_at = EXCLUDED.last_checked_at, last_success_at = EXCLUDED.last_success_at,"
            " last_changed_at = COALESCE(EXCLUDED.last_changed_at, s.last_changed_at)"
        ),
        {
            "d": dataset.key, "p": partition, "etags": json.dumps(list(v.page_etags)), "lm": v.last_modified,
            "exp": v.expires_at, "cursor": v.cursor, "walked": v.walked_at, "dv": v.data_version, "rows": total, "now": now, "changed_at": now if changed else None,
        },
    )
