"""Acceptance test of the automation: `make demo` left alone, with no clicks, keeps every dataset fresh.

The real-life version: left alone for an hour, every asset partition has been materialized at least
once and every partition is fresh. Here the same scenario runs with short cadences against the real
daemon: `sync-assets demo` started as a user starts it (the small-sandbox flags), on fresh databases
of the test session's PostgreSQL, with the cadences shortened only through settings the product
already reads (the sandbox's cache times, `SYNC_ASSETS_EXPIRY_MARGIN_S`, `SYNC_ASSETS_CRON__ESI__*`).
One budget is spent on purpose for longer than the test: the sandbox's `killmail` bucket pays for 20
killmail details per 15 minutes and the demo's corporation has over a hundred. The product must defer
that work (commit what it fetched, keep no slot) and keep every other dataset on its cadence meanwhile.
The demo runs one small corporation (`--sandbox-corporations`): on two cores every run costs a
process start, and a second corporation only doubles the first syncs without exercising anything new.

Everything is read from Dagster's own records (GraphQL on the demo's webserver) and from the data
database; nothing is launched by the test."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

import sync_assets.apis.esi.datasets  # noqa: F401  (registers the ESI datasets)
from sync_assets.apis import DOWNTIMES
from sync_assets.core.catalog import DATASETS_BY_KEY

from .conftest import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent
CORPORATIONS = ["98000001"]  # the demo's corporation (small): the demo logs a director of it in

# short cadences: the sandbox's cache times (seconds) of the datasets whose cadence is checked
SHORT_CACHE = {"orders": 30, "prices": 30, "industry_jobs": 30}
SHORT_DATASETS = ("esi.market_orders", "esi.market_prices", "esi.industry_jobs")
REFRESHES = 2  # refreshes by the expiry sensor each partition of SHORT_DATASETS must get while the killmail budget is spent
KILLMAIL_TOKENS, KILLMAIL_WINDOW_S = 40, 900  # 20 killmail details (2 tokens each) per 15 min; a small corporation has 120
SANDBOX_CONFIG = {"cache_seconds": SHORT_CACHE, "rate_limit_tokens": {"killmail": KILLMAIL_TOKENS},
                  "rate_limit_window": KILLMAIL_WINDOW_S}  # (the window of every group; the others keep their tokens)
KILLMAILS = "esi.corporation_killmails"
TIMEOUT_S = 900  # generous: the scenario settles in a few minutes on an idle 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(TIMEOUT_S + 300)]

SYNC_DATASETS = sorted(key for key, d in DATASETS_BY_KEY.items() if d.api == "esi")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def _partitions(dataset_key: str) -> list[str | None]:
    dataset = DATASETS_BY_KEY[dataset_key]
    if dataset.partitioning is None:
        return [None]
    return list(dataset.partitioning.keys) if not dataset.partitioning.dynamic else list(CORPORATIONS)


def _slot(dataset_key: str, partition: str | None) -> str:
    return f"{dataset_key}[{partition}]" if partition else dataset_key


RUNS = """{ runsOrError(limit: 5000) { __typename ... on Runs { results {
  runId jobName status startTime endTime creationTime tags { key value } } } } }"""
# per asset: the latest materialization of each partition (None when it has none) and the latest
# evaluations of its partitions_fresh check, in one request
ASSET = """a{i}: assetNodeOrError(assetKey: {{path: {path}}}) {{ ... on AssetNode {{ isPartitioned
  latestMaterializationByPartition {{ partition runId }} assetMaterializations(limit: 1) {{ runId }} }} }}
c{i}: assetCheckExecutions(assetKey: {{path: {path}}}, checkName: "partitions_fresh", limit: 10) {{
  runId status evaluation {{ timestamp success description
    metadataEntries {{ label ... on MarkdownMetadataEntry {{ mdStr }} }} }} }}"""
ASSETS = "{ assetNodes { assetKey { path } isPartitioned partitionKeys } }"
RUN_ERRORS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { eventConnection(afterCursor: null) { events {
  __typename ... on MessageEvent { message level }
  ... on ExecutionStepFailureEvent { error { message stack causes { message } } }
  ... on RunFailureEvent { error { message } } ... on EngineEvent { error { message } } } } } } }"""


@dataclass
class Observed:
    """What Dagster and the data database recorded, read once the scenario settled (or timed out)."""

    at: datetime
    runs: list[dict]
    materialized: dict[str, set[str | None]]  # dataset -> partitions with at least one materialization
    partition_keys: dict[str, list[str | None]]  # dataset -> partitions Dagster knows
    fresh_checks: dict[str, dict | None]  # dataset -> latest partitions_fresh evaluation
    deferrals: list[Any]  # rows of sync_assets.sync_deferrals
    failures: list[Any]  # rows of sync_assets.sync_failures
    killmail_rows: dict[str, int]  # corporation -> committed killmail details
    killmail_ids: dict[str, int]  # corporation -> stored killmail ids
    waited_for: list[str] = field(default_factory=list)  # conditions still unmet when observation stopped
    run_errors: dict[str, list[str]] = field(default_factory=dict)  # failed run -> its error and warning lines
    log_tail: str = ""

    def sync_runs(self) -> list[dict]:
        return [r for r in self.runs if r["jobName"].startswith("sync_esi_")]


class Demo:
    def __init__(self, url: str, data_url: str, log: Path, process: subprocess.Popen):
        self.url, self.data_url, self.log, self.process = url, data_url, log, process

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=120)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        return body["data"]

    def sql(self, query: str, **params: Any) -> list:
        engine = create_engine(self.data_url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(query), params).all())
        finally:
            engine.dispose()

    def table_counts(self, table: str) -> dict[str, int]:
        engine = create_engine(self.data_url)
        try:
            with engine.connect() as conn:
                if not conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar_one():
                    return {}
                rows = conn.execute(text(f"SELECT corporation_id::text, count(*) FROM {table} GROUP BY 1")).all()
                return {corporation: n for corporation, n in rows}
        finally:
            engine.dispose()

    def observe(self) -> Observed:
        runs = self.graphql(RUNS)["runsOrError"]["results"]
        keys = {".".join(n["assetKey"]["path"]): [*n["partitionKeys"]] if n["isPartitioned"] else [None]
                for n in self.graphql(ASSETS)["assetNodes"] if ".".join(n["assetKey"]["path"]) in SYNC_DATASETS}
        datasets = sorted(keys)
        query = "{ " + "\n".join(ASSET.format(i=i, path=json.dumps(key.split("."))) for i, key in enumerate(datasets)) + " }"
        answer = self.graphql(query)
        materialized, checks = {}, {}
        for i, key in enumerate(datasets):
            node = answer[f"a{i}"]
            if node["isPartitioned"]:
                materialized[key] = {m["partition"] for m in node["latestMaterializationByPartition"] if m}
            else:
                materialized[key] = {None} if node["assetMaterializations"] else set()
            evaluated = [e["evaluation"] for e in answer[f"c{i}"] if e["evaluation"]]
            checks[key] = max(evaluated, key=lambda e: e["timestamp"]) if evaluated else None
        deferrals = self.sql("SELECT dataset, partition_key, retry_at, deferred_at, run_id, reason FROM sync_assets.sync_deferrals "
                             "ORDER BY dataset, partition_key") if self._has("sync_assets.sync_deferrals") else []
        failures = self.sql("SELECT * FROM sync_assets.sync_failures") if self._has("sync_assets.sync_failures") else []
        return Observed(
            at=datetime.now(timezone.utc), runs=runs, materialized=materialized, partition_keys=keys, fresh_checks=checks,
            deferrals=deferrals, failures=failures, killmail_rows=self.table_counts("esi.corporation_killmails"),
            killmail_ids=self.table_counts("esi.corporation_killmail_ids"), log_tail=self.log.read_text()[-3000:],
        )

    def errors_of(self, run_id: str) -> list[str]:
        events = self.graphql(RUN_ERRORS, {"id": run_id})["runOrError"]["eventConnection"]["events"]
        lines = []
        for event in events:
            if event.get("error"):
                error = event["error"]
                lines.append(f"{event['__typename']}: {error['message']}"
                             + "".join(f" / caused by {c['message']}" for c in error.get("causes") or ())
                             + ("\n" + "".join(error["stack"][-8:]) if error.get("stack") else ""))
            elif event.get("level") in ("ERROR", "CRITICAL", "WARNING"):
                lines.append(f"{event['__typename']} {event['level']}: {event['message']}")
        return lines

    def _has(self, table: str) -> bool:
        return self.sql("SELECT to_regclass(:t) IS NOT NULL", t=table)[0][0]


def unmet(observed: Observed) -> list[str]:
    """What the scenario still waits for (the test asserts each of these itself, after)."""
    waiting = []
    for dataset in SYNC_DATASETS:
        known = observed.partition_keys.get(dataset, [])
        if set(known) != set(_partitions(dataset)):
            waiting.append(f"{dataset}: partitions {known}")
        missing = [p for p in _partitions(dataset) if p not in observed.materialized.get(dataset, set())
                   and not _deferral(observed, dataset, p)]
        if missing:
            waiting.append(f"{dataset}: never materialized {missing}")
        check = observed.fresh_checks.get(dataset)
        if check is None or not (check["success"] or set(_stale(check)) <= _deferred_partitions(observed, dataset)):
            waiting.append(f"{dataset}: partitions_fresh {check and check['description']}")
    spent_since = _spent_since(observed)
    if spent_since is None:
        waiting.append("a killmail deferral")
    else:
        for dataset in SHORT_DATASETS:
            for partition in _partitions(dataset):
                if len(_refreshes(observed, dataset, partition, spent_since)) < REFRESHES:
                    waiting.append(f"{_slot(dataset, partition)}: {REFRESHES} expiry refreshes while the killmail budget is spent")
    return waiting


def _deferral(observed: Observed, dataset: str, partition: str | None):
    return next((d for d in observed.deferrals if d.dataset == dataset and (d.partition_key or None) == partition), None)


def _deferred_partitions(observed: Observed, dataset: str) -> set[str]:
    return {d.partition_key or dataset for d in observed.deferrals if d.dataset == dataset}


def _stale(check: dict) -> list[str]:
    """Partitions the partitions_fresh evaluation lists as stale ('- <partition>: never synced')."""
    md = next((m.get("mdStr") or "" for m in check["metadataEntries"] if m["label"] == "stale_partitions"), "")
    return re.findall(r"^- ([^:]+):", md, flags=re.M)


def _spent_since(observed: Observed) -> datetime | None:
    """When the killmail budget was first found spent: the end of the first run that deferred killmails."""
    ends = [r["endTime"] for r in observed.sync_runs()
            if _tags(r).get("sync_assets/dataset") == KILLMAILS and "sync_assets/deferred_until" in _tags(r) and r["endTime"]]
    return datetime.fromtimestamp(min(ends), timezone.utc) if ends else None


def _refreshes(observed: Observed, dataset: str, partition: str | None, since: datetime) -> list[dict]:
    """Successful runs of one partition the expiry sensor launched after `since`."""
    return [r for r in observed.sync_runs()
            if _tags(r).get("sync_assets/slot") == _slot(dataset, partition) and _tags(r).get("sync_assets/trigger") == "expiry"
            and r["status"] == "SUCCESS" and r["startTime"] and r["startTime"] >= since.timestamp()]


def _demo_sessions(root: int, sessions: set[int]) -> set[int]:
    """Sessions of the demo's processes (the CLI starts dagster dev and the sandbox in sessions of their own)."""
    procs: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            procs[int(entry.name)] = (int(stat[1]), int(stat[3]))
    tree, todo = {root}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _) in procs.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                todo.append(pid)
    return sessions | {procs[pid][1] for pid in tree if pid in procs}


def _kill_sessions(sessions: set[int]) -> None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                sid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3])
            except (OSError, IndexError):
                continue
            if sid in sessions:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(scope="module")
def observed(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    now = datetime.now(timezone.utc)
    downtime = DOWNTIMES["esi"]
    if any(downtime.contains(now + timedelta(minutes=m)) for m in range(0, TIMEOUT_S // 60 + 2)):
        pytest.skip("ESI's daily downtime falls within the test: the automation rightly launches nothing then")
    tmp = tmp_path_factory.mktemp("left_alone")
    home = tmp / "dagster_home"
    data_url, dagster_url = create_database(pg_server_url, "left_alone_data"), create_database(pg_server_url, "left_alone_dagster")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_ASSETS_", "DAGSTER_", "ESI_", "IRIS_"))}
    env.update(SYNC_ASSETS_APIS="esi",  # ESI's demo alone: IRIS's automation is tested on its own (test_iris_*)
               DAGSTER_HOME=str(home), DAGSTER_PG_URL=dagster_url, SYNC_ASSETS_DATABASE_URL=data_url,
               SYNC_ASSETS_EXPIRY_MARGIN_S="1")
    # every schedule ticks each minute: the floor under the sensor, and the cadence of what keeps no
    # Expires (killmail details; a ledger before its observers are known)
    env.update({f"SYNC_ASSETS_CRON__ESI__{key.split('.')[1].upper()}": "* * * * *" for key in SYNC_DATASETS})
    port = _free_port()
    log = tmp / "demo.log"
    command = [str(Path(sys.executable).with_name("sync-assets")), "demo", "--port", str(port), "--sandbox-scale", "tiny",
               "--sandbox-corporations", json.dumps({c: "small" for c in CORPORATIONS}), "--sandbox-config", json.dumps(SANDBOX_CONFIG)]
    sessions: set[int] = set()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    demo = Demo(f"http://127.0.0.1:{port}", data_url, log, process)
    try:
        started = time.monotonic()
        deadline = started + TIMEOUT_S
        while True:  # the webserver answers
            assert process.poll() is None, log.read_text()[-4000:]
            sessions = _demo_sessions(process.pid, sessions)
            try:
                if httpx.get(f"{demo.url}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(1)
        while True:  # left alone: only watch
            assert process.poll() is None, log.read_text()[-4000:]
            sessions = _demo_sessions(process.pid, sessions)
            seen = demo.observe()
            seen.waited_for = unmet(seen)
            print(f"{time.monotonic() - started:6.1f}s {len(seen.runs)} runs; waiting for {len(seen.waited_for)}: "
                  f"{'; '.join(seen.waited_for)[:300]}", flush=True)
            if not seen.waited_for or time.monotonic() > deadline:
                break
            time.sleep(5)
        seen.run_errors = {r["runId"]: demo.errors_of(r["runId"]) for r in seen.runs if r["status"] in ("FAILURE", "CANCELED")}
        yield seen
    finally:
        sessions = _demo_sessions(process.pid, sessions)
        process.send_signal(signal.SIGTERM)  # as Ctrl-C: sync-assets stops dagster dev and the sandbox
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            pass
        _kill_sessions(sessions)  # whatever is left of every session of the demo
        process.wait()
        drop_database(pg_server_url, data_url)
        drop_database(pg_server_url, dagster_url)


def test_the_scenario_settled(observed: Observed) -> None:
    """Everything below was reached within the timeout (each is also asserted on its own)."""
    assert not observed.waited_for, (observed.waited_for, observed.log_tail)


def test_every_partition_of_every_asset_materialized(observed: Observed) -> None:
    assert set(observed.partition_keys) == set(SYNC_DATASETS)
    for dataset in SYNC_DATASETS:  # the corporation partitions were added by esi_corporations_sensor, nobody else
        assert sorted(observed.partition_keys[dataset], key=str) == sorted(_partitions(dataset), key=str), dataset
    missing = {dataset: [p for p in _partitions(dataset) if p not in observed.materialized[dataset]] for dataset in SYNC_DATASETS}
    missing = {dataset: partitions for dataset, partitions in missing.items() if partitions}
    # only work a spent budget deferred may lack a materialization; its partial progress is a deferral
    assert all(_deferral(observed, dataset, p) for dataset, partitions in missing.items() for p in partitions), missing


def test_the_spent_killmail_budget_deferred_work_with_committed_rows(observed: Observed) -> None:
    deferred = [d for d in observed.deferrals if d.dataset == KILLMAILS]
    assert deferred, observed.deferrals
    assert {d.dataset for d in observed.deferrals} == {KILLMAILS}  # every other budget kept paying
    runs = {r["runId"]: r for r in observed.sync_runs()}
    for deferral in deferred:
        assert deferral.retry_at > observed.at  # still spent when the observation ended: spent all along
        assert deferral.retry_at - deferral.deferred_at > timedelta(seconds=75)  # longer than a run may wait
        run = runs[deferral.run_id]
        assert run["status"] == "SUCCESS", run  # a deferral is not a failure ...
        assert _tags(run)["sync_assets/deferred_until"] == deferral.retry_at.isoformat(timespec="seconds")
        assert "killmail" in deferral.reason
    # ... and what the budget paid for is committed: some killmail details, not all of them
    committed = sum(observed.killmail_rows.get(d.partition_key, 0) for d in deferred)
    listed = sum(observed.killmail_ids.get(d.partition_key, 0) for d in deferred)
    assert 0 < committed < listed, (observed.killmail_rows, observed.killmail_ids)
    assert committed <= KILLMAIL_TOKENS // 2  # no more than the bucket paid for
    # a deferred partition is left to the sensor until the budget refills: nothing relaunched it meanwhile
    for deferral in deferred:
        later = [r for r in observed.sync_runs() if _tags(r).get("sync_assets/slot") == _slot(KILLMAILS, deferral.partition_key)
                 and r["creationTime"] > runs[deferral.run_id]["endTime"]]
        assert not later, later


def test_every_partitions_fresh_check_passes(observed: Observed) -> None:
    for dataset in SYNC_DATASETS:
        check = observed.fresh_checks[dataset]
        assert check is not None, dataset
        if not check["success"]:  # only what the spent budget deferred may be listed
            stale = set(_stale(check))
            assert stale and stale <= _deferred_partitions(observed, dataset), (dataset, check["description"])


def test_cadence_kept_while_the_killmail_budget_was_spent(observed: Observed) -> None:
    since = _spent_since(observed)
    assert since is not None
    deferred = [d.retry_at for d in observed.deferrals if d.dataset == KILLMAILS]
    assert deferred, observed.deferrals
    retry_at = min(deferred)
    for dataset in SHORT_DATASETS:
        for partition in _partitions(dataset):
            refreshes = _refreshes(observed, dataset, partition, since)
            assert len(refreshes) >= REFRESHES, (_slot(dataset, partition), since, refreshes)
            assert all(r["startTime"] < retry_at.timestamp() for r in refreshes)


def test_one_run_per_slot_at_a_time(observed: Observed) -> None:
    by_slot: dict[str, list[dict]] = {}
    for run in observed.sync_runs():
        assert _tags(run).get("sync_assets/slot"), run
        if run["startTime"]:
            by_slot.setdefault(_tags(run)["sync_assets/slot"], []).append(run)
    assert len(by_slot) == sum(len(_partitions(d)) for d in SYNC_DATASETS)
    for slot, runs in by_slot.items():
        runs.sort(key=lambda r: r["startTime"])
        for before, after in zip(runs, runs[1:]):
            assert before["endTime"] is not None and after["startTime"] >= before["endTime"], (slot, before["runId"], after["runId"])


def test_no_run_failed_and_nobody_clicked(observed: Observed) -> None:
    failed = [(r["runId"], r["jobName"], r["status"], _tags(r).get("sync_assets/trigger"), observed.run_errors.get(r["runId"]))
              for r in observed.runs if r["status"] in ("FAILURE", "CANCELED")]
    assert not failed, failed
    assert not observed.failures, observed.failures
    # every run was launched by the automation: the expiry sensor or a schedule
    manual = [r["runId"] for r in observed.runs if not {"dagster/sensor_name", "dagster/schedule_name"} & set(_tags(r))]
    assert not manual, manual
    assert {_tags(r).get("sync_assets/trigger") for r in observed.sync_runs()} >= {"new_partition", "expiry"}
