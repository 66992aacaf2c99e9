"""The IO manager: Snapshot in, one atomic write out; tables back out as DataFrames."""


import time

import dagster as dg
from ..core.lazy import pandas as pd  # imported when a run first uses it

from ..core.snapshot import Snapshot, SnapshotSet
from ..core.catalog import dataset_for_asset_key
from ..core.errors import SyncError
from .resource import PostgresWarehouse
from ..db.transaction import DatabaseUnavailable


class SliceSyncError(SyncError):
    """Some slices of a sliced dataset failed; the successful ones are committed. Raised from the
    first failure, whose type says the failure class."""

    failure_class = None


class SnapshotIOManager(dg.ConfigurableIOManager):
    """Writes each Snapshot output in ONE transaction (rows + validators); loads tables."""

    warehouse: PostgresWarehouse

    def handle_output(self, context: dg.OutputContext, obj: Snapshot | SnapshotSet) -> None:
        if not isinstance(obj, (Snapshot, SnapshotSet)):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a Snapshot, got {type(obj).__name__}")
        dataset = dataset_for_asset_key(context.asset_key.path)
        snapshots = obj.snapshots if isinstance(obj, SnapshotSet) else [obj]
        totals = {"inserted": 0, "updated": 0, "deleted": 0}
        counted = 0  # rows in the written scopes, as each committing transaction counted them
        started = time.perf_counter()
        for snapshot in snapshots:  # each in its own transaction: one slice's failure never hides another's data
            result = self.warehouse.write_snapshot(dataset, snapshot)
            label = f"{dataset.key}[{snapshot.state_key}]" if snapshot.state_key else dataset.key
            if result.skipped_reason:
                context.log.warning(f"{label}: nothing written: {result.skipped_reason}")
            context.log.info(
                f"{label}: committed: {result.inserted:,} inserted, {result.updated:,} updated, "
                f"{result.deleted:,} deleted; {result.total:,} rows ({snapshot.outcome.value})"
            )
            for name in totals:
                totals[name] += getattr(result, name)
            counted += result.total
        seconds = time.perf_counter() - started
        partitions = list(context.asset_partition_keys) if context.has_asset_partitions else None
        counts: dict[str, int] = {}
        try:
            if partitions:  # the whole table, as Dagster means it, and the partition's rows
                counts["dagster/row_count"], counts["dagster/partition_row_count"] = (
                    self.warehouse.count_table_and_partitions(dataset, partitions))
            else:
                counts["dagster/row_count"] = self.warehouse.count_rows(dataset)
        except DatabaseUnavailable as exc:
            # Everything above is committed: a database lost now (a restart right after the COMMIT)
            # must not fail a run whose data and validators are in. The committing transactions'
            # own counts stand in for the partition's.
            counts = {"dagster/partition_row_count" if partitions else "dagster/row_count": counted}
            context.log.warning(f"{dataset.key}: committed, but the row count after the commit failed ({exc}); "
                                f"reporting the {counted:,} rows counted inside the write")
        context.add_output_metadata(
            {
                "rows_inserted": totals["inserted"],
                "rows_updated": totals["updated"],
                "rows_deleted": totals["deleted"],
                "rows_written": sum(totals.values()),
                **counts,
                "dagster/table_name": self.warehouse.qualified_name(dataset),
                "write_seconds": round(seconds, 3),
            }
        )
        if isinstance(obj, SnapshotSet) and obj.failures:
            failed = "; ".join(f"{f.state_key}: {f.message}" for f in obj.failures[:5])
            if len(obj.failures) > 5:
                failed += f"; and {len(obj.failures) - 5} more (check failed_items)"
            raise SliceSyncError(
                f"{dataset.key}: {len(obj.failures)} of {len(obj.failures) + len(snapshots)} requests failed "
                f"(the others were committed): {failed}"
            ) from obj.failures[0].error

    def load_input(self, context: dg.InputContext) -> "pd.DataFrame":
        dataset = dataset_for_asset_key(context.asset_key.path)
        partitions = list(context.asset_partition_keys) if context.has_asset_partitions else None
        return self.warehouse.read_table(dataset, partitions)
