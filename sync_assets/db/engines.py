"""One SQLAlchemy engine (connection pool) per database URL and process."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, create_engine

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """The process's pool for `url` (a validated psycopg2 URL): runs that end leave no pool behind,
    and the budget, token store and warehouse of one run share connections."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
            _engines[url] = engine
        return engine
