"""The data database's transactions, and what a lost database looks like to the user."""

from __future__ import annotations

import psycopg2
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from ..core.errors import WarehouseError
from .urls import redacted


class DatabaseUnavailable(WarehouseError):
    """The data database cannot be reached; nothing was written."""


class Transaction:
    """engine.begin() that reports an unreachable database clearly, without the password.

    A connection lost (or any OperationalError: server shut down, terminated backend, failed
    COPY) after the transaction began is a DatabaseUnavailable too, raised only once the
    transaction has been rolled back (or died with its connection): nothing of it is committed.
    The original error stays its __cause__."""

    def __init__(self, engine: Engine):
        self._engine = engine
        self._ctx = None

    def __enter__(self):
        try:
            self._ctx = self._engine.begin()
            return self._ctx.__enter__()
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            raise DatabaseUnavailable(f"cannot reach the data database {self._where()}: {reason}") from None

    def __exit__(self, exc_type, exc, tb):
        try:
            suppressed = self._ctx.__exit__(exc_type, exc, tb)  # rolls back on an exception, else commits
        except Exception as failure:  # the commit, or the rollback on a dead connection
            original = exc if _lost_database(exc) else failure
            if not _lost_database(original):
                raise
            raise self._unavailable(original) from original
        if _lost_database(exc):
            raise self._unavailable(exc) from exc
        return suppressed

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        orig = getattr(exc, "orig", None) or exc
        reason = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        return DatabaseUnavailable(
            f"the data database {self._where()} failed during the transaction, which was rolled back (nothing of it "
            f"was written): {reason}"
        )

    def _where(self) -> str:
        return redacted(self._engine.url.render_as_string(hide_password=False))


def _lost_database(exc: BaseException | None) -> bool:
    """An error of the database or of the connection to it (not of the statement's data)."""
    if exc is None:
        return False
    if isinstance(exc, OperationalError):  # SQLAlchemy's wrapper
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))  # the raw cursor (COPY)
