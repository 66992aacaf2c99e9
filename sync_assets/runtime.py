"""Process environment for `sync-assets dev|demo|esi`: Dagster home, databases, API URLs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import MutableMapping

from .db.embedded import ensure_database, start_embedded_postgres, stop_embedded_postgres
from .db.urls import psycopg2_url

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent
DATA_DATABASE = "sync_assets"
DAGSTER_DATABASE = "dagster"
URL_SETTINGS = ("SYNC_ASSETS_DATABASE_URL", "DAGSTER_PG_URL")

# The project's dagster.yaml has every instance setting but storage, so that `dg`/`dagster` commands
# run in the project directory with nothing set (they read ./dagster.yaml on a temporary instance)
# work; a deployment's DAGSTER_HOME gets it with Dagster's storage in Postgres appended.
STORAGE_YAML = """
# Appended by sync-assets (sync_assets/runtime.py): Dagster's runs, events, schedules and pool slots
# in Postgres, a database separate from the synced data. Must say postgresql+psycopg2:// (SQLAlchemy
# 2.1 maps a bare postgresql:// to psycopg 3, which dagster-postgres cannot use). Dagster's own
# Postgres storage, keeping its connections instead of opening one per query
# (sync_assets/orchestration/instance_storage.py); configured as `storage: postgres:` is.
storage:
  custom:
    module: sync_assets.orchestration.instance_storage
    class: PooledPostgresStorage
    config:
      postgres_url:
        env: DAGSTER_PG_URL
"""


@dataclass(frozen=True)
class Runtime:
    dagster_home: Path
    embedded_postgres: bool  # an embedded server serves at least one of the two databases
    started_postgres: bool  # ... and this process started it (so it stops it when it is done)

    def stop(self) -> None:
        """Stop the embedded PostgreSQL if this process started it; one already running is left alone."""
        if self.started_postgres:
            stop_embedded_postgres(self.dagster_home / "pgdata")


def instance_yaml(project_dir: Path = PROJECT_DIR) -> str:
    """The instance configuration of a deployment: the project's dagster.yaml plus Postgres storage."""
    return (project_dir / "dagster.yaml").read_text().rstrip() + "\n" + STORAGE_YAML


def write_instance_yaml(home: Path, project_dir: Path = PROJECT_DIR) -> Path:
    target = home / "dagster.yaml"
    target.write_text(instance_yaml(project_dir))
    return target


def embedded_postgres_running(data_dir: Path) -> bool:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def prepare_environment(env: MutableMapping[str, str], project_dir: Path = PROJECT_DIR, *, dagster: bool = True) -> Runtime:
    """Fill `env` with everything `dagster dev` needs; start embedded Postgres if no URLs are set.

    - DAGSTER_HOME defaults to <project>/.dagster_home, holding the project's dagster.yaml with
      Postgres storage appended (`dagster=False`: the data database only, no Dagster home file).
    - SYNC_ASSETS_DATABASE_URL / DAGSTER_PG_URL: when either is unset, an embedded PostgreSQL
      (pgserver, data under $DAGSTER_HOME/pgdata) serves two separate databases. `Runtime.stop()`
      stops it again if this call started it.
    - URLs are normalised to postgresql+psycopg2:// (a bare postgresql:// means psycopg 3 to
      SQLAlchemy 2.1, which dagster-postgres cannot use).
    """
    home = Path(env.get("DAGSTER_HOME") or project_dir / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    env["DAGSTER_HOME"] = str(home)
    if dagster and (not (home / "dagster.yaml").exists() or home == (project_dir / ".dagster_home").resolve()):
        write_instance_yaml(home, project_dir)

    settings = URL_SETTINGS if dagster else URL_SETTINGS[:1]
    embedded = not all(env.get(name) for name in settings)
    started = False
    if embedded:
        started = not embedded_postgres_running(home / "pgdata")
        server = start_embedded_postgres(home / "pgdata")
        if not env.get("SYNC_ASSETS_DATABASE_URL"):
            env["SYNC_ASSETS_DATABASE_URL"] = ensure_database(server, DATA_DATABASE)
        if dagster and not env.get("DAGSTER_PG_URL"):
            env["DAGSTER_PG_URL"] = ensure_database(server, DAGSTER_DATABASE)
    for name in settings:
        env[name] = psycopg2_url(env[name], name)
    if dagster and env["SYNC_ASSETS_DATABASE_URL"] == env["DAGSTER_PG_URL"]:
        raise ValueError("SYNC_ASSETS_DATABASE_URL and DAGSTER_PG_URL must name different databases")
    return Runtime(home, embedded, started)
