"""A spent API budget defers work instead of holding a slot while sleeping on it (issue: "a wait
never blocks others"), and `last_sync` covers every partition.

- A sliced dataset (killmail details, one request each) whose bucket runs out commits what it
  fetched, records the rest as deferred until the budget refills, and its run ends; the schedule
  leaves it alone until then and the expiry sensor relaunches it at the refill, once.
- A snapshot walk the budget cannot pay for records no materialization and changes nothing.
- `last_sync` stays failed while any partition's newest run failed, whichever partition ran last.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from functools import partial
from typing import Any, Iterator

import dagster as dg
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from sync_assets.apis.esi import EsiResource
from sync_assets.apis.esi.auth import EsiAuthResource, lookup_identity
from sync_assets.apis.esi.datasets import CORPORATION_KILLMAIL_IDS, CORPORATION_KILLMAILS, MARKET_ORDERS
from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.apis.esi.spec import ESI
from sync_assets.apis.esi.sso import tokens
from sync_assets.apis.esi.sso.crypto import TokenCipher
from sync_assets.orchestration.assets import IO_MANAGER_KEY, LAST_SYNC_CHECK, build_sync_asset
from sync_assets.orchestration.automation import DEFERRED_TAG, build_sync_job, due_partitions
from sync_assets.orchestration.failures import build_failure_sensor
from sync_assets.orchestration.sensors import EXPIRY_MARGIN_ENV, build_expiry_sensor
from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager

CORP = 98000001
FORGE, DOMAIN = "10000002", "10000043"
IDS, KILLMAILS, ORDERS = (build_sync_asset(d, ESI) for d in (CORPORATION_KILLMAIL_IDS, CORPORATION_KILLMAILS, MARKET_ORDERS))
WINDOW_S = 12  # the sandbox's killmail window: 60 killmails (2 tokens each) per 12 s
PATIENCE_S = 3.0  # max_budget_wait_s: any wait for the window is longer


class Deployment:
    def __init__(self, sandbox: EsiSandbox, url: str, database_url: str, instance: dg.DagsterInstance):
        self.sandbox, self.instance = sandbox, instance
        self.warehouse = PostgresWarehouse(database_url=database_url)
        key = Fernet.generate_key().decode()
        self.esi = EsiResource(base_url=url, budget_database_url=database_url, max_budget_wait_s=PATIENCE_S,
                               expiry_guard_s=0, backoff_initial_s=0.01, backoff_max_s=0.05)
        self.auth = EsiAuthResource(esi=self.esi, database_url=database_url, client_id=sandbox.sso.client_id,
                                    client_secret=sandbox.sso.client_secret, token_key=key, sso_url=url,
                                    sso_issuer="login.eveonline.com")
        instance.add_dynamic_partitions(CORPORATION_KILLMAILS.partitioning.dynamic, [str(CORP)])
        _, refresh_token = sandbox.add_director(CORP)
        tokens.add_refresh_token(self.warehouse.engine(), self.auth.sso(), refresh_token,
                                 lookup=partial(lookup_identity, self.esi), cipher=TokenCipher(key))

    def resources(self) -> dict[str, Any]:
        return {"esi": self.esi, "warehouse": self.warehouse, ESI.credentials_resource: self.auth,
                IO_MANAGER_KEY: SnapshotIOManager(warehouse=self.warehouse)}

    def sync(self, asset: dg.AssetsDefinition, partition: str, **kwargs: Any) -> dg.ExecuteInProcessResult:
        every = [IDS, KILLMAILS] if asset.key.path[-1].startswith("corporation") else [asset]  # the source is an input
        return dg.materialize(every, selection=[asset.key], partition_key=partition, resources=self.resources(),
                              instance=self.instance, **kwargs)

    def deferred(self) -> dict[tuple[str, str], datetime]:
        return {(d, p): t for d, p, t in self.warehouse.deferrals()}


@pytest.fixture
def deployment(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    monkeypatch.setattr("sync_assets.orchestration.guards.DOWNTIMES", {})  # not ESI's daily downtime, whatever the hour
    monkeypatch.setenv(EXPIRY_MARGIN_ENV, "1")
    sandbox = EsiSandbox(regions={int(FORGE): 10, int(DOMAIN): 2}, orders_per_page=50, n_price_types=10,
                         corporations={CORP: "small"}, rate_limit_tokens={"killmail": 120}, rate_limit_window=WINDOW_S)
    with serve_in_thread(sandbox) as url, dg.instance_for_test() as instance:
        yield Deployment(sandbox, url, database_url, instance)


def _last_sync(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == LAST_SYNC_CHECK]
    return evaluation


def test_a_spent_bucket_defers_the_rest_and_the_sensor_resumes_it_at_the_refill(deployment: Deployment) -> None:
    corp = str(CORP)
    assert deployment.sync(IDS, corp).success
    expected = {k["killmail_id"] for k in deployment.sandbox.corp_data(CORP).killmails}
    assert len(expected) > 60  # more than one window of the killmail bucket

    started = time.monotonic()
    first = deployment.sync(KILLMAILS, corp)
    assert first.success  # a deferral is not a failure...
    stored = set(deployment.warehouse.read_table(CORPORATION_KILLMAILS, [corp])["killmail_id"])
    assert stored and stored < expected  # ...what was fetched is committed, the rest is not
    key = (CORPORATION_KILLMAILS.key, corp)
    retry_at = deployment.deferred()[key]
    run = deployment.instance.get_run_by_id(first.run_id)
    assert run.tags[DEFERRED_TAG] == retry_at.isoformat(timespec="seconds")
    evaluation = _last_sync(first)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "deferred until" in evaluation.description and "killmail" in evaluation.description
    # the run did not sleep out the window: it ended once the next request was further away than its patience
    assert retry_at.timestamp() > time.time() and time.monotonic() - started < 60

    # the schedule leaves a deferred partition to the sensor; the sensor waits for the refill
    due, notes = due_partitions(CORPORATION_KILLMAILS, KILLMAILS.key, deployment.instance, deployment.warehouse,
                                datetime.now(timezone.utc))
    assert corp not in due and any("deferred until" in note for note in notes)
    tick = _sensor(deployment)
    assert not [r for r in tick().run_requests if r.job_name == "sync_esi_corporation_killmails"]
    while time.time() < retry_at.timestamp() + 0.5:
        time.sleep(0.25)
    [request] = [r for r in tick().run_requests if r.job_name == "sync_esi_corporation_killmails"]
    assert request.partition_key == corp and request.tags["sync_assets/trigger"] == "deferred"
    assert request.run_key == f"esi.corporation_killmails[{corp}]:deferred {retry_at.isoformat()}"

    for _ in range(6):  # each relaunch fetches what one window pays for
        again = deployment.sync(KILLMAILS, corp, tags=request.tags)
        assert again.success
        if key not in deployment.deferred():
            break
        while time.time() < deployment.deferred()[key].timestamp() + 0.5:
            time.sleep(0.25)
    assert set(deployment.warehouse.read_table(CORPORATION_KILLMAILS, [corp])["killmail_id"]) == expected
    assert key not in deployment.deferred() and _last_sync(again).passed
    assert sorted(deployment.sandbox.killmail_fetch_counts().values()) == [1] * len(expected)  # each fetched once


def test_a_walk_the_budget_cannot_pay_for_changes_nothing_and_records_no_materialization(deployment: Deployment) -> None:
    deployment.sandbox.configure(rate_limit_tokens={"market-order": 30})  # a 10-page walk costs 20
    assert deployment.sync(ORDERS, FORGE).success
    before = deployment.warehouse.read_table(MARKET_ORDERS, [FORGE])
    materializations = len(deployment.instance.fetch_materializations(ORDERS.key, limit=10).records)
    full = {"ops": {ORDERS.op.name: {"config": {"full_refresh": True}}}}
    deployment.sandbox.refresh("orders", int(FORGE))
    result = deployment.sync(ORDERS, FORGE, run_config=full)
    assert result.success and not result.get_asset_materialization_events()
    assert len(deployment.instance.fetch_materializations(ORDERS.key, limit=10).records) == materializations
    assert (MARKET_ORDERS.key, FORGE) in deployment.deferred()
    assert deployment.warehouse.read_table(MARKET_ORDERS, [FORGE]).equals(before)  # nothing written
    evaluation = _last_sync(result)
    assert not evaluation.passed and evaluation.description.startswith("the sync deferred until")


def test_last_sync_stays_failed_while_any_partition_is_failing(deployment: Deployment) -> None:
    failure_sensor = build_failure_sensor()

    def fail(partition: str) -> None:
        deployment.sandbox.configure(error_rate=1.0)
        esi = deployment.esi
        deployment.esi = EsiResource(base_url=esi.base_url, max_attempts=1, max_walks=1, walk_deadline_s=1,
                                     retry_round_pause_s=0, expiry_guard_s=0)
        try:
            result = deployment.sync(ORDERS, partition, raise_on_error=False, run_config={
                "ops": {ORDERS.op.name: {"config": {"full_refresh": True}}}})
        finally:
            deployment.esi = esi
            deployment.sandbox.configure(error_rate=0.0)
        assert not result.success
        instance = deployment.instance
        event = next(e for e in instance.all_logs(result.run_id)
                     if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name=failure_sensor.name, dagster_event=event.dagster_event, dagster_instance=instance,
            dagster_run=instance.get_run_by_id(result.run_id), resources={"warehouse": deployment.warehouse},
        ).for_run_failure()
        failure_sensor._run_status_sensor_fn(context, warehouse=deployment.warehouse)

    fail(DOMAIN)
    forge = deployment.sync(ORDERS, FORGE)  # another partition succeeds afterwards...
    evaluation = _last_sync(forge)
    assert not evaluation.passed  # ...and the check does not flip to green with it
    assert evaluation.metadata["failing_partitions"].value == 1 and DOMAIN in evaluation.description
    assert DOMAIN in evaluation.metadata["failures"].value and "transient" in evaluation.metadata["failures"].value
    domain = deployment.sync(ORDERS, DOMAIN)  # the failing partition recovers
    assert _last_sync(domain).passed and _last_sync(domain).metadata["failing_partitions"].value == 0
    fail(FORGE)
    with deployment.warehouse.engine().connect() as conn:
        failing = conn.execute(text("SELECT partition_key FROM sync_assets.partition_outcomes WHERE "
                                    "last_failure_at > coalesce(last_success_at, '-infinity')")).scalars().all()
    assert failing == [FORGE]


def _sensor(deployment: Deployment):
    entries = {}
    for dataset, asset in ((CORPORATION_KILLMAILS, KILLMAILS), (CORPORATION_KILLMAIL_IDS, IDS), (MARKET_ORDERS, ORDERS)):
        entries[dataset.key] = (dataset, asset, build_sync_job(dataset, asset))
    sensor = build_expiry_sensor(entries)
    repository = dg.Definitions(assets=[IDS, KILLMAILS, ORDERS], jobs=[job for *_, job in entries.values()],
                                sensors=[sensor], resources=deployment.resources()).get_repository_def()

    def tick() -> dg.SensorResult:
        # (the daemon resolves dynamic partition keys inside such a context)
        with dg.partition_loading_context(dynamic_partitions_store=deployment.instance), dg.build_sensor_context(instance=deployment.instance, repository_def=repository,
                                     resources={"warehouse": deployment.warehouse, "esi": deployment.esi}) as context:
            return sensor.evaluate_tick(context)

    return tick
