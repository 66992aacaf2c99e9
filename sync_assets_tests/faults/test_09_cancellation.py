"""Fault 9: a run terminated from Dagster in the middle of its page walk.

Invariant 4 (failed, cancelled or killed runs leave tables as they were) and the pool: the run's
slot in pool `esi` is freed, so the next run can start. Run as a user runs it: `dagster dev` with
the project's dagster.yaml (Postgres storage, run queue, pools, run monitoring) in a DAGSTER_HOME
of its own, the run launched and terminated through the UI's GraphQL API (`launchRun`,
`terminateRun`). Schedules and sensors are stopped first (they would launch runs of their own).

The walk is held mid-way deterministically: requests for pages 3 and later wait in front of the
sandbox until the test lets them go (what a slow ESI does).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from sync_assets.runtime import write_instance_yaml
from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.apis.esi.sandbox.sso import SsoSandbox

from ..helpers import DEFAULT_SIGINT, stop_automation
from .conftest import FaultReport, Haystacks, SessionSecrets
from .helpers import (
    BIN, FORGE, ROOT, Observer, Proc, Runner, clean_env, expire, poll, scaled, state_row, table_digest,
)

KEY = ["region_id", "order_id"]
REPO = {"repositoryLocationName": "sync_assets", "repositoryName": "__repository__"}


class Hold:
    """ASGI wrapper: while `holding`, requests for order pages >= `from_page` wait (and are counted)."""

    def __init__(self, app: Any, from_page: int = 3):
        self.app, self.from_page = app, from_page
        self.holding = False
        self.held = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and "/orders" in scope["path"]:
            query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
            if int(query.get("page", "1") or 1) >= self.from_page and self.holding:
                with self._lock:
                    self.held += 1
                while self.holding:
                    await asyncio.sleep(0.01)
        await self.app(scope, receive, send)


class Dev:
    def __init__(self, url: str):
        self.url = url

    def gql(self, query: str, **variables: Any) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        return body["data"]

    def launch(self, job: str, partition: str) -> str:
        params = {"selector": {**REPO, "jobName": job}, "mode": "default",
                  "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]}}
        out = self.gql(LAUNCH, params=params)["launchRun"]
        assert out["__typename"] == "LaunchRunSuccess", out
        return out["run"]["runId"]

    def status(self, run_id: str) -> str:
        return self.gql(RUN, id=run_id)["runOrError"]["status"]

    def wait(self, run_id: str, timeout: float = 240) -> str:
        done = poll(lambda: (s := self.status(run_id)) in ("SUCCESS", "FAILURE", "CANCELED") and s, timeout, 1.0)
        return done or self.status(run_id)

    def esi_slots(self) -> list[dict]:
        return self.gql(SLOTS)["instance"]["concurrencyLimit"]["claimedSlots"]


LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on InvalidSubsetError { message } } }"""
RUN = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
SLOTS = '{ instance { concurrencyLimit(concurrencyKey: "esi") { slotCount limit claimedSlots { runId stepKey } } } }'
TERMINATE = """mutation($id: String!) { terminateRun(runId: $id) { __typename
  ... on TerminateRunFailure { message } ... on PythonError { message } } }"""
INSTIGATORS = """query($sel: RepositorySelector!) { repositoryOrError(repositorySelector: $sel) { ... on Repository {
  schedules { name scheduleState { id status } } sensors { name sensorState { id status } } } } }"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory, fault_databases: Callable[[str], str], session_secrets: SessionSecrets,
        haystacks: Haystacks) -> Iterator[dict[str, Any]]:
    sso = SsoSandbox(client_secret=session_secrets.client_secret)
    haystacks.secret_sources.append(sso.issued_secrets)
    sandbox = EsiSandbox(regions={int(FORGE): 24}, n_price_types=10, corporations={}, sso=sso)
    hold = Hold(sandbox.app)
    home = tmp_path_factory.mktemp("cancel") / "dagster_home"
    home.mkdir()
    write_instance_yaml(home)  # the project's instance config with Postgres storage
    haystacks.paths.append(home.parent)
    data_db, dagster_db = fault_databases("cancel"), fault_databases("dagster")
    with serve_in_thread(hold) as esi_url:
        env = clean_env(
            DAGSTER_HOME=str(home), DAGSTER_PG_URL=dagster_db, SYNC_ASSETS_DATABASE_URL=data_db, SYNC_ASSETS_ESI_URL=esi_url,
            ESI_CLIENT_ID=sso.client_id, ESI_CLIENT_SECRET=session_secrets.client_secret, SYNC_ASSETS_TOKEN_KEY=session_secrets.token_key,
            ESI_SSO_URL=esi_url, ESI_SSO_ISSUER="login.eveonline.com",
        )
        # automation off before the daemon's first tick (its sensors would launch runs of their own;
        # a stop sent through GraphQL races that tick, which stores the sensor's first state too)
        stop_automation(env)
        port = _free_port()
        # SIGINT at its default: else `dagster dev` ignores the SIGTERM below (see DEFAULT_SIGINT)
        proc = Proc([*DEFAULT_SIGINT, str(BIN / "dagster"), "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1",
                     "-p", str(port)], env, home.parent / "dagster_dev.log")
        try:
            url = f"http://127.0.0.1:{port}"
            ready = poll(lambda: not proc.alive() or _loaded(url), 240, 0.5)
            assert ready and proc.alive(), proc.output()[-4000:]
            yield {"dev": Dev(url), "sandbox": sandbox, "hold": hold, "data_db": data_db, "esi_url": esi_url, "proc": proc,
                   "secrets": session_secrets}
        finally:
            hold.holding = False
            proc.kill_group(15)  # SIGTERM: dagster dev stops its daemon, webserver and code server
            if proc.wait(60) is None:
                proc.kill_group()
            haystacks.texts.append(proc.output())
            proc.close()


def _loaded(url: str) -> bool:
    try:
        body = httpx.post(f"{url}/graphql", json={"query": "{ assetNodes { id } }"}, timeout=5).json()
        return bool(body.get("data", {}).get("assetNodes"))
    except (httpx.HTTPError, ValueError):
        return False


def test_terminating_a_run_mid_walk_leaves_the_table_unchanged_and_frees_its_pool_slot(dev: dict[str, Any],
                                                                                    fault_report: FaultReport) -> None:
    entry = fault_report.entry(
        "9", "Cancellation from Dagster mid-sync", invariant="4 (+ pool slots)", main="terminated",
        injection=("`dagster dev` (project dagster.yaml: Postgres storage, run queue, pool `esi` set to 1 slot, run monitoring); "
                   "a market-orders run launched with GraphQL `launchRun`, held with pages 3+ in flight, then `terminateRun`."),
    )
    entry.tests.append("test_09_cancellation.py::test_terminating_a_run_mid_walk_leaves_the_table_unchanged_and_frees_its_pool_slot")
    d: Dev = dev["dev"]
    sandbox: EsiSandbox = dev["sandbox"]
    hold: Hold = dev["hold"]

    # automation was stopped before the deployment started; pool `esi` down to one slot, so a leak would block
    repo = d.gql(INSTIGATORS, sel=REPO)["repositoryOrError"]
    running = [i["name"] for i in repo["schedules"] if i["scheduleState"]["status"] == "RUNNING"]
    running += [i["name"] for i in repo["sensors"] if i["sensorState"]["status"] == "RUNNING"]
    assert repo["sensors"] and not running, running
    assert d.gql('mutation { setConcurrencyLimit(concurrencyKey: "esi", limit: 1) }')["setConcurrencyLimit"]

    # the old snapshot, then a new one at ESI
    runner = Runner(dev["esi_url"], dev["data_db"])
    assert runner.sync().success
    sandbox.refresh("orders", int(FORGE))
    observer = Observer(dev["data_db"])
    expire(observer.conn)
    old = table_digest(observer.conn), state_row(observer.conn)
    for attempt in range(scaled(1)):
        hold.holding, hold.held = True, 0
        run_id = d.launch("sync_esi_market_orders", FORGE)
        assert poll(lambda: hold.held >= 1 or d.status(run_id) in ("FAILURE", "CANCELED", "SUCCESS"), 240, 0.2), "never fetched"
        assert hold.held >= 1, f"the run ended before its walk: {d.status(run_id)}"
        slots_during = [s for s in d.esi_slots() if s["runId"] == run_id]
        asked_before = sandbox.counter("orders")["requests"]
        out = d.gql(TERMINATE, id=run_id)["terminateRun"]
        assert out["__typename"] == "TerminateRunSuccess", out
        canceled_while_held = poll(lambda: d.status(run_id) in ("CANCELED", "FAILURE"), 5, 0.5)
        hold.holding = False  # what ESI does eventually: answer (or the client times out)
        status = d.wait(run_id, 240)
        asked_after = sandbox.counter("orders")["requests"] - asked_before
        assert status == "CANCELED", status
        unchanged = (table_digest(observer.conn), state_row(observer.conn)) == old
        freed = poll(lambda: not [s for s in d.esi_slots() if s["runId"] == run_id], 60, 1.0)
        leftovers = _processes_mentioning(run_id)
        entry.tally("terminated mid-walk").add(
            ("table and validators unchanged" if unchanged else "TABLE CHANGED") + ", "
            + ("pool slot freed" if freed else "POOL SLOT STILL CLAIMED") + ", "
            + ("run worker gone" if not leftovers else f"{len(leftovers)} processes left"))
        entry.notes.append(
            f"slot claimed while running: {bool(slots_during)}; run CANCELED "
            + ("while its requests were still held" if canceled_while_held else "only after the held requests were answered")
            + f"; {asked_after} page requests reached ESI after `terminateRun`.")
        assert unchanged, "a cancelled run changed the table or its validators"
        assert freed, f"the cancelled run still holds its `esi` pool slot: {d.esi_slots()}"
        assert not leftovers, f"processes of the cancelled run are still alive: {leftovers}"

    observer.close()
