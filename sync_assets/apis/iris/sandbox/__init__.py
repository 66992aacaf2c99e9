"""Offline IRIS CRM simulator over real HTTP: the sandbox for demos, tests and benchmarks.

>>> from sync_assets.apis.iris.sandbox import IrisSandbox, serve_in_thread
>>> sb = IrisSandbox(merchants=20, api_keys={"sync": "k"})
>>> with serve_in_thread(sb) as base_url:
...     ...  # GET f"{base_url}/api/v1/merchants?per_page=1000" with X-API-KEY: k
"""

from .app import ADMIN_ROUTES, DEFAULT_API_KEY, INJECTED_ERRORS, IrisConfig, IrisSandbox, KeyCounters
from .data import (
    DATA_START,
    DEFAULT_MERCHANTS,
    DEFAULT_TIMEZONE,
    GROUPS,
    PROCESSORS,
    USERS,
    IrisWorld,
    Merchant,
    ReportState,
    iso,
    us_date,
)
from .routes import PER_PAGE, ROUTE_NAMES, ROUTES
from ...sandbox_serving import serve_in_thread


def __getattr__(name: str) -> object:
    """``run``/``main`` load :mod:`.server` on first use, so ``python -m ...sandbox.server`` runs it once."""
    if name in ("run", "main"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ADMIN_ROUTES",
    "DATA_START",
    "DEFAULT_API_KEY",
    "DEFAULT_MERCHANTS",
    "DEFAULT_TIMEZONE",
    "GROUPS",
    "INJECTED_ERRORS",
    "PER_PAGE",
    "PROCESSORS",
    "ROUTES",
    "ROUTE_NAMES",
    "USERS",
    "IrisConfig",
    "IrisSandbox",
    "IrisWorld",
    "KeyCounters",
    "Merchant",
    "ReportState",
    "iso",
    "main",
    "run",
    "serve_in_thread",
    "us_date",
]
