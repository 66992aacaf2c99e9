"""Postgres URLs: one driver everywhere (psycopg2), clear errors naming the setting."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..core.errors import ConfigurationError

DRIVER = "postgresql+psycopg2"


class DatabaseConfigError(ConfigurationError):
    """A database URL that cannot work; the message names the setting."""


def psycopg2_url(url: str, setting: str) -> str:
    """Normalise a Postgres URL to `postgresql+psycopg2://`.

    SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which dagster-postgres cannot use;
    we pin one driver for both the data and Dagster's storage.
    """
    parsed = _parse(url, setting)
    if parsed.get_backend_name() != "postgresql":
        raise DatabaseConfigError(f"{setting} must point at PostgreSQL, got a {parsed.get_backend_name()!r} URL")
    if parsed.drivername not in ("postgresql", "postgres", DRIVER):
        raise DatabaseConfigError(f"{setting} must use the psycopg2 driver ({DRIVER}://), got {parsed.drivername}://")
    if not parsed.database:
        raise DatabaseConfigError(f"{setting} names no database (…/<database> at the end of the URL)")
    return parsed.set(drivername=DRIVER).render_as_string(hide_password=False)


def _parse(url: str, setting: str) -> URL:
    """make_url, with every parse failure as a DatabaseConfigError naming the setting. The
    original message is dropped on purpose: it may quote a part of the URL (the password)."""
    try:
        return make_url(url)
    except ArgumentError:
        raise DatabaseConfigError(f"{setting} is not a database URL (expected postgresql+psycopg2://user@host/db)") from None
    except (ValueError, TypeError) as exc:  # SQLAlchemy parses the port with int()
        problem = "its port is not a number" if "int()" in str(exc) else "it cannot be parsed"
        raise DatabaseConfigError(
            f"{setting} is not a valid database URL: {problem} (expected postgresql+psycopg2://user@host:5432/db)"
        ) from None


def redacted(url: str) -> str:
    """The URL with its password masked, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):  # e.g. a non-numeric port: int() fails inside make_url
        return "<unparseable URL>"


def with_database(url: str, database: str) -> str:
    parsed: URL = make_url(url)
    return parsed.set(database=database).render_as_string(hide_password=False)
