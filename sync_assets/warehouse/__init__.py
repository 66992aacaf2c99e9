"""WHERE data lands: Postgres tables, the sync-state table, the IO manager, embedded Postgres."""

from .io_manager import SnapshotIOManager
from .resource import PostgresWarehouse
from ..db.transaction import DatabaseUnavailable
from .tables import SYNC_STATE, SchemaMismatch
from ..db.urls import DatabaseConfigError, psycopg2_url, redacted
from .writer import WriteResult

__all__ = [
    "SYNC_STATE",
    "DatabaseConfigError",
    "DatabaseUnavailable",
    "PostgresWarehouse",
    "SchemaMismatch",
    "SnapshotIOManager",
    "WriteResult",
    "psycopg2_url",
    "redacted",
]
