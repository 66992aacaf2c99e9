"""The IO manager: Snapshot in, one atomic write out; tables back out as DataFrames."""


import time

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
        label = f"{dataset.key}[{obj.partition_key}]" if obj.partition_key else dataset.key
        started = time.perf_counter()
        result = self.warehouse.write_snapshot(dataset, obj)
        seconds = time.perf_counter() - started
        if result.skipped_reason:
            context.log.warning(f"{label}: nothing written: {result.skipped_reason}")
        context.log.info(
            f"{label}: committed in {seconds:.2f}s: {result.inserted:,} inserted, {result.updated:,} updated, "
            f"{result.deleted:,} deleted; {result.total:,} rows in {result.table} ({obj.outcome.value})"
        )
        context.add_output_metadata(
            {
                "rows_inserted": result.inserted,
                "rows_updated": result.updated,
                "rows_deleted": result.deleted,
                "rows_written": result.inserted + result.updated + result.deleted,
                "dagster/row_count": result.total,
                "dagster/table_name": f"{dataset.api}.{dataset.name}",
                "write_seconds": round(seconds, 3),
            }
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        dataset = dataset_for_asset_key(context.asset_key.path)
        partitions = list(context.asset_partition_keys) if context.has_asset_partitions else None
        return self.warehouse.read_table(dataset, partitions)
