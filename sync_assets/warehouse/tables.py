"""Table DDL derived from dataset declarations; created and migrated idempotently."""

from __future__ import annotations

from sqlalchemy import Connection, text

from ..core.datasets import Dataset
from ..db import ddl
from ..core.errors import FailureClass, WarehouseError

META_SCHEMA = "sync_assets"
SYNC_STATE = f"{META_SCHEMA}.sync_state"
TABLE_VERSIONS = f"{META_SCHEMA}.table_versions"
ROW_COUNTS = f"{META_SCHEMA}.row_counts"
DDL_LOCK = 7_349_001  # advisory lock id: one DDL transaction at a time across processes


class SchemaMismatch(WarehouseError):
    """An existing table has a column whose type differs from the declaration."""

    failure_class = FailureClass.CONFIGURATION


def qi(name: str) -> str:
    """Quote an identifier."""
    return '"' + name.replace('"', '""') + '"'


def table_name(dataset: Dataset) -> str:
    return f"{qi(dataset.api)}.{qi(dataset.name)}"


SYNC_STATE_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {META_SCHEMA};
CREATE TABLE IF NOT EXISTS {SYNC_STATE} (
    dataset          text        NOT NULL,
    partition_key    text        NOT NULL DEFAULT '',
    page_etags       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    last_modified    timestamptz,
    expires_at       timestamptz,
    data_version     text,
    row_count        bigint,
    last_checked_at  timestamptz NOT NULL,
    last_changed_at  timestamptz,
    last_success_at  timestamptz NOT NULL,
    PRIMARY KEY (dataset, partition_key)
);
ALTER TABLE {SYNC_STATE} ADD COLUMN IF NOT EXISTS cursor text;
ALTER TABLE {SYNC_STATE} ADD COLUMN IF NOT EXISTS walked_at timestamptz;
COMMENT ON TABLE {SYNC_STATE} IS
    'Validators (per-page ETags, Last-Modified, Expires) committed with the rows they describe';
CREATE TABLE IF NOT EXISTS {TABLE_VERSIONS} (
    table_name  text   PRIMARY KEY,
    version     bigint NOT NULL
);
COMMENT ON TABLE {TABLE_VERSIONS} IS
    'Bumped by every write that inserts or deletes rows of the table, in that write''s transaction';
CREATE TABLE IF NOT EXISTS {ROW_COUNTS} (
    table_name  text   NOT NULL,
    scope       text   NOT NULL,
    version     bigint NOT NULL,
    row_count   bigint NOT NULL,
    PRIMARY KEY (table_name, scope)
);
COMMENT ON TABLE {ROW_COUNTS} IS
    'Rows of a table (scope '''') or of one partition, counted at a version; valid while table_versions holds it';
"""


# DDL runs only when something is missing: an ALTER TABLE, even one with nothing to do, takes an
# ACCESS EXCLUSIVE lock, which would queue behind any run writing to the table and block every
# reader behind itself.

def ensure_sync_state(conn: Connection) -> None:
    ddl.apply(conn, SYNC_STATE_DDL, DDL_LOCK)


def ensure_table(conn: Connection, dataset: Dataset) -> bool:
    """Create the dataset's schema and table, add declared columns that are missing, and
    refuse to run on a column whose type changed (that needs a deliberate migration).
    True when the table was created."""
    actual = _columns(conn, dataset.api, dataset.name)
    if all(c.name in actual for c in dataset.table_columns) and _comment(conn, dataset) == dataset.description:
        _check_types(dataset, actual)
        return False
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": DDL_LOCK})
    columns = ",\n    ".join(
        f"{qi(c.name)} {c.postgres_type}{' NOT NULL' if c.name in dataset.primary_key else ''}" for c in dataset.table_columns
    )
    pk = ", ".join(qi(k) for k in dataset.primary_key)
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {qi(dataset.api)}"))
    conn.execute(text(f"CREATE TABLE IF NOT EXISTS {table_name(dataset)} (\n    {columns},\n    PRIMARY KEY ({pk})\n)"))
    for column in dataset.table_columns:
        conn.execute(text(f"ALTER TABLE {table_name(dataset)} ADD COLUMN IF NOT EXISTS {qi(column.name)} {column.postgres_type}"))
    _check_types(dataset, _columns(conn, dataset.api, dataset.name))
    description = dataset.description.replace("'", "''")
    conn.execute(text(f"COMMENT ON TABLE {table_name(dataset)} IS '{description}'"))
    return not actual


def _check_types(dataset: Dataset, actual: dict[str, str]) -> None:
    wrong = [f"{c.name}: table has {actual[c.name]}, declared {c.postgres_type}" for c in dataset.table_columns if actual[c.name] != c.postgres_type]
    if wrong:
        raise SchemaMismatch(f"{dataset.api}.{dataset.name} does not match its declaration ({'; '.join(wrong)}); migrate the table first")


def _columns(conn: Connection, schema: str, table: str) -> dict[str, str]:
    """column name -> data type as information_schema names it ("timestamp with time zone", no
    modifiers); empty when the table does not exist. From pg_catalog: information_schema's views
    cost a new connection several milliseconds, and every run's first queries come on one."""
    return dict(
        conn.execute(
            text("SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a"
                 " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
                 " WHERE n.nspname = :s AND c.relname = :t AND a.attnum > 0 AND NOT a.attisdropped"),
            {"s": schema, "t": table},
        ).all()
    )


def _comment(conn: Connection, dataset: Dataset) -> str | None:
    return conn.execute(text("SELECT obj_description(to_regclass(:t), 'pg_class')"), {"t": table_name(dataset)}).scalar()


def schema_problems(conn: Connection, dataset: Dataset) -> list[str]:
    """Differences between the table and its declaration: missing/extra/retyped columns, primary key."""
    actual = _columns(conn, dataset.api, dataset.name)
    if not actual:
        return [f"table {dataset.api}.{dataset.name} does not exist"]
    declared = {c.name: c.postgres_type for c in dataset.table_columns}
    problems = [f"missing column {n}" for n in declared if n not in actual]
    problems += [f"undeclared column {n}" for n in actual if n not in declared]
    problems += [f"{n} is {actual[n]}, declared {t}" for n, t in declared.items() if n in actual and actual[n] != t]
    key = conn.execute(
        text(
            "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = CAST(:t AS regclass) AND i.indisprimary"
        ),
        {"t": f"{qi(dataset.api)}.{qi(dataset.name)}"},
    ).scalar()
    if list(key or []) != list(dataset.primary_key):
        problems.append(f"primary key is ({', '.join(key or [])}), declared ({', '.join(dataset.primary_key)})")
    return problems
