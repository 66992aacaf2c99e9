"""Connections to Postgres: URL validation, one engine pool per URL, embedded Postgres, and what a
lost database looks like. Below both fetch (shared budgets) and warehouse (tables)."""

from .transaction import DatabaseUnavailable, Transaction
from .urls import DatabaseConfigError, psycopg2_url, redacted

__all__ = ["DatabaseConfigError", "DatabaseUnavailable", "Transaction", "psycopg2_url", "redacted"]
