"""From a dataset and a partition to concrete requests ("slices"): one per route instance."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from .datasets import Dataset
from .windows import TimeWindows


@dataclass(frozen=True)
class SliceRequest:
    path: str  # the route with every placeholder filled in
    state_key: str  # sync-state key of this slice: "<partition>[/<param>=<value>...]"
    context: Mapping[str, Any] = field(default_factory=dict)  # values of the scope columns: the mirror scope
    params: Mapping[str, Any] = field(default_factory=dict)  # query parameters of this request (a time window)
    label: str = ""  # for log lines: dataset[partition/slice]
    version: str | None = None  # the slice's version in its source (Slices.version_column): kept as its cursor


def plan_requests(
    dataset: Dataset, partition_key: str | None, slice_values: Sequence[Mapping[str, Any]] | None = None,
    now: datetime | None = None,
) -> list[SliceRequest]:
    """Every request of one materialization. `slice_values` are needed when the dataset has slices
    (static ones are taken from the declaration when not given); `now` places time windows."""
    key_part, window_part = dataset.split_partition(partition_key)
    params: dict[str, Any] = {}
    if dataset.partitioning is not None:
        if partition_key is None:
            raise ValueError(f"{dataset.key} is partitioned by {dataset.partitioning.path_param}: a partition key is required")
        if dataset.partitioning.keys and key_part not in dataset.partitioning.keys:
            known = ", ".join(dataset.partitioning.keys)
            raise ValueError(f"{dataset.key}: unknown partition {partition_key!r}; known: {known}")
        try:
            params[dataset.partitioning.path_param] = dataset.partitioning.value(key_part)  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(f"{dataset.key}: partition key {partition_key!r} is not a valid {dataset.partitioning.path_param}") from None
    if dataset.windows is not None:
        return _window_requests(dataset, dataset.windows, partition_key, window_part, params, now or datetime.now(timezone.utc),
                                slice_values)
    if dataset.slices is None:
        return [_request(dataset, partition_key, params, {})]
    if slice_values is None:
        slice_values = [dict(zip(dataset.slices.names, values)) for values in dataset.slices.values]
    return [_request(dataset, partition_key, params, *_split(dataset, values)) for values in slice_values]


def _split(dataset: Dataset, values: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A slice's path values, and its version when the source gives one."""
    names = dataset.slices.names if dataset.slices else ()
    column = dataset.slices.version_column if dataset.slices else None
    version = values.get(column) if column else None
    return {n: values[n] for n in names}, None if version is None else str(version)


def _request(dataset: Dataset, partition_key: str | None, params: dict[str, Any], slice_params: dict[str, Any],
             version: str | None = None) -> SliceRequest:
    merged = {**params, **slice_params}
    try:
        path = dataset.route.format(**merged)
    except KeyError as missing:
        raise ValueError(f"{dataset.key}: route {dataset.route} needs {missing}, which neither the partition nor a slice gives") from None
    context = {c.name: merged[c.name] for c in dataset.scope_columns if c.name in merged}
    suffix = "/".join(f"{k}={v}" for k, v in slice_params.items())
    state_key = "/".join(p for p in (partition_key or "", suffix) if p)
    label = f"{dataset.key}[{state_key}]" if state_key else dataset.key
    return SliceRequest(path=path, state_key=state_key, context=context, params=_query(dataset, merged), label=label,
                        version=version)


def _query(dataset: Dataset, values: Mapping[str, Any]) -> dict[str, Any]:
    """Fixed query parameters that name a partition or slice value ("{marketplace_id}"), filled in:
    an API that takes the scope as a query parameter rather than in the path (SP-API)."""
    templated = {name: value for name, value in dataset.query.items() if "{" in value}
    try:
        return {name: value.format(**values) for name, value in templated.items()}
    except KeyError as missing:
        raise ValueError(f"{dataset.key}: query parameter template needs {missing}, which neither the partition nor a slice gives") from None


def _window_requests(dataset: Dataset, windows: TimeWindows, partition_key: str | None, window_key: str | None,
                     base: Mapping[str, Any], now: datetime, slice_values: Sequence[Mapping[str, Any]] | None) -> list[SliceRequest]:
    """One request per span of the partition's window (none for a window that has not begun) and
    per slice. A single span keeps the partition's own state key; split windows get one per span."""
    if partition_key is None:
        raise ValueError(f"{dataset.key} is partitioned by time windows: a partition key (e.g. {windows.first}) is required")
    try:
        spans = windows.spans(window_key or "", now)
        path = {**base, **windows.path_values(window_key or "")}
    except ValueError:
        raise ValueError(f"{dataset.key}: partition key {partition_key!r} is not a date (YYYY-MM-DD)") from None
    if dataset.slices is None:
        slices: Sequence[Mapping[str, Any]] = [{}]
    elif slice_values is None:
        slices = [dict(zip(dataset.slices.names, values)) for values in dataset.slices.values]
    else:
        slices = slice_values
    requests = []
    for span in spans:
        span_key = partition_key if len(spans) == 1 else f"{partition_key}/{span}"
        for given in slices:
            values, version = _split(dataset, given) if dataset.slices else ({}, None)
            try:
                route = dataset.route.format(**path, **values)
            except KeyError as missing:
                raise ValueError(f"{dataset.key}: route {dataset.route} needs {missing}, which neither the window nor a slice gives") from None
            merged = {**path, **values}
            context = {c.name: merged[c.name] for c in dataset.scope_columns if c.name in merged}
            if windows.column:
                context[windows.column.name] = span
            suffix = "/".join(f"{k}={v}" for k, v in values.items())
            state_key = "/".join(p for p in (span_key, suffix) if p)
            params = {**windows.params(span), **_query(dataset, {**base, **merged})}
            requests.append(SliceRequest(path=route, state_key=state_key, context=context, params=params,
                                         label=f"{dataset.key}[{state_key}]", version=version))
    return requests
