"""Row counts for `dagster/row_count` without a scan of the table when no write changed it.

Every write that inserts or deletes rows bumps the table's version in its own transaction
(`bump`). A count is stored with the version it was taken at and stands while the version does:
an unchanged re-sync, the common case, reads one row instead of scanning a table that only grows.
The synced tables are written by sync_assets alone (a sync would overwrite other edits anyway); a
row changed by hand is counted again after the next write that inserts or deletes rows.

Why a stored count is exact when used: a writer's rows and its bump commit together, and the
count is stored with the version read *before* the count statement began, so the count holds
that version's rows or more; it is used only while that version is still the latest, when "or
more" cannot have happened.
"""

from __future__ import annotations

from typing import Sequence

from sqlalchemy import Connection, text

from ..core.datasets import Dataset
from .tables import ROW_COUNTS, TABLE_VERSIONS, table_name

TABLE_SCOPE = ""  # the row of the whole table's count


def bump(conn: Connection, dataset: Dataset) -> None:
    """Call last in a write transaction that inserted or deleted rows: the row lock it takes is held
    only until the commit that follows, so writers of other partitions barely queue on it."""
    conn.execute(
        text(f"INSERT INTO {TABLE_VERSIONS} AS v (table_name, version) VALUES (:t, 1)"
             " ON CONFLICT (table_name) DO UPDATE SET version = v.version + 1"),
        {"t": table_name(dataset)},
    )


def row_counts(conn: Connection, dataset: Dataset, partition_keys: Sequence[str] | None,
               where: str, params: dict) -> tuple[int, int | None]:
    """(rows in the table, rows of `partition_keys` or None without them), scanning the table only
    for the counts no longer valid. `where`/`params`: the partitions' filter (` WHERE …`)."""
    table = table_name(dataset)
    # one partition's count is worth keeping; a backfill's range of them is counted each time
    scope = partition_keys[0] if partition_keys is not None and len(partition_keys) == 1 else None
    version, stored = _stored(conn, table, [TABLE_SCOPE] + ([scope] if scope is not None else []))
    total = stored.get(TABLE_SCOPE)
    within = stored.get(scope) if scope is not None else None
    if partition_keys is None:
        if total is None:
            total = int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            _store(conn, table, version, {TABLE_SCOPE: total})
        return total, None
    if total is None or within is None:
        filtered = f" FILTER ({where.strip()})" if where else ""
        if total is None:  # both in one scan
            total, within = (int(n) for n in conn.execute(text(f"SELECT count(*), count(*){filtered} FROM {table}"), params).one())
        else:  # the partition alone: its index narrows the scan
            within = int(conn.execute(text(f"SELECT count(*) FROM {table}{where}"), params).scalar_one())
        _store(conn, table, version, {TABLE_SCOPE: total, **({scope: within} if scope is not None else {})})
    return total, within


def _stored(conn: Connection, table: str, scopes: list[str]) -> tuple[int, dict[str, int]]:
    """The table's current version (0 before its first counted write) and the counts taken at it."""
    rows = conn.execute(
        text(f"SELECT coalesce((SELECT version FROM {TABLE_VERSIONS} WHERE table_name = :t), 0) AS current,"
             f" c.scope, c.version, c.row_count FROM (SELECT 1) AS one"
             f" LEFT JOIN {ROW_COUNTS} c ON c.table_name = :t AND c.scope = ANY(:scopes)"),
        {"t": table, "scopes": scopes},
    ).all()
    current = int(rows[0].current)
    return current, {r.scope: int(r.row_count) for r in rows if r.scope is not None and r.version == current}


def _store(conn: Connection, table: str, version: int, counts: dict[str, int]) -> None:
    conn.execute(
        text(f"INSERT INTO {ROW_COUNTS} (table_name, scope, version, row_count) VALUES (:t, :s, :v, :n)"
             " ON CONFLICT (table_name, scope) DO UPDATE SET version = EXCLUDED.version, row_count = EXCLUDED.row_count"),
        [{"t": table, "s": scope, "v": version, "n": n} for scope, n in counts.items()],
    )
