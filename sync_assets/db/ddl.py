"""Idempotent DDL that runs only when something it creates is missing.

Every process used to run its `CREATE … IF NOT EXISTS` script on its first transaction. Even with
nothing to do, `CREATE INDEX IF NOT EXISTS` takes a SHARE lock on its table (queuing behind every
running insert) and `ALTER TABLE … ADD COLUMN IF NOT EXISTS` an ACCESS EXCLUSIVE one. `apply`
asks the catalog instead, in one query derived from the script itself, so a statement added to a
script is checked without anyone remembering to.
"""

from __future__ import annotations

import re
from functools import lru_cache

from sqlalchemy import Connection, text

_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS ([\w.]+)", re.I)
_INDEX = re.compile(r"CREATE INDEX IF NOT EXISTS (\w+) ON (\w+)\.", re.I)
_ADD_COLUMN = re.compile(r"ALTER TABLE ([\w.]+) ADD COLUMN IF NOT EXISTS (\w+)", re.I)
_GUARDED_COLUMN = re.compile(r"table_schema = '(\w+)'\s+AND table_name = '(\w+)' AND column_name = '(\w+)'", re.I)


@lru_cache(maxsize=None)
def probe(ddl: str) -> str:
    """SQL answering True when every table, index and column `ddl` creates exists. Tables are
    schema-qualified in our scripts; an index lives in its table's schema."""
    relations = _TABLE.findall(ddl) + [f"{schema}.{index}" for index, schema in _INDEX.findall(ddl)]
    columns = _ADD_COLUMN.findall(ddl) + [(f"{schema}.{table}", column) for schema, table, column in _GUARDED_COLUMN.findall(ddl)]
    if not relations:
        raise ValueError("no CREATE … IF NOT EXISTS statement in the script: nothing to probe")
    tests = [f"to_regclass('{name}') IS NOT NULL" for name in relations]
    tests += [f"EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('{table}') AND attname = '{column}'"
              " AND NOT attisdropped)" for table, column in columns]
    return "SELECT " + "\n   AND ".join(tests)


def apply(conn: Connection, ddl: str, lock_key: int) -> bool:
    """Run `ddl` in the caller's transaction unless the catalog shows it applied; True when it ran.
    The advisory lock makes concurrent first runs take turns (CREATE IF NOT EXISTS races otherwise)."""
    if conn.execute(text(probe(ddl))).scalar_one():
        return False
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key})
    conn.execute(text(ddl))
    return True
