"""One-shot commands with no database configured leave no server behind: `sync-assets esi tokens`
stops the embedded PostgreSQL it had to start; `dagster asset materialize` never starts one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sync_assets.db.embedded import stop_embedded_postgres
from sync_assets.runtime import embedded_postgres_running

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_ASSETS_", "DAGSTER_", "ESI_"))}
    return env | {"DAGSTER_HOME": str(home)}


def test_esi_tokens_stops_the_embedded_postgres_it_started(tmp_path: Path) -> None:
    home = tmp_path / "home"
    try:
        proc = subprocess.run([str(BIN / "sync-assets"), "esi", "tokens"], cwd=ROOT, env=_env(home),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (home / "pgdata" / "PG_VERSION").exists()  # it did need the embedded server
        assert not embedded_postgres_running(home / "pgdata"), "the embedded PostgreSQL outlived `sync-assets esi tokens`"
    finally:
        stop_embedded_postgres(home / "pgdata")


def test_esi_tokens_leaves_a_server_that_was_already_running(tmp_path: Path) -> None:
    from sync_assets.db.embedded import start_embedded_postgres

    home = tmp_path / "home"
    start_embedded_postgres(home / "pgdata")  # e.g. a `sync-assets dev` in another terminal
    try:
        proc = subprocess.run([str(BIN / "sync-assets"), "esi", "tokens"], cwd=ROOT, env=_env(home),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert embedded_postgres_running(home / "pgdata")
    finally:
        stop_embedded_postgres(home / "pgdata")


def test_dagster_asset_materialize_with_no_database_starts_no_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_ASSETS_", "DAGSTER_", "ESI_"))}
    proc = subprocess.run([str(BIN / "dagster"), "asset", "materialize", "-m", "sync_assets.definitions",
                           "--select", "esi/market_prices"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "SYNC_ASSETS_DATABASE_URL" in proc.stdout + proc.stderr  # says what is missing
    assert not list(ROOT.glob(".tmp_dagster_home_*/pgdata")) and not (ROOT / "pgdata").exists()
