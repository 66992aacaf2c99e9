"""Asset checks derived from the declarations (the `last_sync` check lives on the asset itself)."""


import dagster as dg

from ..datasets import Dataset
from ..warehouse import PostgresWarehouse


def build_schema_check(dataset: Dataset, asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name="schema_matches",
        description="The table has exactly the declared columns, types and primary key (catches hand edits and drift).",
        blocking=False,
    )
    def schema_matches(warehouse: PostgresWarehouse) -> dg.AssetCheckResult:
        problems = warehouse.schema_problems(dataset)
        return dg.AssetCheckResult(
            passed=not problems,
            metadata={"problems": "; ".join(problems) or "none", "primary_key": ", ".join(dataset.primary_key)},
        )

    return schema_matches
