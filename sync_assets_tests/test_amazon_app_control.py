"""An application drives Amazon sellers' syncs through Dagster's own API, under a real `dagster dev`:
what the seller tool's sync controller did (POST /api/sync/start, GET /api/sync/status/:id, the
history, cancel) done with `dagster_graphql.DagsterGraphQLClient` and, where the client has no
method, GraphQL queries posted to /graphql. `App` below is the README's "Driving syncs from your
application", line for line.

The deployment: the SP-API sandbox over HTTP, sellers stored in the data database as
`sync-assets amazon add-seller` stores them, `dagster dev` with SYNC_ASSETS_APIS=amazon. Its
automation (the expiry sensor, which syncs every month of history of a new seller at once, and the
amazon schedules) is stopped through GraphQL as from the UI's Automation page, so the runs here are
the application's; the `amazon_sellers_sensor` keeps running. One seller gets its partition from
that sensor, the other from the application (GraphQL `addDynamicPartition`, right after storing
it). Every number read from Dagster is compared with PostgreSQL and with the sandbox's world.

A cancel is tested mid-walk (each SP-API answer delayed): the run ends CANCELED with nothing written.
The seller's marketplace walks run in worker threads; the interrupt stops them at their next request
or wait (`_fetch_slices`), it does not wait for them to finish."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import httpx
import pytest
from cryptography.fernet import Fernet
from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient
from sqlalchemy import create_engine, text

from sync_assets.apis.amazon.auth import AmazonAuthResource
from sync_assets.apis.amazon.sandbox import AmazonSandbox, serve_in_thread
from sync_assets.runtime import write_instance_yaml

from .conftest import create_database, drop_database
from .helpers import dagster_dev

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Using variable_values:DeprecationWarning")]  # gql, inside the client

SPEED = dict(rate_scale=2000.0, report_queue_seconds=0.05, report_processing_seconds=0.1)
REPOSITORY = {"repositoryLocationName": "sync_assets", "repositoryName": "__repository__"}
LATENCY_S = 5.0  # of every SP-API answer while a run is cancelled
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


# ---------------------------------------------------------------- the application (README snippets)

ADD_PARTITION = """
mutation($repo: RepositorySelector!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: "amazon_sellers", partitionKey: $key) {
    __typename ... on PythonError { message } ... on UnauthorizedError { message } } }
"""
RUN_MATERIALIZATIONS = """
query($runId: ID!) { runOrError(runId: $runId) { ... on Run {
  assetMaterializations { assetKey { path } partition
    metadataEntries { label ... on IntMetadataEntry { intRepr } ... on TextMetadataEntry { text } } } } } }
"""
RUN_HISTORY = """
query($filter: RunsFilter!) { runsOrError(filter: $filter, limit: 20) { ... on Runs {
  results { runId status startTime endTime tags { key value } } } } }
"""


class App:
    """The application's side: nothing but Dagster's client and its GraphQL endpoint."""

    def __init__(self, host: str, port: int) -> None:
        self.client = DagsterGraphQLClient(host, port_number=port)
        self.graphql_url = f"http://{host}:{port}/graphql"

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(self.graphql_url, json={"query": query, "variables": variables or {}}, timeout=60)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        return body["data"]

    def add_seller_partition(self, seller_id: str) -> None:
        """The seller's partition now, not at the amazon_sellers_sensor's next tick (at most a minute)."""
        added = self.graphql(ADD_PARTITION, {"repo": REPOSITORY, "key": seller_id})["addDynamicPartition"]
        if added["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
            raise RuntimeError(added)

    def start(self, dataset: str, partition: str) -> str:
        """POST /api/sync/start: a run of the dataset's sync job for one partition: a seller id, or for
        the monthly datasets "<seller_id>|<YYYY-MM-01>". The asset selection gives the run its slot
        (sync_assets/slot): a second start of the same partition waits QUEUED until the first ends."""
        return self.client.submit_job_execution(f"sync_amazon_{dataset}", tags={"dagster/partition": partition},
                                                asset_selection=[["amazon", dataset]])

    def status(self, run_id: str) -> DagsterRunStatus:
        """GET /api/sync/status/:id: QUEUED, STARTING, STARTED, then SUCCESS, FAILURE or CANCELED."""
        return self.client.get_run_status(run_id)

    def row_counts(self, run_id: str) -> dict[str, dict[str, str]]:
        """What the run wrote, per asset: rows_inserted/updated/deleted, dagster/partition_row_count
        (the seller's rows), dagster/row_count (the whole table), dagster/table_name."""
        run = self.graphql(RUN_MATERIALIZATIONS, {"runId": run_id})["runOrError"]
        return {"/".join(m["assetKey"]["path"]): {"partition": m["partition"]} | {
                e["label"]: e.get("intRepr", e.get("text")) for e in m["metadataEntries"]} for m in run["assetMaterializations"]}

    def history(self, dataset: str, partition: str) -> list[dict]:
        """A partition's runs of a dataset, newest first, whoever launched them (the app, the
        automation, the UI): every sync run carries its slot tag."""
        runs_filter = {"tags": [{"key": "sync_assets/slot", "value": f"amazon.{dataset}[{partition}]"}]}
        return self.graphql(RUN_HISTORY, {"filter": runs_filter})["runsOrError"]["results"]

    def cancel(self, run_id: str) -> None:
        """The run's process is interrupted; the run ends CANCELED and writes nothing."""
        self.client.terminate_run(run_id)


# ---------------------------------------------------------------- the deployment


class Deployment:
    def __init__(self, app: App, sandbox: AmazonSandbox, auth: AmazonAuthResource, data_url: str, log: Path) -> None:
        self.app, self.sb, self.world, self.auth, self.data_url, self.log = app, sandbox, sandbox.world, auth, data_url, log
        self.engine = create_engine(data_url)

    def store_seller(self, seller_id: str) -> None:
        """What `sync-assets amazon add-seller` (or the app's OAuth callback) stores after a grant."""
        self.auth.add_seller(seller_id, self.sb.refresh_tokens[seller_id], "na", self.world.seller(seller_id).marketplaces)

    def wait(self, condition, what: str, timeout_s: float = 120):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if value := condition():
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; dagster dev's log tail:\n{self.log.read_text()[-3000:]}")

    def finished(self, run_id: str, timeout_s: float = 120) -> DagsterRunStatus:
        return self.wait(lambda: (s := self.app.status(run_id)) in FINISHED and s, f"run {run_id}", timeout_s)

    def partitions(self) -> set[str]:
        query = '{ assetNodeOrError(assetKey: {path: ["amazon", "inventory_summaries"]}) { ... on AssetNode { partitionKeys } } }'
        return set(self.app.graphql(query)["assetNodeOrError"]["partitionKeys"])

    def sql(self, query: str, **params) -> list:
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query), params)]

    def orders_fingerprint(self, seller_id: str) -> list:
        return self.sql("SELECT order_id, last_updated_time::text, grand_total::text FROM amazon.orders "
                        "WHERE seller_id = :s ORDER BY order_id", s=seller_id)

    def count(self, table: str, seller_id: str | None = None) -> int:
        with self.engine.connect() as conn:
            if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
                return 0
            where, params = (" WHERE seller_id = :s", {"s": seller_id}) if seller_id else ("", {})
            return conn.execute(text(f"SELECT count(*) FROM {table}{where}"), params).scalar()

    def sync_states(self, dataset: str, seller_id: str) -> list[str]:
        with self.engine.connect() as conn:
            if conn.execute(text("SELECT to_regclass('sync_assets.sync_state')")).scalar() is None:
                return []
            return list(conn.execute(text("SELECT s::text FROM sync_assets.sync_state s WHERE dataset = :d "
                                          "AND partition_key LIKE :p ORDER BY partition_key"),
                                     {"d": f"amazon.{dataset}", "p": f"{seller_id}%"}).scalars())


INSTIGATORS = """query($repo: RepositorySelector!) { repositoryOrError(repositorySelector: $repo) { ... on Repository {
  sensors { name sensorState { id status ticks(limit: 1) { status } } } schedules { name scheduleState { id status } } } } }"""


def _pause_automation(deployment: Deployment) -> None:
    """Stop the amazon expiry sensor and schedules, as the UI's toggles do. The sensor is stopped after
    its first tick (no partition yet: it launched nothing): a stop that lands while the daemon is
    evaluating a never-ticked sensor is overwritten by that tick's state."""
    app = deployment.app

    def instigators() -> dict:
        return app.graphql(INSTIGATORS, {"repo": REPOSITORY})["repositoryOrError"]

    def expiry_sensor() -> dict:
        return next(s for s in instigators()["sensors"] if s["name"] == "amazon_expiry_sensor")

    def ticked() -> dict | None:
        state = expiry_sensor()["sensorState"]
        return state if state["ticks"] and state["ticks"][0]["status"] != "STARTED" else None

    state = deployment.wait(ticked, "the expiry sensor's first tick")
    assert state["ticks"][0]["status"] == "SKIPPED", state
    stopped = app.graphql("mutation($id: String!) { stopSensor(id: $id) { __typename } }", {"id": state["id"]})
    assert stopped["stopSensor"]["__typename"] == "StopSensorMutationResult", stopped
    for schedule in instigators()["schedules"]:
        if schedule["name"].startswith("sync_amazon_") and schedule["scheduleState"]["status"] == "RUNNING":
            stopped = app.graphql("mutation($id: String!) { stopRunningSchedule(id: $id) { __typename } }",
                                  {"id": schedule["scheduleState"]["id"]})
            assert stopped["stopRunningSchedule"]["__typename"] == "ScheduleStateResult", stopped
    now = instigators()
    assert expiry_sensor()["sensorState"]["status"] == "STOPPED"
    assert all(s["scheduleState"]["status"] == "STOPPED" for s in now["schedules"] if s["name"].startswith("sync_amazon_"))


@pytest.fixture(scope="module")
def deployment(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("amazon_app") / "dagster_home"
    home.mkdir()
    write_instance_yaml(home)  # the project's dagster.yaml with Postgres storage, as `sync-assets dev` writes it
    data_url, dagster_url = create_database(pg_server_url, "data"), create_database(pg_server_url, "dagster")
    sandbox = AmazonSandbox(scale="tiny", **SPEED)
    key = Fernet.generate_key().decode()
    log = home.parent / "dagster.log"
    with serve_in_thread(sandbox) as url:
        auth = AmazonAuthResource(database_url=data_url, client_id=sandbox.client_id, client_secret=sandbox.client_secret,
                                  token_key=key, lwa_url=f"{url}/auth/o2/token", endpoint=url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_ASSETS_", "DAGSTER_", "ESI_", "IRIS_", "SP_API_"))}
        env.update(DAGSTER_HOME=str(home), DAGSTER_PG_URL=dagster_url, SYNC_ASSETS_DATABASE_URL=data_url,
                   SYNC_ASSETS_APIS="amazon", SYNC_ASSETS_AMAZON_URL=url, SP_API_LWA_URL=f"{url}/auth/o2/token",
                   SP_API_CLIENT_ID=sandbox.client_id, SP_API_CLIENT_SECRET=sandbox.client_secret, SYNC_ASSETS_TOKEN_KEY=key)
        with dagster_dev(env, log) as webserver:
            parsed = urlparse(webserver)
            app = Deployment(App(parsed.hostname or "127.0.0.1", parsed.port or 80), sandbox, auth, data_url, log)
            try:
                _pause_automation(app)
                # the first seller is stored now: the amazon_sellers_sensor adds its partition at its next tick
                app.store_seller(sandbox.seller_ids[0])
                yield app
            finally:
                app.engine.dispose()
    output = log.read_text()
    assert all(secret not in output for secret in (key, sandbox.client_secret, *sandbox.refresh_tokens.values()))
    drop_database(pg_server_url, data_url)
    drop_database(pg_server_url, dagster_url)


# ---------------------------------------------------------------- the tests


def test_start_status_row_counts_and_history_of_a_seller_just_connected(deployment: Deployment) -> None:
    app, seller = deployment.app, deployment.world.seller_ids[1]  # the US + CA seller
    deployment.store_seller(seller)
    app.add_seller_partition(seller)  # at once (the sensor would add it within a minute)
    assert seller in deployment.partitions()

    run_id = app.start("inventory_summaries", seller)
    twice = app.start("inventory_summaries", seller)  # a second click: held until the first run ends
    seen = set()
    while True:
        second = app.status(twice)
        if (status := app.status(run_id)) in FINISHED:
            break
        assert second == DagsterRunStatus.QUEUED  # read while the first run was not finished
        seen.add(status)
        time.sleep(0.2)
    assert status == DagsterRunStatus.SUCCESS, deployment.log.read_text()[-3000:]
    assert seen <= {DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED}

    counts = app.row_counts(run_id)["amazon/inventory_summaries"]
    data = deployment.world.seller(seller)
    want = sum(len(data.inventory[mp]) for mp in data.marketplaces)
    table = counts["dagster/table_name"].split(".", 1)[1]  # database.schema.table
    assert want == 15 and int(counts["dagster/partition_row_count"]) == want == deployment.count(table, seller)
    assert int(counts["dagster/row_count"]) == deployment.count(table)
    assert int(counts["rows_inserted"]) == want and int(counts["rows_deleted"]) == 0  # a first sync

    assert deployment.finished(twice) == DagsterRunStatus.SUCCESS
    assert int(app.row_counts(twice)["amazon/inventory_summaries"]["dagster/partition_row_count"]) == want
    second, first = app.history("inventory_summaries", seller)  # newest first
    assert (first["runId"], first["status"], second["runId"], second["status"]) == (run_id, "SUCCESS", twice, "SUCCESS")
    assert second["startTime"] >= first["endTime"]  # one run per seller and dataset at a time
    for run in (first, second):
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags["sync_assets/slot"] == f"amazon.inventory_summaries[{seller}]", tags
        assert tags["sync_assets/dataset"] == "amazon.inventory_summaries" and tags["dagster/max_runtime"].isdigit()


def test_a_month_of_a_seller(deployment: Deployment) -> None:
    app, sb, seller = deployment.app, deployment.sb, deployment.world.seller_ids[1]
    now = sb.now_datetime()
    year, month = divmod(now.year * 12 + now.month - 1 - 9, 12)  # nine months ago: not re-read with the latest months
    window = f"{year}-{month + 1:02d}-01"
    run_id = app.start("financial_event_groups", f"{seller}|{window}")  # seller_id|window: the multi-partition key
    assert deployment.finished(run_id) == DagsterRunStatus.SUCCESS
    counts = app.row_counts(run_id)["amazon/financial_event_groups"]
    want = {g["FinancialEventGroupId"] for g in deployment.world.event_groups(seller)
            if g["FinancialEventGroupStart"].startswith(window[:7])}
    stored = {row[0] for row in deployment.sql("SELECT financial_event_group_id FROM amazon.financial_event_groups "
                                                "WHERE seller_id = :s", s=seller)}
    assert counts["partition"] == f"{seller}|{window}" and len(want) >= 2 and stored == want
    assert int(counts["rows_inserted"]) == len(want)
    assert [(r["runId"], r["status"]) for r in app.history("financial_event_groups", f"{seller}|{window}")] == [(run_id, "SUCCESS")]


def test_a_sync_cancelled_mid_walk_writes_nothing_and_the_next_one_completes(deployment: Deployment) -> None:
    app, sb, seller = deployment.app, deployment.sb, deployment.world.seller_ids[1]  # two marketplaces: two walks
    first = app.start("orders", seller)
    assert deployment.finished(first) == DagsterRunStatus.SUCCESS
    # Amazon changes an order: a finished walk would write it
    order = deployment.world.seller(seller).orders[0]
    with deployment.world.lock:
        order["lastUpdatedTime"] = (sb.now_datetime() - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        order["proceeds"]["grandTotal"]["amount"] = "123.45"
    before = deployment.orders_fingerprint(seller), deployment.sync_states("orders", seller)
    requests = sb.requests(seller, "searchOrders")
    sb.configure(latency=LATENCY_S)  # every SP-API answer takes that long: the run is mid-walk below
    try:
        run_id = app.start("orders", seller)
        deployment.wait(lambda: sb.requests(seller, "searchOrders") > requests, "the run's first searchOrders")
        assert app.status(run_id) == DagsterRunStatus.STARTED
        app.cancel(run_id)
        assert deployment.finished(run_id, 60) == DagsterRunStatus.CANCELED
    finally:
        sb.configure(latency=0.0)
    assert app.row_counts(run_id) == {}  # no materialization
    assert (deployment.orders_fingerprint(seller), deployment.sync_states("orders", seller)) == before  # nothing written
    assert [(r["runId"], r["status"]) for r in app.history("orders", seller)] == [(run_id, "CANCELED"), (first, "SUCCESS")]

    again = app.start("orders", seller)  # the seller's orders slot is free again; the cursor is the first run's
    assert deployment.finished(again) == DagsterRunStatus.SUCCESS
    counts = app.row_counts(again)["amazon/orders"]
    want = len(deployment.world.seller(seller).orders)
    assert int(counts["dagster/partition_row_count"]) == want == deployment.count("amazon.orders", seller)
    assert int(counts["rows_inserted"]) == 0 and int(counts["rows_updated"]) >= 1
    [[total]] = deployment.sql("SELECT grand_total::text FROM amazon.orders WHERE order_id = :o", o=order["orderId"])
    assert total == "123.45"
    assert [r["status"] for r in app.history("orders", seller)] == ["SUCCESS", "CANCELED", "SUCCESS"]


def test_a_stored_seller_gets_its_partition_from_the_sensor_and_syncs(deployment: Deployment) -> None:
    app, seller = deployment.app, deployment.world.seller_ids[0]  # stored when dagster dev came up
    deployment.wait(lambda: seller in deployment.partitions(), "the amazon_sellers_sensor to add the seller", 150)
    run_id = app.start("inventory_summaries", seller)
    assert deployment.finished(run_id) == DagsterRunStatus.SUCCESS
    counts = app.row_counts(run_id)["amazon/inventory_summaries"]
    data = deployment.world.seller(seller)
    want = sum(len(data.inventory[mp]) for mp in data.marketplaces)
    assert int(counts["dagster/partition_row_count"]) == want == deployment.count("amazon.inventory_summaries", seller)
    # the whole table: both sellers' rows
    other = deployment.world.seller(deployment.world.seller_ids[1])
    assert int(counts["dagster/row_count"]) == want + sum(len(other.inventory[mp]) for mp in other.marketplaces)
    assert [r["status"] for r in app.history("inventory_summaries", seller)] == ["SUCCESS"]
