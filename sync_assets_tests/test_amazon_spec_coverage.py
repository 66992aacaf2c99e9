"""Every field of every synced SP-API operation has a home in the warehouse: a column of its own,
or a JSONB column holding the subtree it belongs to; report datasets keep every column of the
report. Checked against Amazon's vendored models (Swagger 2.0), the ground truth for fields."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import pytest

from sync_assets.apis.amazon.datasets import AMAZON_DATASETS, ORDERS
from sync_assets.apis.amazon.sandbox import LEDGER_COLUMNS, REIMBURSEMENT_COLUMNS
from sync_assets.apis.amazon.spec import OPERATION_LIMITS
from sync_assets.core.datasets import ColumnType, Dataset
from sync_assets.core.paging import NextToken
from sync_assets.fetch.tsv import _key as header_key

from .helpers import resolve_ref

MODELS = Path(__file__).resolve().parent / "data" / "spapi"
MODEL_OF = {  # route -> model file
    "/fba/inventory/v1/summaries": "fbaInventory.json",
    "/finances/v0/financialEventGroups": "financesV0.json",
    "/finances/2024-06-19/transactions": "finances_2024-06-19.json",
    "/orders/2026-01-01/orders": "orders_2026-01-01.json",
}
# Fields deliberately not stored, and why (each dataset's description says the same).
NOT_REQUESTED = {
    ORDERS.key: {
        "buyer": "PII: includedData BUYER is not requested",
        "recipient": "PII: includedData RECIPIENT is not requested",
    },
}
REPORT_COLUMNS = {"GET_FBA_REIMBURSEMENTS_DATA": REIMBURSEMENT_COLUMNS, "GET_LEDGER_DETAIL_VIEW_DATA": LEDGER_COLUMNS}
SYNCED = [d for d in AMAZON_DATASETS if not d.derived_from]


@cache
def model(name: str) -> dict:
    return json.loads((MODELS / name).read_text())


def field_paths(spec: dict, schema: dict, prefix: str = "") -> Iterator[str]:
    """Payload paths the model declares: objects are walked, arrays are leaves."""
    schema = resolve_ref(spec, schema)
    if schema.get("type") == "object" or "properties" in schema:
        for name, sub in schema.get("properties", {}).items():
            yield from field_paths(spec, sub, f"{prefix}.{name}" if prefix else name)
        return
    yield prefix


def record_schema(spec: dict, route: str, records_path: str) -> dict:
    """The schema of one record: the 200 response walked down `records_path` to its array's items."""
    schema = resolve_ref(spec, spec["paths"][route]["get"]["responses"]["200"]["schema"])
    for part in records_path.split("."):
        schema = resolve_ref(spec, schema["properties"][part])
    assert schema.get("type") == "array", f"{route} {records_path} is not an array"
    return resolve_ref(spec, schema["items"])


@pytest.mark.parametrize("dataset", [d for d in SYNCED if d.report is None], ids=lambda d: d.key)
def test_every_model_field_has_a_column_or_a_jsonb_home(dataset: Dataset) -> None:
    spec = model(MODEL_OF[dataset.route])
    assert isinstance(dataset.paginator, NextToken) and dataset.paginator.records_path
    fields = list(field_paths(spec, record_schema(spec, dataset.route, dataset.paginator.records_path)))
    homes = {c.source or c.name: c for c in dataset.columns}
    json_homes = [path for path, c in homes.items() if c.type is ColumnType.JSON]
    skipped = NOT_REQUESTED.get(dataset.key, {})
    homeless = [path for path in fields if path not in homes and path.split(".")[0] not in skipped
                and not any(path == j or path.startswith(j + ".") for j in json_homes)]
    assert len(fields) >= 5 and homeless == []
    unknown = [path for path in homes if path not in fields and not any(f.startswith(path + ".") for f in fields)]
    assert unknown == [], f"{dataset.key}: columns read paths the model does not declare"
    for name in skipped:
        assert name in {f.split(".")[0] for f in fields} and name.lower() in dataset.description.lower()


@pytest.mark.parametrize("dataset", [d for d in SYNCED if d.report is not None], ids=lambda d: d.key)
def test_every_report_column_has_a_column(dataset: Dataset) -> None:
    assert dataset.report is not None
    stored = {header_key(c.source or c.name) for c in dataset.columns if c.name not in dataset.report.computed}
    assert {header_key(h) for h in REPORT_COLUMNS[dataset.report.report_type]} == stored


def test_declared_limits_are_the_models_usage_plans() -> None:
    """Each operation's rate and burst as its model's description states them."""
    plans = {}
    for name in ("fbaInventory.json", "financesV0.json", "finances_2024-06-19.json", "orders_2026-01-01.json",
                 "reports_2021-06-30.json"):
        for methods in model(name)["paths"].values():
            for operation in methods.values():
                if isinstance(operation, dict) and "operationId" in operation:
                    plans[operation["operationId"]] = operation.get("description", "")
    for operation, bucket in OPERATION_LIMITS.items():
        text = plans[operation].replace("\n", " ")
        assert f"| {bucket.rate:g} | {bucket.burst} |" in text.replace(".0 |", " |") or \
            f"| {bucket.rate} | {bucket.burst} |" in text, f"{operation}: {bucket} not in its model's usage plan"
    for dataset in SYNCED:
        assert dataset.report is not None or dataset.rate_limit_group in OPERATION_LIMITS, dataset.key
