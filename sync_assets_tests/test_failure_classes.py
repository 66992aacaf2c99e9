"""Failure classes come from the error's type (one root, each error declares its class), never
from message text; the failure sensor reads them from the failed step's error chain."""

from __future__ import annotations

import dagster as dg
import pytest
from sqlalchemy import text

from sync_assets.apis.esi.sso.errors import InvalidClient, InvalidGrant, NoUsableToken, SsoUnavailable, TokenKeyError
from sync_assets.core.errors import (
    ApiUnreachable, BudgetExhausted, CircuitOpen, ConfigurationError, FailureClass, Forbidden, InconsistentSnapshot,
    MalformedPayload, PermanentHttpError, RateLimited, RetriesExhausted, SyncError, TransientHttpError, Unauthorized,
    failure_class_of,
)
from sync_assets.db.transaction import DatabaseUnavailable
from sync_assets.db.urls import DatabaseConfigError
from sync_assets.orchestration.failures import build_failure_sensor, redact
from sync_assets.orchestration.settings import SettingError
from sync_assets.warehouse import PostgresWarehouse, SchemaMismatch
from sync_assets.warehouse.io_manager import SliceSyncError
from sync_assets.warehouse.writer import MirrorGuardError

from .test_third_api import definitions, sync, widgets_api  # noqa: F401 (the fixture)

EXPECTED = {
    Unauthorized: FailureClass.AUTH, InvalidGrant: FailureClass.AUTH, NoUsableToken: FailureClass.AUTH,
    Forbidden: FailureClass.PERMISSION,
    RateLimited: FailureClass.BUDGET, BudgetExhausted: FailureClass.BUDGET,
    MalformedPayload: FailureClass.BAD_PAYLOAD,
    MirrorGuardError: FailureClass.GUARD,
    PermanentHttpError: FailureClass.CONFIGURATION, SettingError: FailureClass.CONFIGURATION,
    DatabaseConfigError: FailureClass.CONFIGURATION, SchemaMismatch: FailureClass.CONFIGURATION,
    TokenKeyError: FailureClass.CONFIGURATION, InvalidClient: FailureClass.CONFIGURATION, ConfigurationError: FailureClass.CONFIGURATION,
    TransientHttpError: FailureClass.TRANSIENT, ApiUnreachable: FailureClass.TRANSIENT, InconsistentSnapshot: FailureClass.TRANSIENT,
    RetriesExhausted: FailureClass.TRANSIENT, DatabaseUnavailable: FailureClass.TRANSIENT, SsoUnavailable: FailureClass.TRANSIENT,
    CircuitOpen: FailureClass.TRANSIENT,  # an outage: try again later
}


@pytest.mark.parametrize("error", list(EXPECTED), ids=lambda e: e.__name__)
def test_each_error_type_declares_its_failure_class(error: type[SyncError]) -> None:
    assert issubclass(error, SyncError)
    assert failure_class_of(["DagsterExecutionStepExecutionError", error.__name__]) is EXPECTED[error]


def test_the_first_of_our_errors_decides_and_a_slice_summary_defers_to_its_cause() -> None:
    assert failure_class_of(["SliceSyncError", "Forbidden"]) is FailureClass.PERMISSION
    assert SliceSyncError.failure_class is None
    assert failure_class_of(["KeyError"]) is FailureClass.ERROR  # not one of ours: a bug
    assert failure_class_of(["DagsterExecutionHandleOutputError", "MirrorGuardError", "DatabaseUnavailable"]) is FailureClass.GUARD


def test_a_message_that_looks_like_another_class_does_not_change_the_class() -> None:
    # text that the old regexes would have read as "auth" and "transient"
    error = MalformedPayload("page 3: field 'reason' holds 'invalid_grant: connection timeout HTTP 503'")
    assert failure_class_of([type(error).__name__]) is FailureClass.BAD_PAYLOAD


def test_redaction_removes_keys_and_tokens_a_library_might_print() -> None:
    message = redact("GET /x?api_key=abc123&page=2 Authorization: Bearer eyJa.eyJb.sig x-amz-access-token: Atza|IwEBIA-xyz")
    assert "abc123" not in message and "eyJa.eyJb.sig" not in message and "IwEBIA-xyz" not in message


def test_the_failure_sensor_records_the_class_of_a_failed_run(widgets_api, database_url: str) -> None:
    server, url = widgets_api
    instance = dg.DagsterInstance.ephemeral()
    result = sync(definitions(url, database_url, api_key="revoked-key"), "1", instance)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure = next(e for e in instance.all_logs(result.run_id)
                   if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE)
    warehouse = PostgresWarehouse(database_url=database_url)
    sensor = build_failure_sensor()
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=failure.dagster_event, dagster_instance=instance, dagster_run=run,
        resources={"warehouse": warehouse},
    ).for_run_failure()
    sensor._run_status_sensor_fn(context, warehouse=warehouse)
    with warehouse.engine().connect() as conn:
        row = conn.execute(text("SELECT dataset, partition_key, failure_class, message FROM sync_assets.sync_failures")).one()
    assert (row.dataset, row.partition_key, row.failure_class) == ("widgets.shop_widgets", "1", "auth")
    assert "HTTP 401: Unauthenticated." in row.message and "revoked-key" not in row.message
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey(["widgets", "shop_widgets"]), "last_sync")]
    )
    assert check, "the last_sync check was not marked"
