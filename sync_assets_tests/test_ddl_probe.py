"""Idempotent DDL runs only when the catalog lacks something it creates (db/ddl.py)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import create_engine, text

from sync_assets.db import ddl
from sync_assets.fetch.budget import BUDGET_DDL
from sync_assets.warehouse import history
from sync_assets.warehouse.tables import SYNC_STATE_DDL

SCRIPTS = {"budget": BUDGET_DDL, "sync_state": SYNC_STATE_DDL, "failures": history.FAILURES_DDL,
           "outcomes": history.OUTCOMES_DDL, "items": history.ITEMS_DDL, "deferrals": history.DEFERRALS_DDL}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_the_probe_sees_each_object_the_script_creates(database_url: str, name: str) -> None:
    script = SCRIPTS[name]
    engine = create_engine(database_url)
    with engine.begin() as conn:
        assert conn.execute(text(ddl.probe(script))).scalar_one() is False
        assert ddl.apply(conn, script, 1) is True
        assert conn.execute(text(ddl.probe(script))).scalar_one() is True
        assert ddl.apply(conn, script, 1) is False  # nothing missing: no DDL, no lock
    created = re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+(?:\.\w+)?)", script) + re.findall(r"ADD COLUMN (?:IF NOT EXISTS )?(\w+)", script) \
        + re.findall(r"column_name = '(\w+)'", script)
    assert created, "the script creates nothing the probe could check"
    for obj in created:  # each object alone missing turns the probe False, and apply puts it back
        with engine.begin() as conn:
            conn.execute(text(_drop(script, obj)))
            assert conn.execute(text(ddl.probe(script))).scalar_one() is False, obj
            assert ddl.apply(conn, script, 1) is True
            assert conn.execute(text(ddl.probe(script))).scalar_one() is True, obj
    engine.dispose()


def _drop(script: str, obj: str) -> str:
    table = re.search(rf"CREATE TABLE IF NOT EXISTS ({re.escape(obj)})\b", script)
    if table:
        return f"DROP TABLE {obj} CASCADE"
    index = re.search(rf"CREATE INDEX IF NOT EXISTS {re.escape(obj)} ON (\w+)\.", script)
    if index:
        return f"DROP INDEX {index.group(1)}.{obj}"
    owner = re.search(rf"ALTER TABLE ([\w.]+) ADD COLUMN IF NOT EXISTS {re.escape(obj)}\b", script) or \
        re.search(rf"table_schema = '(\w+)'\s+AND table_name = '(\w+)' AND column_name = '{re.escape(obj)}'", script)
    table_name = owner.group(1) if owner.lastindex == 1 else f"{owner.group(1)}.{owner.group(2)}"
    return f"ALTER TABLE {table_name} DROP COLUMN {obj}"


def test_a_script_without_create_statements_is_refused() -> None:
    with pytest.raises(ValueError, match="nothing to probe"):
        ddl.probe("SELECT 1")
