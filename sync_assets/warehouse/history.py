"""Sync failures (written by the run-failure sensor) and retention of the bookkeeping tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, text

from .tables import META_SCHEMA, SYNC_STATE

FAILURES = f"{META_SCHEMA}.sync_failures"
FAILURES_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {META_SCHEMA};
CREATE TABLE IF NOT EXISTS {FAILURES} (
    id            bigserial PRIMARY KEY,
    failed_at     timestamptz NOT NULL DEFAULT now(),
    dataset       text NOT NULL,
    partition_key text NOT NULL DEFAULT '',
    run_id        text NOT NULL,
    failure_class text NOT NULL,
    message       text NOT NULL
);
CREATE INDEX IF NOT EXISTS sync_failures_dataset ON {FAILURES} (dataset, partition_key, failed_at DESC);
"""


def record_failure(conn: Connection, dataset: str, partition_key: str | None, run_id: str, failure_class: str, message: str) -> None:
    conn.execute(text(FAILURES_DDL))
    conn.execute(
        text(f"INSERT INTO {FAILURES} (dataset, partition_key, run_id, failure_class, message) VALUES (:d, :p, :r, :c, :m)"),
        {"d": dataset, "p": partition_key or "", "r": run_id, "c": failure_class, "m": message[:4000]},
    )


def expired(conn: Connection, margin_s: float) -> list[tuple[str, str, datetime]]:
    """(dataset, partition, earliest Expires) of partitions whose cache expired `margin_s` ago.
    Sliced datasets keep one state row per slice ("<partition>/division=3"): the earliest counts."""
    rows = conn.execute(
        text(
            f"SELECT dataset, split_part(partition_key, '/', 1) AS partition, min(expires_at) AS expires_at "
            f"FROM {SYNC_STATE} WHERE expires_at IS NOT NULL GROUP BY 1, 2 "
            "HAVING min(expires_at) + make_interval(secs => :m) <= clock_timestamp() ORDER BY 3"
        ),
        {"m": margin_s},
    ).all()
    return [(r.dataset, r.partition, r.expires_at) for r in rows]


def trim(conn: Connection, keep_days: int) -> dict[str, int]:
    """Delete bookkeeping older than `keep_days`: failures, and sync state of partitions not
    synced since (a corporation that left). Data tables are never trimmed here."""
    conn.execute(text(FAILURES_DDL))
    failures = conn.execute(
        text(f"DELETE FROM {FAILURES} WHERE failed_at < now() - make_interval(days => :d)"), {"d": keep_days}
    ).rowcount
    states = conn.execute(
        text(f"DELETE FROM {SYNC_STATE} WHERE last_success_at < now() - make_interval(days => :d)"), {"d": keep_days}
    ).rowcount
    spend = conn.execute(
        text("DELETE FROM sync_assets.api_spend WHERE at < now() - interval '1 day'")
    ).rowcount if _exists(conn, "sync_assets.api_spend") else 0
    return {"failures_deleted": failures, "sync_states_deleted": states, "budget_events_deleted": spend}


def _exists(conn: Connection, table: str) -> bool:
    return conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar_one()
