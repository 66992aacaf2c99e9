"""`sync-assets demo` (what `make demo` runs), as a user starts it: embedded PostgreSQL, the ESI
sandbox, `dagster dev` with dagster-postgres storage. The UI's GraphQL API must list both assets,
and a run launched through it (run queue, slot limit, pool) must sync real rows; new corporations
are synced without a click."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

from sync_assets.apis import DOWNTIMES
from sync_assets.db.embedded import stop_embedded_postgres

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # slow: over a minute on 2 cores, scheduled first (conftest)

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Demo:
    def __init__(self, url: str, home: Path):
        self.url, self.home = url, home

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        return body["data"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    home = tmp_path_factory.mktemp("demo") / "dagster_home"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SYNC_ASSETS_DATABASE_URL", "DAGSTER_PG_URL", "SYNC_ASSETS_ESI_URL")}
    env["DAGSTER_HOME"] = str(home)
    log = open(home.parent / "demo.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("sync-assets")), "demo", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, (home.parent / "demo.log").read_text()[-4000:]
            try:
                if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (home.parent / "demo.log").read_text()[-4000:]
            time.sleep(1)
        yield Demo(url, home)
    finally:
        process.send_signal(signal.SIGTERM)  # sync-assets forwards it to dagster dev once
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
        stop_embedded_postgres(home / "pgdata")
        log.close()


ASSETS = "{ assetNodes { assetKey { path } groupName isPartitioned } }"
LAUNCH = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }
"""
RUN = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
RUNS = "{ runsOrError(limit: 200) { ... on Runs { results { runId status tags { key value } } } } }"
# one dataset's runs: the demo's IRIS and SP-API history first-syncs outnumber any fixed window of runs
DATASET_RUNS = """query($dataset: String!) { runsOrError(filter: {tags: [{key: "sync_assets/dataset", value: $dataset}]}, limit: 100) {
  ... on Runs { results { runId status tags { key value } } } } }"""


def test_demo_serves_both_assets_in_the_ui(demo: Demo) -> None:
    nodes = demo.graphql(ASSETS)["assetNodes"]
    keys = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert {"esi/market_orders", "esi/market_prices", "esi/corporation_assets", "esi/wallet_journal"} <= set(keys)
    assert keys["esi/market_orders"]["isPartitioned"] and keys["esi/market_orders"]["groupName"] == "esi_public"


def test_demo_runs_a_sync_launched_from_the_ui(demo: Demo) -> None:
    params = {
        "selector": {"repositoryLocationName": "sync_assets", "repositoryName": "__repository__", "jobName": "sync_esi_market_prices"},
        "mode": "default",
    }
    launched = demo.graphql(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    assert _wait_for_run(demo, launched["run"]["runId"]) == "SUCCESS"
    data_url = _data_url(demo.home / "pgdata")
    engine = create_engine(data_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM esi.market_prices")).scalar_one() > 10_000
        assert conn.execute(text("SELECT count(*) FROM sync_assets.sync_state WHERE dataset = 'esi.market_prices'")).scalar_one() == 1
    engine.dispose()


def _data_url(data_dir: Path) -> str:
    from sync_assets.db.embedded import start_embedded_postgres
    from sync_assets.db.urls import with_database

    return with_database(start_embedded_postgres(data_dir), "sync_assets")


PARTITIONS = """
query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode { partitionKeys } } }
"""


def _wait_for_run(demo: Demo, run_id: str) -> str | None:
    deadline = time.monotonic() + 240
    status = None
    while time.monotonic() < deadline:
        status = demo.graphql(RUN, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    return status


def test_demo_connects_sandbox_corporations_and_launches_their_first_syncs_at_once(demo: Demo) -> None:
    """The corporation sensor adds a partition per connected corporation; the automation launches the
    first sync of every corporation dataset for it at once (nobody clicks). Whether each run gets
    through the queue quickly depends on the API budgets (a first killmail sync waits ~15 min for
    its bucket while holding an `esi` pool slot, issue 11 item 5), so completion is not asserted here."""
    now = datetime.now(timezone.utc)
    if any(DOWNTIMES["esi"].contains(now + timedelta(minutes=m)) for m in range(0, 12)):  # the test's own waits
        pytest.skip("ESI's daily downtime falls within the test: the automation rightly launches nothing then")
    deadline, keys = time.monotonic() + 180, []
    while time.monotonic() < deadline:
        node = demo.graphql(PARTITIONS, {"key": {"path": ["esi", "corporation_members"]}})["assetNodeOrError"]
        keys = node.get("partitionKeys") or []
        if len(keys) >= 2:
            break
        time.sleep(3)
    assert sorted(keys) == ["98000001", "98000002"]

    def first_syncs() -> set[str]:
        runs = [run for name in ("corporation_members", "wallet_journal", "corporation_assets")
                for run in demo.graphql(DATASET_RUNS, {"dataset": f"esi.{name}"})["runsOrError"]["results"]]
        tags = [{t["key"]: t["value"] for t in r["tags"]} for r in runs]
        return {t["sync_assets/slot"] for t in tags if t.get("sync_assets/trigger") in ("new_partition", "schedule")
                and t.get("sync_assets/slot", "").endswith(("[98000001]", "[98000002]"))}

    wanted = {f"esi.{name}[{corp}]" for name in ("corporation_members", "wallet_journal", "corporation_assets")
              for corp in ("98000001", "98000002")}
    # the demo's daemon launches the first syncs of all three APIs at once (hundreds of runs): on a
    # loaded machine it reaches the corporations' minutes later, so the wait is generous (it ends
    # as soon as they are launched)
    deadline, launched = time.monotonic() + 480, set()
    while time.monotonic() < deadline and not wanted <= launched:
        launched = first_syncs()
        time.sleep(3)
    assert wanted <= launched, sorted(launched)
