"""The data database lost in the middle of a write: DatabaseUnavailable naming the (redacted) URL,
the original error as its cause, and nothing of the transaction committed."""

from __future__ import annotations

from datetime import timedelta
from typing import Callable

import pytest
from sqlalchemy import Connection, create_engine, text

from sync_assets.datasets import MARKET_ORDERS
from sync_assets.warehouse import DatabaseUnavailable, PostgresWarehouse, writer
from sync_assets.warehouse.urls import redacted

from .test_warehouse import T0, orders


def _terminating(url: str, original: Callable) -> Callable:
    """`original`, called after the server killed the writer's backend (as a restart would)."""

    def wrapped(conn: Connection, *args, **kwargs):
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        finally:
            admin.dispose()
        return original(conn, *args, **kwargs)

    return wrapped


@pytest.mark.parametrize("phase", ["_copy", "_merge", "_save_state"])
def test_a_connection_lost_mid_write_is_database_unavailable_and_writes_nothing(
    phase: str, database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    wh = PostgresWarehouse(database_url=database_url)
    wh.write_snapshot(MARKET_ORDERS, orders("10000002", [1, 2, 3]))
    before = wh.read_table(MARKET_ORDERS, ["10000002"])
    state_before = wh.read_validators(MARKET_ORDERS, "10000002")
    monkeypatch.setattr(writer, phase, _terminating(database_url, getattr(writer, phase)))
    with pytest.raises(DatabaseUnavailable) as info:
        wh.write_snapshot(MARKET_ORDERS, orders("10000002", [3, 4, 5], price=2.0, lm=T0 + timedelta(minutes=5)))
    message = str(info.value)
    assert "data database" in message and redacted(database_url) in message, message
    assert info.value.__cause__ is not None, "the original error is lost"
    monkeypatch.undo()
    assert wh.read_table(MARKET_ORDERS, ["10000002"]).equals(before), "a failed write changed the table"
    assert wh.read_validators(MARKET_ORDERS, "10000002") == state_before, "a failed write changed the validators"
    assert wh.write_snapshot(MARKET_ORDERS, orders("10000002", [3, 4], lm=T0 + timedelta(minutes=5))).total == 2  # and the pool recovers
