"""The IO manager: Snapshot in, one atomic write out; tables back out as DataFrames."""


import dagster as dg
import pandas as pd

from ..api.snapshot import Snapshot
from ..datasets import dataset_for_asset_key
from .resource import PostgresWarehouse


class SnapshotIOManager(dg.ConfigurableIOManager):
    """Writes each Snapshot output in ONE transaction (rows + validators); loads tables."""

    warehouse: PostgresWarehouse

    def handle_output(self, context: dg.OutputContext, obj: Snapshot) -> None:
        if not isinstance(obj, Snapshot):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a Snapshot, got {type(obj).__name__}")
        dataset = dataset_for_asset_key(context.asset_key.path)
        result = self.warehouse.write_snapshot(dataset, obj)
        if result.skipped_reason:
            context.log.warning(f"{dataset.key}: nothing written: {result.skipped_reason}")
        context.add_output_metadata(
            {
                "rows_inserted": result.inserted,
                "rows_updated": result.updated,
                "rows_deleted": result.deleted,
                "rows_written": result.inserted + result.updated + result.deleted,
                "dagster/row_count": result.total,
                "dagster/table_name": f"{dataset.api}.{dataset.name}",
            }
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        dataset = dataset_for_asset_key(context.asset_key.path)
        partitions = list(context.asset_partition_keys) if context.has_asset_partitions else None
        return self.warehouse.read_table(dataset, partitions)
