"""The automation under a real `dagster dev` (webserver + daemon: sensors, schedules, the run queue,
run monitoring) on the project's dagster.yaml with Postgres storage, against the ESI sandbox.

Runs are launched as the daemon and the UI launch them: the expiry sensor's and the schedules' run
requests (no asset selection) and GraphQL `launchRun` of a sync job with the partition's tags, as
the launchpad sends them. Nothing here creates a run with an explicit asset selection."""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

from sync_assets.apis import DOWNTIMES
from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.runtime import write_instance_yaml

from .helpers import dagster_dev
from .conftest import create_database, drop_database

pytestmark = pytest.mark.slow  # over a minute on 2 cores: scheduled first (conftest)

FORGE, DOMAIN = "10000002", "10000043"
REGIONS = {10000002: 30, 10000043: 2, 10000032: 2, 10000030: 2, 10000042: 2}
ORDERS_JOB = "sync_esi_market_orders"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


class Deployment:
    def __init__(self, url: str, data_url: str, sandbox: EsiSandbox, log: Path):
        self.url, self.data_url, self.sandbox, self.log = url, data_url, sandbox, log

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        return body["data"]

    def launch(self, partition: str, run_config: dict | None = None, extra_tags: dict[str, str] | None = None) -> str:
        """As the launchpad does: the partition's tags come from the job (its partitioned config)."""
        tags = self.graphql(PARTITION_TAGS, {"partition": partition})
        tags = tags["partitionSetOrError"]["partition"]["tagsOrError"]["results"]
        tags += [{"key": k, "value": v} for k, v in (extra_tags or {}).items()]
        params = {
            "selector": {"repositoryLocationName": "sync_assets", "repositoryName": "__repository__", "jobName": ORDERS_JOB},
            "mode": "default",
            "runConfigData": run_config or {},
            "executionMetadata": {"tags": [{"key": t["key"], "value": t["value"]} for t in tags]},
        }
        launched = self.graphql(LAUNCH, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return launched["run"]["runId"]

    def launch_asset(self, partition: str) -> str:
        """As the asset page's Materialize button does: the implicit asset job, the asset selected."""
        params = {
            "selector": {"repositoryLocationName": "sync_assets", "repositoryName": "__repository__", "jobName": "__ASSET_JOB",
                         "assetSelection": [{"path": ["esi", "market_orders"]}]},
            "mode": "default",
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        }
        launched = self.graphql(LAUNCH, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return launched["run"]["runId"]

    def runs(self) -> list[dict]:
        return self.graphql(RUNS)["runsOrError"]["results"]

    def run(self, run_id: str) -> dict:
        return self.graphql(RUN, {"id": run_id})["runOrError"]

    def wait(self, condition, what: str, timeout_s: float = 300):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}; log tail:\n{self.log.read_text()[-3000:]}")

    def sql(self, query: str, **params) -> list:
        engine = create_engine(self.data_url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(query), params).all())
        finally:
            engine.dispose()


PARTITION_TAGS = """
query($partition: String!) { partitionSetOrError(
  repositorySelector: {repositoryLocationName: "sync_assets", repositoryName: "__repository__"},
  partitionSetName: "sync_esi_market_orders_partition_set") {
  ... on PartitionSet { partition(partitionName: $partition) { tagsOrError { ... on PartitionTags { results { key value } } } } } } }
"""
LAUNCH = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on InvalidSubsetError { message } } }
"""
RUN_FIELDS = "runId jobName status startTime endTime assetSelection { path } tags { key value }"
RUNS = "{ runsOrError(limit: 500) { ... on Runs { results { " + RUN_FIELDS + " } } } }"
RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { """ + RUN_FIELDS + """
  eventConnection(afterCursor: null) { events { __typename ... on MessageEvent { message }
    ... on MaterializationEvent { assetKey { path } metadataEntries { label ... on TextMetadataEntry { text } } } } } } } }"""


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


@pytest.fixture(scope="module")
def deployment(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    downtime = DOWNTIMES["esi"]
    if downtime.contains(datetime.now(timezone.utc)):  # the automation rightly holds every launch then
        pytest.skip("ESI's daily downtime window: the automation launches nothing until it ends")
    home = tmp_path_factory.mktemp("daemon") / "dagster_home"
    home.mkdir()
    write_instance_yaml(home)  # the project's dagster.yaml with Postgres storage, as `sync-assets dev` writes it
    data_url, dagster_url = create_database(pg_server_url, "data"), create_database(pg_server_url, "dagster")
    sandbox = EsiSandbox(regions=REGIONS, n_price_types=500, orders_per_page=200)
    sandbox.configure(latency=3.0)  # runs long enough (each a few requests) that runs of different slots overlap
    log = home.parent / "dagster.log"
    with serve_in_thread(sandbox) as esi_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_ASSETS_", "DAGSTER_", "ESI_"))}
        env.update(DAGSTER_HOME=str(home), DAGSTER_PG_URL=dagster_url, SYNC_ASSETS_DATABASE_URL=data_url,
                   SYNC_ASSETS_ESI_URL=esi_url, SYNC_ASSETS_EXPIRY_MARGIN_S="1",
                   SYNC_ASSETS_CRON__ESI__MARKET_ORDERS="* * * * *")  # a tick every minute: the floor is exercised
        with dagster_dev(env, log) as url:
            yield Deployment(url, data_url, sandbox, log)
    drop_database(pg_server_url, data_url)
    drop_database(pg_server_url, dagster_url)


def test_one_run_per_partition_at_a_time_and_partitions_side_by_side(deployment: Deployment) -> None:
    # Two launches of each of two partitions at once from the UI (the launchpad, the asset page), on
    # top of what the daemon launches by itself (the expiry sensor syncs new partitions at once).
    mine = [deployment.launch(FORGE), deployment.launch_asset(DOMAIN), deployment.launch(FORGE), deployment.launch_asset(DOMAIN)]

    every_slot = {f"esi.market_orders[{key}]" for key in map(str, REGIONS)} | {"esi.market_prices"}

    def settled() -> list[dict] | None:
        runs = [r for r in deployment.runs() if r["jobName"].startswith("sync_") or r["jobName"] == "__ASSET_JOB"]
        synced = {_tags(r).get("sync_assets/slot") for r in runs if r["status"] == "SUCCESS"}
        done = all(r["status"] in FINISHED for r in runs) and {r["runId"] for r in runs} >= set(mine)
        return runs if done and synced >= every_slot else None

    runs = deployment.wait(settled, "every launched run to finish")
    assert all(r["status"] == "SUCCESS" for r in runs), [(r["runId"], r["status"]) for r in runs]
    by_slot: dict[str, list[dict]] = {}
    for run in runs:
        tags = _tags(run)
        assert tags.get("sync_assets/slot"), run  # every launcher's run carries its slot
        assert run["jobName"] == "__ASSET_JOB" or tags["dagster/max_runtime"].isdigit()  # else max_runtime_seconds
        by_slot.setdefault(tags["sync_assets/slot"], []).append(run)
    daemon_runs = [r for r in runs if "dagster/sensor_name" in _tags(r) or "dagster/schedule_name" in _tags(r)]
    assert daemon_runs and all(r["assetSelection"] is None for r in daemon_runs)  # launched as the daemon does
    # one dataset partition never runs twice at once: each run of a slot starts after the previous ended
    for slot, slot_runs in by_slot.items():
        slot_runs.sort(key=lambda r: r["startTime"])
        for before, after in zip(slot_runs, slot_runs[1:]):
            assert after["startTime"] >= before["endTime"], (slot, before["runId"], after["runId"])
    assert len(by_slot[f"esi.market_orders[{FORGE}]"]) >= 2 and len(by_slot[f"esi.market_orders[{DOMAIN}]"]) >= 2
    assert {_tags(r)["sync_assets/slot"] for r in runs if r["runId"] in mine[1::2]} == {f"esi.market_orders[{DOMAIN}]"}
    # ... while different partitions and datasets did run at the same time
    intervals = [(r["startTime"], r["endTime"], slot) for slot, rs in by_slot.items() for r in rs]
    overlapping = {
        frozenset((a[2], b[2])) for a in intervals for b in intervals if a[2] != b[2] and a[0] < b[1] and b[0] < a[1]
    }
    assert overlapping, intervals


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_killed_run_writes_nothing_afterwards_and_the_next_launch_converges(deployment: Deployment) -> None:
    forge_slot = f"esi.market_orders[{FORGE}]"
    deployment.wait(lambda: any(_tags(r).get("sync_assets/slot") == forge_slot and r["status"] == "SUCCESS"
                                for r in deployment.runs()), "Forge's first sync")
    table = "SELECT md5(string_agg(order_id::text || ':' || price::text || ':' || volume_remain::text, ',' ORDER BY order_id)) " \
            "FROM esi.market_orders WHERE region_id = :r"
    state = "SELECT s::text FROM sync_assets.sync_state s " \
            "WHERE dataset = 'esi.market_orders' AND partition_key LIKE :p ORDER BY partition_key"  # validators, whole rows
    before_table, before_state = deployment.sql(table, r=int(FORGE)), deployment.sql(state, p=f"{FORGE}%")
    assert before_state and before_table[0][0]
    deployment.sandbox.refresh("orders", int(FORGE))  # a new snapshot: a finished walk would change the table
    deployment.sandbox.configure(latency=2.0)  # a slow walk (about 10 s), to kill it in the middle
    full_refresh = {"ops": {"esi__market_orders": {"config": {"full_refresh": True}}}}
    run_id = deployment.launch(FORGE, full_refresh)

    def run_pid() -> int | None:
        """The run's process id, once its walk has logged progress (and not its end)."""
        messages = [e.get("message") or "" for e in deployment.run(run_id)["eventConnection"]["events"]]
        progress = [m for m in messages if re.search(r": page \d+/\d+ \(", m)]
        if not progress or re.search(r"page (\d+)/\1 ", progress[-1]):
            return None
        pid = [int(m.group(1)) for m in map(re.compile(r"Started process for run \(pid: (\d+)\)").search, messages) if m]
        return pid[0] if pid else None

    pid = deployment.wait(run_pid, "the run's walk to start")
    family = {pid} | _descendants(pid)
    os.kill(pid, signal.SIGKILL)
    killed = deployment.wait(lambda: (r := deployment.run(run_id))["status"] in FINISHED and r, "the run to end")
    assert killed["status"] == "FAILURE"
    # no process of the run is left to write anything later (the multiprocess executor left its step running)
    deployment.wait(lambda: not any(_alive(p) for p in family), "every process of the killed run to be gone", 60)
    assert not [e for e in killed["eventConnection"]["events"] if e["__typename"] == "MaterializationEvent"]
    assert deployment.sql(table, r=int(FORGE)) == before_table
    assert deployment.sql(state, p=f"{FORGE}%") == before_state
    # the next launch converges to the API's snapshot
    deployment.sandbox.configure(latency=0.0)
    again = deployment.launch(FORGE, full_refresh)
    assert deployment.wait(lambda: (r := deployment.run(again))["status"] in FINISHED and r, "the next run")["status"] == "SUCCESS"
    stored = [row[0] for row in deployment.sql("SELECT order_id FROM esi.market_orders WHERE region_id = :r ORDER BY 1", r=int(FORGE))]
    assert stored == sorted(deployment.sandbox.orders_snapshot(int(FORGE))["order_id"].tolist())
    assert deployment.sql(table, r=int(FORGE)) != before_table


def test_each_expiry_is_refreshed_once_by_the_sensor_and_never_doubled_by_the_schedule(deployment: Deployment) -> None:
    forge_slot = f"esi.market_orders[{FORGE}]"
    deployment.sandbox.configure(cache_seconds={"orders": 20}, latency=0.0)  # an Expires every 20 s
    first = deployment.launch(FORGE, {"ops": {"esi__market_orders": {"config": {"full_refresh": True}}}})
    done = deployment.wait(lambda: (r := deployment.run(first))["status"] in FINISHED and r, "the first run")
    assert done["status"] == "SUCCESS"

    def refreshed() -> list[dict] | None:
        runs = [r for r in deployment.runs() if _tags(r).get("sync_assets/slot") == forge_slot and r["runId"] != first
                and (r["startTime"] or 0) > done["endTime"]]
        expiry = [r for r in runs if _tags(r).get("sync_assets/trigger") == "expiry" and r["status"] in FINISHED]
        return runs if len(expiry) >= 3 and all(r["status"] in FINISHED for r in runs) else None

    runs = deployment.wait(refreshed, "three refreshes by the expiry sensor", 300)
    outcomes = []
    for run in runs:
        assert run["status"] == "SUCCESS", run
        events = deployment.run(run["runId"])["eventConnection"]["events"]
        [outcome] = [m["text"] for e in events if e["__typename"] == "MaterializationEvent"
                     for m in e["metadataEntries"] if m["label"] == "outcome"]
        outcomes.append((_tags(run).get("sync_assets/trigger"), outcome))
    # every launch asked the API after its Expires: none found the cache still valid (a second launch
    # for the same Expires would), and the schedule ticks (every minute here) launched nothing extra
    assert all(outcome != "cache_valid" for _, outcome in outcomes), outcomes
    assert all(trigger == "expiry" for trigger, _ in outcomes), outcomes


def _settled(deployment: Deployment) -> None:
    """Every region synced and no run queued or in flight, the cache long enough that nothing falls due
    meanwhile: what the module's earlier tests leave. Run alone, the expiry sensor's first syncs of
    every region are waited for here (hung, they would hold the pool's slots ahead of the test's run)."""
    deployment.sandbox.configure(cache_seconds={"orders": 300})
    count = "SELECT count(DISTINCT region_id) FROM esi.market_orders"

    def settled() -> bool:
        if not deployment.sql("SELECT to_regclass('esi.market_orders') IS NOT NULL")[0][0]:
            return False
        busy = [r for r in deployment.runs() if r["status"] not in FINISHED]
        return not busy and deployment.sql(count)[0][0] == len(REGIONS)

    deployment.wait(settled, "every region synced and no run in flight")


def test_a_hung_run_ends_failed_at_its_max_runtime(deployment: Deployment) -> None:
    """Run monitoring (dagster.yaml) ends a run older than its `dagster/max_runtime` tag: the walk that
    hangs on an API that never answers is stopped, the run fails, and the partition is free again."""
    _settled(deployment)
    deployment.sandbox.configure(cache_seconds={"orders": 300}, latency=3600.0)  # every request hangs
    before = deployment.sql("SELECT count(*) FROM esi.market_orders WHERE region_id = :r", r=int(DOMAIN))
    run_id = deployment.launch(DOMAIN, {"ops": {"esi__market_orders": {"config": {"full_refresh": True}}}},
                               {"dagster/max_runtime": "60"})  # the UI lets a user set it; sync jobs derive it
    ended = deployment.wait(lambda: (r := deployment.run(run_id))["status"] in FINISHED and r, "the run to be ended", 300)
    assert ended["status"] == "FAILURE"
    messages = " ".join(e.get("message") or "" for e in ended["eventConnection"]["events"])
    assert "maximum runtime of 60 seconds" in messages
    assert deployment.sql("SELECT count(*) FROM esi.market_orders WHERE region_id = :r", r=int(DOMAIN)) == before
    deployment.sandbox.configure(latency=0.0)
    again = deployment.launch(DOMAIN)  # the slot is free: the next run is not held behind the ended one
    assert deployment.wait(lambda: (r := deployment.run(again))["status"] in FINISHED and r, "the next run")["status"] == "SUCCESS"
