"""Dagster's Postgres storage, keeping its connections for the life of the process.

dagster-postgres builds its run, event-log and schedule storages on `NullPool` engines: every query
opens a new connection (a new server process, and a TLS handshake on a remote database) and closes
it. Only `dagster-webserver` switches them to pools (`optimize_for_webserver`). A run worker, the
daemon and `dagster asset materialize` keep paying: a no-op run of one asset opens about 120
connections; on one machine (Unix socket, 2.4 ms each) that is 0.3 s of a 3 s run, and far more
against a database across a network.

`PooledPostgresStorage` is `DagsterPostgresStorage` whose three parts share one pooled engine: a
connection is kept and reused, checked on checkout (`pool_pre_ping`: one the server dropped, by a
restart or an idle timeout, is replaced instead of failing the event write that finds it), and
closed when the instance is disposed, so a process that creates instances one after another does
not pile up idle connections. A process forked from one holding them starts with an empty pool
(a connection is one socket: parent and child must never both use it). Configured exactly like
`storage: postgres:` (see sync_assets/runtime.py STORAGE_YAML). The webserver still applies its own
pooling on top.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Mapping

from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.storage import DagsterPostgresStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

POOL_SIZE = 1  # Dagster's storages use one connection at a time per thread
POOL_MAX_OVERFLOW = 20  # threads beyond it (the daemon's) get a connection of their own: the webserver's default
POOL_RECYCLE_S = 3600  # the webserver's default


_engines: weakref.WeakSet[Engine] = weakref.WeakSet()  # this process's pooled engines


def pooled_engine(postgres_url: str, token_provider: Any = None) -> Engine:
    """The engine the three storages share; dagster-postgres' own engine settings otherwise."""
    kwargs: dict[str, Any] = dict(isolation_level="AUTOCOMMIT", pool_size=POOL_SIZE, max_overflow=POOL_MAX_OVERFLOW,
                                  pool_recycle=POOL_RECYCLE_S, pool_pre_ping=True)
    options = make_url(postgres_url).query.get("options")
    if options:  # as optimize_for_webserver passes them
        kwargs["connect_args"] = {"options": options}
    engine = create_pg_engine(postgres_url, token_provider, **kwargs)
    _engines.add(engine)
    return engine


def _forget_parents_connections() -> None:
    """In a forked child: drop the inherited pooled connections (SQLAlchemy's recipe for os.fork),
    so the child never sends a query on the parent's socket. libpq still says goodbye on them as
    they are freed; the parent's pre-ping then replaces its connection on the next checkout."""
    for engine in list(_engines):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_parents_connections)


class _DisposesEngine:
    """Mixed into the storages the instance disposes (runs, events; Dagster never disposes the
    schedule storage): close the pooled connections now, not when the instance is collected."""

    _engine: Engine  # where dagster-postgres keeps each storage's engine

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        self._engine.dispose()


class PooledRunStorage(_DisposesEngine, PostgresRunStorage):
    """dagster-postgres' run storage; its pooled engine closed when the instance is disposed."""


class PooledEventLogStorage(_DisposesEngine, PostgresEventLogStorage):
    """dagster-postgres' event-log storage; its pooled engine closed when the instance is disposed."""


class PooledPostgresStorage(DagsterPostgresStorage):
    """`storage: postgres:` whose connections are kept, not reopened for every query."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None, token_provider: Any = None):
        # DagsterPostgresStorage.__init__ with our parts (building its own first would inspect the
        # schema twice); each still creates its tables as dagster-postgres does
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self._run_storage = PooledRunStorage(postgres_url, should_autocreate_tables, token_provider=token_provider)
        self._event_log_storage = PooledEventLogStorage(postgres_url, should_autocreate_tables, token_provider=token_provider)
        self._schedule_storage = PostgresScheduleStorage(postgres_url, should_autocreate_tables, token_provider=token_provider)
        engine = pooled_engine(postgres_url, token_provider)
        for part in (self._run_storage, self._event_log_storage, self._schedule_storage):
            part._engine = engine  # what optimize_for_webserver replaces too
        super(DagsterPostgresStorage, self).__init__()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]) -> PooledPostgresStorage:  # type: ignore[override]
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
