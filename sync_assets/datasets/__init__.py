"""Dataset declarations, one module per API."""

from .base import Auth, Column, ColumnType, Dataset, Paging, Partitioning, Slices, WriteMode
from .esi import ESI_CORPORATION_DATASETS, ESI_DATASETS, ESI_PUBLIC_DATASETS, MARKET_ORDERS, MARKET_PRICES

from .esi import ESI_DOWNTIME

ALL_DATASETS = ESI_DATASETS
DOWNTIMES = {"esi": ESI_DOWNTIME}  # per API
DATASETS_BY_KEY = {d.key: d for d in ALL_DATASETS}


def dataset_for_asset_key(path: list[str] | tuple[str, ...]) -> Dataset:
    """The dataset behind an asset key such as ["esi", "market_orders"]."""
    key = ".".join(path)
    try:
        return DATASETS_BY_KEY[key]
    except KeyError:
        known = ", ".join(sorted(DATASETS_BY_KEY))
        raise KeyError(f"unknown dataset {key!r}; known datasets: {known}") from None


__all__ = [
    "ALL_DATASETS",
    "Auth",
    "Paging",
    "Slices",
    "Column",
    "ColumnType",
    "DATASETS_BY_KEY",
    "DOWNTIMES",
    "Dataset",
    "ESI_CORPORATION_DATASETS",
    "ESI_DATASETS",
    "ESI_PUBLIC_DATASETS",
    "MARKET_ORDERS",
    "MARKET_PRICES",
    "Partitioning",
    "WriteMode",
    "dataset_for_asset_key",
]
