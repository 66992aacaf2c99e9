"""Every response field of every synced ESI route has a home in the warehouse: a column of its
own, or a JSONB column holding the subtree it belongs to. Checked against CCP's official spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from sync_assets.apis.esi.datasets import ESI_DATASETS
from sync_assets.core.datasets import ColumnType, Dataset

from .helpers import resolve_ref

SPEC = Path(__file__).resolve().parent / "data" / "openapi-2026-08-18.yaml"


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.load(SPEC.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def field_paths(spec: dict, schema: dict, prefix: str = "") -> Iterator[str]:
    """Payload paths the spec declares: objects are walked, arrays of objects are leaves."""
    schema = resolve_ref(spec, schema)
    if schema.get("type") == "array":
        items = resolve_ref(spec, schema.get("items", {}))
        if items.get("type") == "object" and not prefix:
            yield from field_paths(spec, items)
        else:
            yield prefix or "[]"
        return
    if schema.get("type") == "object" and "properties" in schema:
        for name, sub in schema["properties"].items():
            yield from field_paths(spec, sub, f"{prefix}.{name}" if prefix else name)
        return
    yield prefix


def response_schema(spec: dict, route: str) -> dict:
    operation = spec["paths"][route]["get"]
    return resolve_ref(spec, operation["responses"]["200"])["content"]["application/json"]["schema"]


@pytest.mark.parametrize("dataset", ESI_DATASETS, ids=lambda d: d.key)
def test_every_spec_field_has_a_column_or_a_jsonb_home(spec: dict, dataset: Dataset) -> None:
    homes = {c.source or c.name: c for c in dataset.columns}
    json_homes = [path for path, c in homes.items() if c.type is ColumnType.JSON]
    homeless = [
        path for path in field_paths(spec, response_schema(spec, dataset.route))
        if path not in homes and not any(path == j or path.startswith(j + ".") for j in json_homes)
    ]
    assert homeless == [], f"{dataset.key}: spec fields without a column: {homeless}"


@pytest.mark.parametrize("dataset", ESI_DATASETS, ids=lambda d: d.key)
def test_columns_come_from_the_spec_and_required_matches(spec: dict, dataset: Dataset) -> None:
    schema = resolve_ref(spec, response_schema(spec, dataset.route))
    paths = set(field_paths(spec, schema))
    unknown = [c.name for c in dataset.columns if (c.source or c.name) not in paths]
    assert unknown == [], f"{dataset.key}: columns not in the spec: {unknown}"
    item = resolve_ref(spec, schema.get("items", {})) if schema.get("type") == "array" else schema
    required = set(item.get("required", []))
    for column in dataset.columns:
        top = (column.source or column.name).split(".")[0]
        if "." not in (column.source or "") and top in item.get("properties", {}):
            assert column.required == (top in required), f"{dataset.key}.{column.name}: required flag differs from the spec"


def test_declared_rate_limits_are_the_specs_x_rate_limit_groups(spec: dict) -> None:
    from sync_assets.apis.esi.spec import ESI, RATE_LIMIT_GROUPS, WINDOW_15M

    groups = {}
    for operations in spec["paths"].values():
        for operation in operations.values():
            limit = operation.get("x-rate-limit") if isinstance(operation, dict) else None
            if limit:
                assert limit["window-size"] == "15m"
                groups[limit["group"]] = limit["max-tokens"]
    assert RATE_LIMIT_GROUPS == groups
    assert all(ESI.limits[g].capacity == n and ESI.limits[g].window_s == WINDOW_15M for g, n in groups.items())


@pytest.mark.parametrize("dataset", ESI_DATASETS, ids=lambda d: d.key)
def test_each_dataset_spends_its_routes_rate_limit_group(spec: dict, dataset: Dataset) -> None:
    limit = spec["paths"][dataset.route]["get"].get("x-rate-limit")
    assert dataset.rate_limit_group == (limit["group"] if limit else None)
