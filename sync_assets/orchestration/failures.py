"""Why a sync failed: its failure class (declared by the error's type), reason and partition,
recorded and shown on the asset's `last_sync` check, which covers every partition: it stays failed
while any partition's newest run failed, whichever partition ran last. No secrets reach either."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator

import dagster as dg

from ..core.catalog import DATASETS_BY_KEY
from ..core.errors import FailureClass, failure_class_of
from ..warehouse import PostgresWarehouse

if TYPE_CHECKING:
    from dagster_shared.error import SerializableErrorInfo

LAST_SYNC_CHECK = "last_sync"

_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+"), "***"),  # a JWT
    (re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/=|-]+"), r"\1 ***"),
    (re.compile(r"(?i)\b(refresh_token|access_token|client_secret|password|api_key)=[^&\s]+"), r"\1=***"),
    (re.compile(r"://([^:/@\s]+):[^@/\s]+@"), r"://\1:***@"),  # a password in a URL
    (re.compile(r"\bAtz[ar]\|[\w.~+/=|-]+"), "***"),  # Login with Amazon tokens
)


def redact(message: str) -> str:
    """Defence in depth: our errors carry no secrets, but a library's might."""
    for pattern, replacement in _SECRETS:
        message = pattern.sub(replacement, message)
    return message


def error_chain(error: SerializableErrorInfo | None) -> Iterator[SerializableErrorInfo]:
    """An error and its causes/contexts, outermost first."""
    while error is not None:
        yield error
        error = error.cause or error.context


def classify_failure(errors: list[SerializableErrorInfo]) -> FailureClass:
    """The failure class of the first of our errors found down any of the chains."""
    names = [link.cls_name for error in errors for link in error_chain(error) if link.cls_name]
    return failure_class_of(names)


def run_created_at(instance: dg.DagsterInstance, run_id: str) -> datetime:
    record = instance.get_run_record_by_id(run_id)
    return record.create_timestamp if record is not None else datetime.now(timezone.utc)


def last_sync_result(warehouse: PostgresWarehouse, dataset_key: str, partition: str | None,
                     failure: tuple[str, str] | None = None) -> tuple[bool, str, dict[str, object]]:
    """(passed, description, metadata) of `last_sync` over every partition: it fails while the newest
    run of any partition failed, whichever partition ran last, and names them, oldest failure first."""
    failing = warehouse.failing_partitions(dataset_key)
    lines = [f"{key or dataset_key}: {cls}: {message[:300]}" for key, cls, message, _ in failing]
    if failure is not None:
        description = f"{failure[0]}: {failure[1][:500]}"
    elif failing:
        description = f"{partition or dataset_key} synced; still failing: " + ", ".join(k or dataset_key for k, *_ in failing)
    else:
        description = "the newest sync of every partition succeeded"
    metadata: dict[str, object] = {
        "partition": partition or "",
        "failing_partitions": len(failing),
        "failures": dg.MetadataValue.md("\n".join(f"- {line}" for line in lines) or "none"),
    }
    return not failing and failure is None, description, metadata


def build_failure_sensor() -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name="sync_failure_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records every failed sync (dataset, partition, class, reason) and marks the asset's "
        f"`{LAST_SYNC_CHECK}` check failed, so the UI shows why a dataset is red.",
    )
    def sync_failure_sensor(context: dg.RunFailureSensorContext, warehouse: PostgresWarehouse):
        run = context.dagster_run
        errors = [e.step_failure_data.error for e in context.get_step_failure_events() if e.step_failure_data.error]
        message = redact(_failure_text(context, errors))
        failure_class = classify_failure(errors).value
        partition = run.tags.get("dagster/partition")
        for key in sorted(_run_assets(context), key=lambda k: k.to_user_string()):
            dataset_key = ".".join(key.path)
            if dataset_key not in DATASETS_BY_KEY:
                continue
            warehouse.record_failure(dataset_key, partition, run.run_id, failure_class, message)
            warehouse.record_outcome(dataset_key, partition, run_created_at(context.instance, run.run_id), run.run_id,
                                     failure_class, message)
            _, description, metadata = last_sync_result(warehouse, dataset_key, partition, (failure_class, message))
            context.instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(
                    asset_key=key,
                    check_name=LAST_SYNC_CHECK,
                    passed=False,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=description,
                    metadata={**metadata, "failure_class": failure_class, "run_id": run.run_id, "reason": message[:2000]},
                )
            )
        context.log.info(f"run {run.run_id[:8]} failed ({failure_class})")

    return sync_failure_sensor


def _run_assets(context: dg.RunFailureSensorContext) -> set[dg.AssetKey]:
    """The assets the failed run was to materialize (its selection, or its planned materializations)."""
    run = context.dagster_run
    if run.asset_selection:
        return set(run.asset_selection)
    planned = context.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    return {entry.dagster_event.event_specific_data.asset_key for entry in planned if entry.dagster_event}


def _failure_text(context: dg.RunFailureSensorContext, errors: list[SerializableErrorInfo]) -> str:
    texts = [context.failure_event.message or ""]
    texts += [link.message.strip() for error in errors for link in error_chain(error)]
    return "\n".join(t for t in texts if t)
