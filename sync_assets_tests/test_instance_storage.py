"""Dagster's storage as deployments configure it (sync_assets.runtime.instance_yaml): Postgres, with
its connections kept for the process instead of one opened per query, closed with the instance,
and replaced when the server drops them."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine

from sync_assets.orchestration.instance_storage import PooledPostgresStorage
from sync_assets.runtime import write_instance_yaml

ASSET = AssetKey(["probe"])


@pytest.fixture
def instance(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DagsterInstance]:
    write_instance_yaml(tmp_path)  # the project's dagster.yaml plus the storage block, as `sync-assets dev` writes it
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_PG_URL", database_url)
    with DagsterInstance.get() as instance:
        yield instance


@pytest.fixture
def connects() -> Iterator[list[object]]:
    """Every new DBAPI connection any engine of this process opens."""
    opened: list[object] = []

    def count(dbapi_connection: object, _record: object) -> None:
        opened.append(dbapi_connection)

    event.listen(Engine, "connect", count)
    yield opened
    event.remove(Engine, "connect", count)


def _work(instance: DagsterInstance) -> None:
    """What a run process does with its instance, in small: runs, events, schedules' state."""
    instance.report_runless_asset_event(AssetMaterialization(ASSET))
    assert instance.get_latest_materialization_event(ASSET) is not None
    instance.get_runs(limit=5)
    instance.all_instigator_state()


def _backends(database_url: str) -> list[int]:
    """Server processes connected to the instance's database (the probe's own excluded)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).scalars())
    finally:
        engine.dispose()


def test_the_instance_yaml_names_the_pooled_storage(instance: DagsterInstance) -> None:
    # the ref is what run workers, code servers and the daemon's subprocesses rebuild the instance from
    assert isinstance(instance.get_ref().storage, PooledPostgresStorage)


def test_queries_reuse_the_connections(instance: DagsterInstance, connects: list[object]) -> None:
    _work(instance)  # the first use of each storage opens its connection
    opened = len(connects)
    assert opened >= 1
    for _ in range(10):
        _work(instance)
    # Dagster's default NullPool engines would open one per query: 50 and more here
    assert len(connects) == opened


def test_dispose_closes_the_connections(instance: DagsterInstance, database_url: str) -> None:
    _work(instance)
    assert _backends(database_url), "the pooled connections are open while the instance lives"
    instance.dispose()
    assert _backends(database_url) == []


def test_connections_the_server_dropped_are_replaced(instance: DagsterInstance, database_url: str) -> None:
    _work(instance)
    engine = create_engine(database_url)
    with engine.connect() as conn:  # as a server restart or an idle-session timeout would
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    engine.dispose()
    for _ in range(2):  # a dropped connection costs a retry, never the operation
        _work(instance)
    assert len(instance.fetch_materializations(ASSET, limit=10).records) == 3


def test_webserver_pooling_still_applies(instance: DagsterInstance, connects: list[object]) -> None:
    instance.optimize_for_webserver(statement_timeout=15000, pool_recycle=3600, max_overflow=20)
    _work(instance)
    opened = len(connects)
    _work(instance)
    assert len(connects) == opened


def test_a_forked_child_opens_its_own_connection(database_url: str) -> None:
    """A connection is one socket: a child forked from a process holding one (a fork start method,
    a forking server) must not talk on it while the parent does. (When the child lets go of the
    inherited connection, libpq says goodbye on it and the server closes it: the parent's next
    checkout notices, pre-ping, and connects anew.)"""
    import os

    from sync_assets.orchestration.instance_storage import pooled_engine

    engine = pooled_engine(database_url)

    def backend() -> int:
        with engine.connect() as conn:  # back to the pool when the block ends
            return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()

    try:
        parent = backend()
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the child: report which server process answers it, then leave at once
            try:
                os.write(write, str(backend()).encode())
            finally:
                os._exit(0)
        os.close(write)
        answered = int(os.read(read, 64).decode() or 0)
        os.waitpid(child, 0)
        assert answered and answered != parent
        assert backend()  # the parent still works
    finally:
        engine.dispose()
