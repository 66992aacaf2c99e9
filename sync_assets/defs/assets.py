"""Assets derived from dataset declarations: one factory, no per-dataset code."""


from typing import Any

import dagster as dg
from pydantic import Field

from ..api import EsiResource, Snapshot
from ..datasets import Column, Dataset
from ..warehouse import PostgresWarehouse

IO_MANAGER_KEY = "warehouse_io_manager"


class SyncConfig(dg.Config):
    """Run config of every sync asset."""

    full_refresh: bool = Field(
        default=False,
        description="Ignore stored ETags and Expires and fetch every page unconditionally (repairs a stale cache).",
    )


def build_sync_asset(dataset: Dataset, resource_key: str) -> dg.AssetsDefinition:
    warn, fail = dataset.freshness_windows
    partitions = dg.StaticPartitionsDefinition(list(dataset.partitioning.keys)) if dataset.partitioning else None

    @dg.asset(
        name=dataset.name,
        key_prefix=[dataset.api],
        group_name=dataset.asset_group,
        description=_description(dataset),
        partitions_def=partitions,
        io_manager_key=IO_MANAGER_KEY,
        kinds={"postgres", "python"},
        pool=dataset.api,
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=fail, warn_window=warn),
        metadata={
            "dagster/column_schema": table_schema(dataset),
            "dagster/table_name": f"{dataset.api}.{dataset.name}",
            "route": dataset.route,
            "write_mode": dataset.write_mode.value,
            "cache_seconds": dataset.cache_seconds,
        },
        required_resource_keys={resource_key, "warehouse"},
    )
    def sync(context: dg.AssetExecutionContext, config: SyncConfig) -> dg.MaterializeResult:
        partition_key = context.partition_key if dataset.partitioning else None
        warehouse: PostgresWarehouse = getattr(context.resources, "warehouse")
        api: EsiResource = getattr(context.resources, resource_key)
        previous = warehouse.read_validators(dataset, partition_key)
        snapshot = api.fetch_snapshot(dataset, partition_key, previous, full_refresh=config.full_refresh, log=context.log)
        return dg.MaterializeResult(
            value=snapshot,
            metadata=fetch_metadata(snapshot),
            data_version=dg.DataVersion(snapshot.data_version),
        )

    return sync


def fetch_metadata(snapshot: Snapshot) -> dict[str, Any]:
    """Numeric metadata (so the UI plots it) describing what the fetch did."""
    stats, v = snapshot.stats, snapshot.validators
    metadata: dict[str, Any] = {
        "outcome": snapshot.outcome.value,
        "pages": stats.pages,
        "requests": stats.requests,
        "status_200": stats.status_200,
        "status_304": stats.status_304,
        "bytes_received": stats.body_bytes,
        "retries": stats.retries,
        "page_walks": stats.walks,
        "fetch_seconds": round(stats.duration_s, 3),
        "data_version": snapshot.data_version,
    }
    if v.expires_at:
        metadata["expires_at"] = dg.MetadataValue.timestamp(v.expires_at)
    if v.last_modified:
        metadata["last_modified"] = dg.MetadataValue.timestamp(v.last_modified)
    return metadata


def table_schema(dataset: Dataset) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.postgres_type,
                description=c.description or None,
                constraints=dg.TableColumnConstraints(nullable=_nullable(dataset, c), unique=dataset.primary_key == (c.name,)),
            )
            for c in dataset.table_columns
        ],
        constraints=dg.TableConstraints(other=[f"primary key ({', '.join(dataset.primary_key)})"]),
    )


def _nullable(dataset: Dataset, column: Column) -> bool:
    return not (column.required or column.name in dataset.primary_key)


def _description(dataset: Dataset) -> str:
    lines = [
        dataset.description,
        "",
        f"Source: `GET {dataset.route}`" + (f" with `{_query(dataset)}`" if dataset.query else ""),
        f"Table: `{dataset.api}.{dataset.name}` ({dataset.write_mode.value}, key {', '.join(dataset.primary_key)}).",
        f"API cache: {dataset.cache_seconds} s; schedule `{dataset.schedule_cron}` (UTC).",
    ]
    if dataset.partitioning and dataset.partitioning.labels:
        lines.append("Partitions: " + ", ".join(f"{k} {v}" for k, v in dataset.partitioning.labels.items()) + ".")
    return "\n".join(lines)


def _query(dataset: Dataset) -> str:
    return "&".join(f"{k}={v}" for k, v in dataset.query.items())


__all__ = ["IO_MANAGER_KEY", "SyncConfig", "build_sync_asset", "fetch_metadata", "table_schema"]
