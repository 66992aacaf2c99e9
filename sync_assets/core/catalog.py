"""Every declared dataset, by key: each API's declarations register here when imported.

The warehouse (which must not import the API packages) finds a dataset for an asset key here.
"""

from __future__ import annotations

from typing import Iterable

from .datasets import Dataset

DATASETS_BY_KEY: dict[str, Dataset] = {}


def register(datasets: Iterable[Dataset]) -> None:
    for dataset in datasets:
        known = DATASETS_BY_KEY.get(dataset.key)
        if known is not None and known is not dataset and known != dataset:
            raise ValueError(f"dataset {dataset.key} is declared twice, differently")
        DATASETS_BY_KEY[dataset.key] = dataset


def dataset_for_asset_key(path: list[str] | tuple[str, ...]) -> Dataset:
    """The dataset behind an asset key such as ["esi", "market_orders"]."""
    key = ".".join(path)
    try:
        return DATASETS_BY_KEY[key]
    except KeyError:
        known = ", ".join(sorted(DATASETS_BY_KEY))
        raise KeyError(f"unknown dataset {key!r}; known datasets: {known}") from None
