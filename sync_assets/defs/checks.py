"""Asset checks derived from the declarations (the `last_sync` check lives on the asset itself)."""


import dagster as dg

from ..core.datasets import Dataset
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


def build_row_change_check(dataset: Dataset, asset: dg.AssetsDefinition, max_delete_share: float = 0.5) -> dg.AssetChecksDefinition:
    """Mirrors only: flags a materialization that deleted an implausible share of the table (the
    write guard refuses these unless a run explicitly allowed them)."""

    @dg.asset_check(
        asset=asset,
        name="row_change_within_bounds",
        description=f"The last sync deleted at most {max_delete_share:.0%} of the rows it found.",
        blocking=False,
    )
    def row_change_within_bounds(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(asset.key)
        metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
        deleted = int(getattr(metadata.get("rows_deleted"), "value", 0) or 0)
        remaining = int(getattr(metadata.get("dagster/row_count"), "value", 0) or 0)
        before = remaining + deleted - int(getattr(metadata.get("rows_inserted"), "value", 0) or 0)
        share = deleted / before if before else 0.0
        return dg.AssetCheckResult(
            passed=share <= max_delete_share,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"rows_deleted": deleted, "rows_before": before, "deleted_share": round(share, 4)},
        )

    return row_change_within_bounds
