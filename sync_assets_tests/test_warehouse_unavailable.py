"""The data database lost in the middle of a write: DatabaseUnavailable naming the (redacted) URL,
the original error as its cause, and nothing of the transaction committed."""

from __future__ import annotations

from datetime import timedelta
from typing import Callable

import pytest
from sqlalchemy import Connection, create_engine, text

from sync_assets.apis.esi.datasets import MARKET_ORDERS
from sync_assets.warehouse import DatabaseUnavailable, PostgresWarehouse, writer
from sync_assets.db.urls import redacted

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


def test_a_database_lost_after_the_commit_does_not_fail_the_committed_write(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The IO manager counts the table after committing; a restart right then must not turn a
    committed snapshot into a failed run (the data and validators are in)."""
    import dagster as dg

    from sync_assets.apis.esi.datasets import MARKET_PRICES
    from sync_assets.warehouse import SnapshotIOManager

    from .test_warehouse import prices

    def lost(*args, **kwargs):
        raise DatabaseUnavailable("cannot reach the data database postgresql+psycopg2://x@/db: the database system is shutting down")

    wh = PostgresWarehouse(database_url=database_url)
    monkeypatch.setattr(PostgresWarehouse, "count_rows", lost)
    context = dg.build_output_context(asset_key=dg.AssetKey(["esi", "market_prices"]))
    SnapshotIOManager(warehouse=wh).handle_output(context, prices([(1, 1.0, 1.0), (2, 2.0, 2.0)]))
    assert context.get_logged_metadata()["dagster/row_count"].value == 2
    monkeypatch.undo()
    assert wh.read_table(MARKET_PRICES)["type_id"].tolist() == [1, 2]
