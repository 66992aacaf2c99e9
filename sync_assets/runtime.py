"""Process environment for `sync-assets dev|demo`: Dagster home, databases, API URLs."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import MutableMapping

from .db.embedded import ensure_database, start_embedded_postgres
from .db.urls import psycopg2_url

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent
DATA_DATABASE = "sync_assets"
DAGSTER_DATABASE = "dagster"
URL_SETTINGS = ("SYNC_ASSETS_DATABASE_URL", "DAGSTER_PG_URL")


@dataclass(frozen=True)
class Runtime:
    dagster_home: Path
    embedded_postgres: bool


def prepare_environment(env: MutableMapping[str, str], project_dir: Path = PROJECT_DIR) -> Runtime:
    """Fill `env` with everything `dagster dev` needs; start embedded Postgres if no URLs are set.

    - DAGSTER_HOME defaults to <project>/.dagster_home, holding the project's dagster.yaml.
    - SYNC_ASSETS_DATABASE_URL / DAGSTER_PG_URL: when either is unset, an embedded PostgreSQL
      (pgserver, data under $DAGSTER_HOME/pgdata) serves two separate databases.
    - URLs are normalised to postgresql+psycopg2:// (a bare postgresql:// means psycopg 3 to
      SQLAlchemy 2.1, which dagster-postgres cannot use).
    """
    home = Path(env.get("DAGSTER_HOME") or project_dir / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    env["DAGSTER_HOME"] = str(home)
    instance_yaml = home / "dagster.yaml"
    if not instance_yaml.exists() or home == (project_dir / ".dagster_home").resolve():
        shutil.copyfile(project_dir / "dagster.yaml", instance_yaml)

    embedded = not all(env.get(name) for name in URL_SETTINGS)
    if embedded:
        server = start_embedded_postgres(home / "pgdata")
        if not env.get("SYNC_ASSETS_DATABASE_URL"):
            env["SYNC_ASSETS_DATABASE_URL"] = ensure_database(server, DATA_DATABASE)
        if not env.get("DAGSTER_PG_URL"):
            env["DAGSTER_PG_URL"] = ensure_database(server, DAGSTER_DATABASE)
    for name in URL_SETTINGS:
        env[name] = psycopg2_url(env[name], name)
    if env["SYNC_ASSETS_DATABASE_URL"] == env["DAGSTER_PG_URL"]:
        raise ValueError("SYNC_ASSETS_DATABASE_URL and DAGSTER_PG_URL must name different databases")
    return Runtime(home, embedded)
