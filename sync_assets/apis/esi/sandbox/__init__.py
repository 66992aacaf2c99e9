"""Offline ESI sandbox: a deterministic stand-in for https://esi.evetech.net market routes.

>>> from sync_assets.apis.esi.sandbox import EsiSandbox, serve_in_thread
>>> sb = EsiSandbox({10000002: 3}, orders_per_page=100)
>>> with serve_in_thread(sb) as base_url:
...     ...  # GET f"{base_url}/markets/10000002/orders?order_type=all&page=1"
"""

from .esi import (
    ADMIN_ROUTES,
    COUNTER_KEYS,
    DEFAULT_CACHE_SECONDS,
    ERROR_420_TEXT,
    RATE_LIMIT_GROUPS,
    ROUTE_KINDS,
    ROUTES,
    EsiSandbox,
    SandboxConfig,
    Snapshot,
)
from .market_data import (
    DEFAULT_REGION_PAGES,
    DEFAULT_REGIONS,
    ORDER_FIELDS,
    PRICE_FIELDS,
    RANGE_VALUES,
    SMALL_REGION_PAGES,
    STATUS_FIELDS,
)
from .server import SCALES, build_default_sandbox, run, serve_in_thread

__all__ = [
    "ADMIN_ROUTES",
    "COUNTER_KEYS",
    "DEFAULT_CACHE_SECONDS",
    "DEFAULT_REGION_PAGES",
    "DEFAULT_REGIONS",
    "ERROR_420_TEXT",
    "EsiSandbox",
    "ORDER_FIELDS",
    "PRICE_FIELDS",
    "RANGE_VALUES",
    "RATE_LIMIT_GROUPS",
    "ROUTES",
    "ROUTE_KINDS",
    "SCALES",
    "SMALL_REGION_PAGES",
    "STATUS_FIELDS",
    "SandboxConfig",
    "Snapshot",
    "build_default_sandbox",
    "run",
    "serve_in_thread",
]
