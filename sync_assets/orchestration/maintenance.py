"""Retention of the bookkeeping tables (failures, stale sync state, budget events)."""


import dagster as dg
from pydantic import Field

from ..warehouse import PostgresWarehouse


class RetentionConfig(dg.Config):
    keep_days: int = Field(default=30, ge=1, description="Delete failure rows and unused sync state older than this")


@dg.op(description="Trim sync_assets.sync_failures, sync state of partitions not synced for keep_days, old budget events.")
def trim_sync_history(context: dg.OpExecutionContext, config: RetentionConfig, warehouse: PostgresWarehouse) -> None:
    deleted = warehouse.trim_history(config.keep_days)
    context.log.info("retention: " + ", ".join(f"{k} {v}" for k, v in deleted.items()))


@dg.job(description="Retention of sync bookkeeping; data tables are never trimmed")
def maintenance_job() -> None:
    trim_sync_history()


maintenance_schedule = dg.ScheduleDefinition(
    job=maintenance_job, cron_schedule="17 3 * * *", execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING
)
