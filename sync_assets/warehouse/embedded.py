"""The embedded PostgreSQL (pgserver) used when no database URL is configured."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import create_engine, text

from .urls import psycopg2_url, with_database

log = logging.getLogger(__name__)


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the pgserver instance in `data_dir`; returns a psycopg2 URL to `postgres`.

    pgserver listens on a Unix socket inside the data directory, so nothing is exposed on the
    network. The server keeps running after this process exits, and later calls reuse it.
    """
    import pgserver  # heavy import, only when the embedded server is wanted

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode=None)
    return psycopg2_url(server.get_uri("postgres"), "embedded postgres")


def ensure_database(server_url: str, database: str) -> str:
    """Create `database` on the server if missing; returns its URL."""
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": database}).scalar()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{database}"'))
                log.info("created database %s", database)
    finally:
        engine.dispose()
    return with_database(server_url, database)


def stop_embedded_postgres(data_dir: Path, timeout_s: float = 30.0) -> None:
    """Fast shutdown (SIGINT: roll back open transactions, then exit) of the server in `data_dir`."""
    import os
    import signal
    import time

    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGINT)
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
