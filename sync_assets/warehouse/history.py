"""Sync failures (written by the run-failure sensor), deferrals (work a spent API budget could not
pay for, resumed by the expiry sensor) and retention of the bookkeeping tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from ..db.ddl import probe as ddl_probe
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


OUTCOMES = f"{META_SCHEMA}.partition_outcomes"
OUTCOMES_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {META_SCHEMA};
CREATE TABLE IF NOT EXISTS {OUTCOMES} (
    dataset         text NOT NULL,
    partition_key   text NOT NULL DEFAULT '',
    last_success_at timestamptz,          -- creation time of the newest run that synced it
    last_failure_at timestamptz,          -- creation time of the newest run that failed on it
    failure_class   text,
    message         text,
    failed_run_id   text,
    PRIMARY KEY (dataset, partition_key)
);
"""


_ready: set[tuple[str, str]] = set()  # (database URL, DDL) created in this process


def _ensure(conn: Connection, ddl: str) -> None:
    """Create a bookkeeping table once per process, in its own committed transaction. Two processes
    doing so at the same instant collide in PostgreSQL's catalog (CREATE … IF NOT EXISTS is not
    atomic): the loser tries again and finds it. No lock is taken: a run's open write transaction
    may hold the data tables' DDL lock for as long as its walk lasts."""
    key = (conn.engine.url.render_as_string(hide_password=True), ddl)
    if key in _ready:
        return
    if conn.execute(text(ddl_probe(ddl))).scalar_one():  # created before: a catalog read, no DDL
        _ready.add(key)
        return
    for attempt in range(3):
        try:
            with conn.engine.begin() as ddl_conn:
                ddl_conn.execute(text(ddl))
            break
        except IntegrityError:
            if attempt == 2:
                raise
    _ready.add(key)


def record_outcome(conn: Connection, dataset: str, partition_key: str | None, run_created_at: datetime, run_id: str,
                   failure_class: str | None = None, message: str | None = None) -> None:
    """The latest outcome per partition, ordered by when the runs were created (not when their
    news arrived: the failure sensor may report a failure after a later run succeeded)."""
    _ensure(conn, OUTCOMES_DDL)
    params = {"d": dataset, "p": partition_key or "", "t": run_created_at, "r": run_id, "c": failure_class,
              "m": (message or "")[:4000]}
    if failure_class is None:
        conn.execute(text(
            f"INSERT INTO {OUTCOMES} (dataset, partition_key, last_success_at) VALUES (:d, :p, :t) "
            f"ON CONFLICT (dataset, partition_key) DO UPDATE SET last_success_at = "
            f"GREATEST({OUTCOMES}.last_success_at, EXCLUDED.last_success_at)"), params)
        return
    conn.execute(text(
        f"INSERT INTO {OUTCOMES} AS o (dataset, partition_key, last_failure_at, failure_class, message, failed_run_id) "
        "VALUES (:d, :p, :t, :c, :m, :r) ON CONFLICT (dataset, partition_key) DO UPDATE SET "
        "last_failure_at = EXCLUDED.last_failure_at, failure_class = EXCLUDED.failure_class, "
        "message = EXCLUDED.message, failed_run_id = EXCLUDED.failed_run_id "
        "WHERE o.last_failure_at IS NULL OR o.last_failure_at <= EXCLUDED.last_failure_at"), params)


def failing_partitions(conn: Connection, dataset: str) -> list[tuple[str, str, str, datetime]]:
    """(partition, failure class, message, failed at) of the partitions whose newest run failed."""
    _ensure(conn, OUTCOMES_DDL)
    rows = conn.execute(text(
        f"SELECT partition_key, failure_class, message, last_failure_at FROM {OUTCOMES} WHERE dataset = :d "
        "AND last_failure_at IS NOT NULL AND last_failure_at > coalesce(last_success_at, '-infinity') "
        "ORDER BY last_failure_at"), {"d": dataset}).all()
    return [(r.partition_key, r.failure_class, r.message, r.last_failure_at) for r in rows]


ITEMS = f"{META_SCHEMA}.failed_items"
ITEMS_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {META_SCHEMA};
CREATE TABLE IF NOT EXISTS {ITEMS} (
    dataset         text NOT NULL,
    partition_key   text NOT NULL DEFAULT '',
    item            text NOT NULL,          -- the slice: "mid=000181158930"
    failure_class   text NOT NULL,
    message         text NOT NULL,
    attempts        integer NOT NULL,
    first_failed_at timestamptz NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    retry_at        timestamptz NOT NULL,   -- backoff across runs: not asked again before
    PRIMARY KEY (dataset, partition_key, item)
);
"""


@dataclass(frozen=True)
class FailedItem:
    partition_key: str
    item: str
    failure_class: str
    message: str
    attempts: int
    retry_at: datetime


def record_item_failures(conn: Connection, dataset: str, partition_key: str | None,
                         failures: list[tuple[str, str, str]], backoff_s: float, backoff_max_s: float) -> None:
    """(item, failure class, message) of each failed item: attempts counted, the next attempt
    backed off exponentially (`backoff_s` doubled per attempt, at most `backoff_max_s`)."""
    _ensure(conn, ITEMS_DDL)
    for item, failure_class, message in failures:
        conn.execute(text(
            f"INSERT INTO {ITEMS} AS f (dataset, partition_key, item, failure_class, message, attempts, first_failed_at, "
            "last_failed_at, retry_at) VALUES (:d, :p, :i, :c, :m, 1, now(), now(), now() + make_interval(secs => :b)) "
            "ON CONFLICT (dataset, partition_key, item) DO UPDATE SET failure_class = EXCLUDED.failure_class, "
            "message = EXCLUDED.message, attempts = f.attempts + 1, last_failed_at = now(), "
            "retry_at = now() + make_interval(secs => least(:x, :b * power(2, f.attempts)))"),
            {"d": dataset, "p": partition_key or "", "i": item, "c": failure_class, "m": message[:4000],
             "b": backoff_s, "x": backoff_max_s})


def clear_items(conn: Connection, dataset: str, partition_key: str | None, items: list[str]) -> int:
    _ensure(conn, ITEMS_DDL)
    return conn.execute(text(f"DELETE FROM {ITEMS} WHERE dataset = :d AND partition_key = :p AND item = ANY(:i)"),
                        {"d": dataset, "p": partition_key or "", "i": items}).rowcount


def failed_items(conn: Connection, dataset: str, partition_key: str | None = None) -> list[FailedItem]:
    """The items of `dataset` (of one partition, when given) whose last attempt failed, oldest first."""
    _ensure(conn, ITEMS_DDL)
    where = " AND partition_key = :p" if partition_key is not None else ""
    rows = conn.execute(text(f"SELECT partition_key, item, failure_class, message, attempts, retry_at FROM {ITEMS} "
                             f"WHERE dataset = :d{where} ORDER BY first_failed_at, partition_key, item"),
                        {"d": dataset, "p": partition_key or ""}).all()
    return [FailedItem(r.partition_key, r.item, r.failure_class, r.message, r.attempts, r.retry_at) for r in rows]


def record_failure(conn: Connection, dataset: str, partition_key: str | None, run_id: str, failure_class: str, message: str) -> None:
    _ensure(conn, FAILURES_DDL)
    conn.execute(
        text(f"INSERT INTO {FAILURES} (dataset, partition_key, run_id, failure_class, message) VALUES (:d, :p, :r, :c, :m)"),
        {"d": dataset, "p": partition_key or "", "r": run_id, "c": failure_class, "m": message[:4000]},
    )


DEFERRALS = f"{META_SCHEMA}.sync_deferrals"
DEFERRALS_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {META_SCHEMA};
CREATE TABLE IF NOT EXISTS {DEFERRALS} (
    dataset       text NOT NULL,
    partition_key text NOT NULL DEFAULT '',
    retry_at      timestamptz NOT NULL,
    deferred_at   timestamptz NOT NULL DEFAULT now(),
    run_id        text NOT NULL,
    reason        text NOT NULL,
    PRIMARY KEY (dataset, partition_key)
);
"""


def record_deferral(conn: Connection, dataset: str, partition_key: str | None, retry_at: datetime, run_id: str,
                    reason: str) -> None:
    _ensure(conn, DEFERRALS_DDL)
    conn.execute(
        text(f"INSERT INTO {DEFERRALS} (dataset, partition_key, retry_at, run_id, reason) VALUES (:d, :p, :t, :r, :m) "
             "ON CONFLICT (dataset, partition_key) DO UPDATE SET retry_at = EXCLUDED.retry_at, "
             "deferred_at = now(), run_id = EXCLUDED.run_id, reason = EXCLUDED.reason"),
        {"d": dataset, "p": partition_key or "", "t": retry_at, "r": run_id, "m": reason[:4000]},
    )


def clear_deferral(conn: Connection, dataset: str, partition_key: str | None) -> None:
    _ensure(conn, DEFERRALS_DDL)
    conn.execute(text(f"DELETE FROM {DEFERRALS} WHERE dataset = :d AND partition_key = :p"),
                 {"d": dataset, "p": partition_key or ""})


def deferrals(conn: Connection) -> list[tuple[str, str, datetime]]:
    """(dataset, partition, retry_at) of every deferred partition, soonest first."""
    _ensure(conn, DEFERRALS_DDL)
    rows = conn.execute(text(f"SELECT dataset, partition_key, retry_at FROM {DEFERRALS} ORDER BY retry_at")).all()
    return [(r.dataset, r.partition_key, r.retry_at) for r in rows]


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
    _ensure(conn, FAILURES_DDL)
    failures = conn.execute(
        text(f"DELETE FROM {FAILURES} WHERE failed_at < now() - make_interval(days => :d)"), {"d": keep_days}
    ).rowcount
    states = conn.execute(
        text(f"DELETE FROM {SYNC_STATE} WHERE last_success_at < now() - make_interval(days => :d)"), {"d": keep_days}
    ).rowcount
    _ensure(conn, ITEMS_DDL)
    items = conn.execute(
        text(f"DELETE FROM {ITEMS} WHERE last_failed_at < now() - make_interval(days => :d)"), {"d": keep_days}
    ).rowcount
    _ensure(conn, DEFERRALS_DDL)
    deferred = conn.execute(
        text(f"DELETE FROM {DEFERRALS} WHERE retry_at < now() - make_interval(days => :d)"), {"d": keep_days}
    ).rowcount
    spend = conn.execute(
        text("DELETE FROM sync_assets.api_spend WHERE at < now() - interval '1 day'")
    ).rowcount if _exists(conn, "sync_assets.api_spend") else 0
    return {"failures_deleted": failures, "sync_states_deleted": states, "deferrals_deleted": deferred, "failed_items_deleted": items, "budget_events_deleted": spend}


def _exists(conn: Connection, table: str) -> bool:
    return conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar_one()
