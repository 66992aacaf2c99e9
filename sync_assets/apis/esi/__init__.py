"""EVE Online ESI: spec, datasets, SSO and its sandbox (the sandbox is not imported from here)."""

from .datasets import ESI_CORPORATION_DATASETS, ESI_DATASETS, ESI_PUBLIC_DATASETS, MARKET_ORDERS, MARKET_PRICES
from .resource import DEFAULT_ESI_URL, EsiResource

__all__ = [
    "DEFAULT_ESI_URL",
    "ESI_CORPORATION_DATASETS",
    "ESI_DATASETS",
    "ESI_PUBLIC_DATASETS",
    "MARKET_ORDERS",
    "MARKET_PRICES",
    "EsiResource",
]
