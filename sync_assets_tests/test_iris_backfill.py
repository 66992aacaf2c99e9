"""IRIS history under a real `dagster dev`: a backfill of every monthly partition since April 2024,
launched through GraphQL's `launchPartitionBackfill` as the UI's "Materialize → all partitions"
does. One merchant always fails: its months fail (and only those), the merchant is recorded, the
other months complete; after the fault clears, re-running the failed months recovers them exactly.

The deployment's own automation (the expiry sensor, which syncs every month of every dataset never
synced, and the schedules) is stored stopped before `dagster dev` starts, as `dagster sensor stop`
does: the runs here are the merchants' and the backfill's (a stop through GraphQL would come after
the sensor's first tick had queued a first sync of every dataset: over a hundred runs queued
ahead of the backfill's). The run-failure sensor keeps running; it launches nothing."""

from __future__ import annotations

import os
from datetime import date
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text

from sync_assets.apis.iris.sandbox.app import IrisSandbox
from sync_assets.apis.sandbox_serving import serve_in_thread
from sync_assets.runtime import write_instance_yaml

from .helpers import dagster_dev, stop_automation
from .conftest import create_database, drop_database
from .test_automation_daemon import FINISHED, Deployment, _tags

pytestmark = pytest.mark.slow  # over a minute on 2 cores: scheduled first (conftest)

KEY = "iris_backfill_7c1d-key"
TODAY = date(2026, 11, 20)

BACKFILL = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } ... on UnauthorizedError { message } } }
"""
BACKFILL_STATUS = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { id status } } }
"""
INSTIGATORS = """{ repositoryOrError(repositorySelector: {repositoryLocationName: "sync_assets", repositoryName: "__repository__"}) {
  ... on Repository { sensors { name sensorState { status } } schedules { name scheduleState { status } } } } }"""
KEPT = {"sync_failure_sensor"}  # the automation left running
PARTITIONS = """
{ assetNodeOrError(assetKey: {path: ["iris", "transactions"]}) { ... on AssetNode { partitionKeys } } }
"""


@pytest.fixture(scope="module")
def deployment(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("iris_daemon") / "dagster_home"
    home.mkdir()
    write_instance_yaml(home)
    data_url, dagster_url = create_database(pg_server_url, "data"), create_database(pg_server_url, "dagster")
    sandbox = IrisSandbox(api_keys={"team": KEY}, merchants=6, today=TODAY)
    log = home.parent / "dagster.log"
    with serve_in_thread(sandbox) as iris_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_ASSETS_", "DAGSTER_", "ESI_", "IRIS_"))}
        env.update(DAGSTER_HOME=str(home), DAGSTER_PG_URL=dagster_url, SYNC_ASSETS_DATABASE_URL=data_url,
                   SYNC_ASSETS_APIS="iris", SYNC_ASSETS_IRIS_URL=f"{iris_url}/api/v1", IRIS_API_KEY=KEY,
                   # a merchant that always fails costs every retry of every round: few and short ones here
                   SYNC_ASSETS_IRIS__MAX_ATTEMPTS="2", SYNC_ASSETS_IRIS__BACKOFF_MAX_S="0.2",
                   SYNC_ASSETS_IRIS__RETRY_ROUND_PAUSE_S="0")
        stopped = stop_automation(env, keep=KEPT)
        assert "iris_expiry_sensor" in stopped and "sync_iris_transactions_schedule" in stopped, stopped
        with dagster_dev(env, log) as url:
            deployment = Deployment(url, data_url, sandbox, log)  # type: ignore[arg-type]
            repo = deployment.wait(lambda: (r := deployment.graphql(INSTIGATORS)["repositoryOrError"]).get("sensors") and r,
                                   "the code location", 120)
            states = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
            states |= {s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]}
            assert all(status == "STOPPED" for name, status in states.items() if name not in KEPT), states
            yield deployment
    assert KEY not in log.read_text()  # the key never reached dagster dev's output
    drop_database(pg_server_url, data_url)
    drop_database(pg_server_url, dagster_url)


def _backfill(deployment: Deployment, partitions: list[str]) -> list[dict]:
    """Launch a backfill of iris/transactions as the UI does and wait until it has settled."""
    params = {"assetSelection": [{"path": ["iris", "transactions"]}], "partitionNames": partitions}
    launched = deployment.graphql(BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def settled() -> list[dict] | None:
        status = deployment.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"]
        runs = [r for r in deployment.runs() if _tags(r).get("dagster/backfill") == backfill_id]
        done = status != "REQUESTED" and runs and all(r["status"] in FINISHED for r in runs)
        return runs if done else None

    return deployment.wait(settled, f"backfill {backfill_id}", 900)


@pytest.mark.timeout(1500)
def test_a_backfill_of_every_month_completes_and_a_failing_merchant_is_recovered(deployment: Deployment) -> None:
    sandbox: IrisSandbox = deployment.sandbox  # type: ignore[assignment]
    world = sandbox.world
    engine = create_engine(deployment.data_url)
    try:
        merchants = _launch_merchants(deployment)
        partitions = deployment.graphql(PARTITIONS)["assetNodeOrError"]["partitionKeys"]
        assert partitions[0] == "2024-04-01" and len(partitions) >= 32  # every month since April 2024
        # the merchant active in the fewest months
        active = {m: {p for p in partitions if world.transactions_for(m, *_year_month(p))} for m in merchants}
        broken = min((m for m in merchants if active[m]), key=lambda m: len(active[m]))
        sandbox.set_failing_merchants([broken])
        runs = _backfill(deployment, partitions)
        status = {_tags(r)["dagster/partition"]: r["status"] for r in runs}
        assert set(status) == set(partitions)  # one run per month, every month launched
        broken_months = {p for p in partitions if world.transactions_for(broken, *_year_month(p))}
        assert broken_months and {p for p, s in status.items() if s == "FAILURE"} == broken_months
        with engine.connect() as conn:
            items = conn.execute(text("SELECT partition_key, item FROM sync_assets.failed_items")).all()
            assert {p for p, _ in items} == broken_months and all(i.endswith(f"mid={broken}") for _, i in items)
            stored = conn.execute(text("SELECT DISTINCT mid FROM iris.transactions")).scalars().all()
        assert broken not in stored and set(stored) == {m for m in merchants if m != broken and world.batches_between(m)[0]}

        sandbox.set_failing_merchants([])
        with engine.begin() as conn:  # the backoff has passed
            conn.execute(text("UPDATE sync_assets.failed_items SET retry_at = now() - interval '1 second'"))
        again = _backfill(deployment, sorted(broken_months))  # the UI's "re-execute failed"
        assert all(r["status"] == "SUCCESS" for r in again)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM sync_assets.failed_items")).scalar() == 0
            stored_ids = set(conn.execute(text("SELECT id FROM iris.transactions")).scalars())
        want = {t["id"] for m in merchants for p in partitions for t in world.transactions_for(m, *_year_month(p))}
        assert stored_ids == want
    finally:
        engine.dispose()


def _launch_merchants(deployment: Deployment) -> list[str]:
    """The merchants first (the transactions' slices come from their table): the asset page's Materialize."""
    params = {"selector": {"repositoryLocationName": "sync_assets", "repositoryName": "__repository__",
                           "jobName": "__ASSET_JOB", "assetSelection": [{"path": ["iris", "merchants"]}]}, "mode": "default"}
    from .test_automation_daemon import LAUNCH

    launched = deployment.graphql(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    assert deployment.wait(lambda: (r := deployment.run(run_id))["status"] in FINISHED and r, "the merchants")["status"] == "SUCCESS"
    return [m["mid"] for m in deployment.sandbox.world.merchant_list()]  # type: ignore[attr-defined]


def _year_month(partition: str) -> tuple[int, int]:
    return int(partition[:4]), int(partition[5:7])
