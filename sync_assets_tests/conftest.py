"""Shared fixtures: a real PostgreSQL (embedded pgserver unless SYNC_ASSETS_TEST_DATABASE_URL
names a server) with a fresh database per test."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text

from sync_assets.db.embedded import start_embedded_postgres
from sync_assets.db.urls import psycopg2_url, with_database


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked `slow` (a minute or more on 2 cores: `dagster dev` scenarios, soaks) first.
    `make test` hands whole modules to its workers in this order (`--dist loadfile`, no reorder):
    the longest start at once instead of being left for the end, where one would run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: each module stays in order


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of the maintenance database of a running PostgreSQL server."""
    external = os.environ.get("SYNC_ASSETS_TEST_DATABASE_URL")
    if external:
        return psycopg2_url(external, "SYNC_ASSETS_TEST_DATABASE_URL")
    import pgserver

    data_dir = Path(tmp_path_factory.mktemp("pg")) / "data"
    data_dir.mkdir()
    server = pgserver.get_server(data_dir, cleanup_mode="stop")  # stopped when the test session ends
    return psycopg2_url(server.get_uri("postgres"), "embedded postgres")


def create_database(server_url: str, prefix: str = "t") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    from sqlalchemy.engine import make_url

    from sync_assets.db import engines as resource

    name = make_url(url).database
    for key in [k for k in resource._engines if make_url(k).database == name]:
        resource._engines.pop(key).dispose()
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture
def database_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test."""
    url = create_database(pg_server_url)
    yield url
    drop_database(pg_server_url, url)


__all__ = ["create_database", "drop_database", "start_embedded_postgres"]

