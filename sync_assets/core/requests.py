"""From a dataset and a partition to concrete requests ("slices"): one per route instance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .datasets import Dataset


@dataclass(frozen=True)
class SliceRequest:
    path: str  # the route with every placeholder filled in
    state_key: str  # sync-state key of this slice: "<partition>[/<param>=<value>...]"
    context: Mapping[str, Any] = field(default_factory=dict)  # values of the scope columns: the mirror scope
    label: str = ""  # for log lines: dataset[partition/slice]


def plan_requests(
    dataset: Dataset, partition_key: str | None, slice_values: Sequence[Mapping[str, Any]] | None = None
) -> list[SliceRequest]:
    """Every request of one materialization. `slice_values` are needed when the dataset has slices
    (static ones are taken from the declaration when not given)."""
    params: dict[str, Any] = {}
    if dataset.partitioning is not None:
        if partition_key is None:
            raise ValueError(f"{dataset.key} is partitioned by {dataset.partitioning.path_param}: a partition key is required")
        if dataset.partitioning.keys and partition_key not in dataset.partitioning.keys:
            known = ", ".join(dataset.partitioning.keys)
            raise ValueError(f"{dataset.key}: unknown partition {partition_key!r}; known: {known}")
        try:
            params[dataset.partitioning.path_param] = dataset.partitioning.value(partition_key)
        except ValueError:
            raise ValueError(f"{dataset.key}: partition key {partition_key!r} is not a valid {dataset.partitioning.path_param}") from None
    if dataset.slices is None:
        return [_request(dataset, partition_key, params, {})]
    if slice_values is None:
        slice_values = [dict(zip(dataset.slices.names, values)) for values in dataset.slices.values]
    return [_request(dataset, partition_key, params, dict(values)) for values in slice_values]


def _request(dataset: Dataset, partition_key: str | None, params: dict[str, Any], slice_params: dict[str, Any]) -> SliceRequest:
    merged = {**params, **slice_params}
    try:
        path = dataset.route.format(**merged)
    except KeyError as missing:
        raise ValueError(f"{dataset.key}: route {dataset.route} needs {missing}, which neither the partition nor a slice gives") from None
    context = {c.name: merged[c.name] for c in dataset.scope_columns if c.name in merged}
    suffix = "/".join(f"{k}={v}" for k, v in slice_params.items())
    state_key = "/".join(p for p in (partition_key or "", suffix) if p)
    label = f"{dataset.key}[{state_key}]" if state_key else dataset.key
    return SliceRequest(path=path, state_key=state_key, context=context, label=label)
