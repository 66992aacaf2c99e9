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
    cached = pgserver.PostgresServer._instances.get(data_dir.expanduser().resolve())
    if cached is not None and not _serves(cached, data_dir):
        # pgserver caches one PostgresServer per data directory and returns it without checking that
        # its postmaster still runs: after a stop (ours or anyone's) it would hand back a dead server.
        _forget_server(data_dir)
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

    _forget_server(data_dir)  # the next start in this process must start it again, not reuse the cache
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


def _serves(server: object, data_dir: Path) -> bool:
    """Is the cached pgserver handle's postmaster the one running in `data_dir` now?"""
    from pgserver.utils import PostmasterInfo

    current = PostmasterInfo.read_from_pgdata(data_dir.expanduser().resolve())
    if current is None or not current.is_running():
        return False
    cached = getattr(server, "_postmaster_info", None)
    return cached is not None and cached.pid == current.pid and cached.is_running()


def _forget_server(data_dir: Path) -> None:
    """Drop pgserver's cached handle of `data_dir`, with what its exit hook would have undone (this
    process in the data directory's list of handle holders)."""
    import atexit
    import os
    import sys

    pgserver = sys.modules.get("pgserver")
    if pgserver is None:  # never imported here: nothing cached
        return
    server = pgserver.PostgresServer._instances.pop(data_dir.expanduser().resolve(), None)
    if server is not None:
        atexit.unregister(server._cleanup)
        with server._lock:
            server.global_process_id_list.get_and_remove(os.getpid())
