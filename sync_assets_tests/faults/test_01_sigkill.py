"""Fault 1: SIGKILL of a real `dagster asset materialize` process at chosen points of the sync.

Invariants 1, 2 and 4: after every kill the table AND its validators (sync_assets.sync_state) equal
either the old or the new snapshot, never a mix; the next run converges to the new snapshot exactly.

How the kill points are reached without a hook in the product:
- fetch: the count of pages the run asked for reaches a random k;
- copy: pg_stat_activity shows the run's `COPY _sync_stage` in flight (polled; when the COPY ends
  between two polls, the statement seen next is recorded instead);
- merge (before / mid DELETE / mid UPDATE / mid INSERT): the test holds a lock the statement needs
  (SHARE on the table, FOR UPDATE on a row the statement must delete or update, an uncommitted
  insert of a key it must insert), so the run is provably inside that statement when it dies;
- state: a test-owned statement trigger on sync_state waits on an advisory lock the test holds;
- commit: a test-owned DEFERRED constraint trigger does the same inside COMMIT;
- after commit: the committed sync_state row is seen; the run dies before it reports;
- random: a uniformly random moment of the run.
Every fourth run uses the job's default multiprocess executor and loses only its step worker (what
the OOM killer does): the CLI must then report the failure. The others run with `--config-json`
selecting the in-process executor (same code, one process less to start) and lose the whole
process group.

Speed (the suite runs in `make test`): run processes are started ahead of their turn, each with
its own ESI URL prefix (`/laneN`) held by a gate in front of the sandbox until its turn. Their
connections carry `application_name=faults-kill-N` (SYNC_ASSETS_DATABASE_URL) so the observer
tells them apart, and a test-owned trigger keeps every stored Expires in the past, so a process
that read its validators early still asks the API.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import pytest

from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.apis.esi.sandbox.sso import SsoSandbox

from .conftest import FaultReport, Haystacks, SessionSecrets
from .helpers import (
    COMMIT_BRAKE, DDL_LOCK, FORGE, STATE_BRAKE, Brake, LaneGate, Observer, Proc, Runner, clean_env, dagster_materialize,
    expected_orders, expire, frame_diff, install_always_expired, install_brakes, poll, rng_for, scaled, state_row, table_digest,
    with_app_name,
)

pytestmark = pytest.mark.slow  # over a minute on 2 cores: scheduled first (conftest)

PAGES = 30
KEY = ["region_id", "order_id"]
AHEAD = 2  # run processes started before their turn
# kill points at SYNC_ASSETS_FAULT_SCALE=1: 20 chosen points + 3 random moments
PLAN = {
    "fetch": 3, "copy": 3, "merge:before": 1, "merge:delete": 3, "merge:update": 3, "merge:insert": 2,
    "state": 2, "commit": 2, "after-commit": 1, "random": 3,
}
WRITE_PHASES = ("copy", "stage:create", "stage:analyze", "merge:count", "merge:delete", "merge:update", "merge:insert", "state")


@dataclass
class World:
    sandbox: EsiSandbox
    gate: LaneGate
    esi_url: str
    db_url: str
    home: Path
    logs: Path
    observer: Observer
    runner: Runner
    secrets: SessionSecrets

    def start(self, lane: int | str) -> Proc:
        name = f"faults-kill-{lane}"
        env = clean_env(
            SYNC_ASSETS_DATABASE_URL=with_app_name(self.db_url, name), SYNC_ASSETS_ESI_URL=f"{self.esi_url}/lane{lane}",
            DAGSTER_HOME=str(self.home), ESI_CLIENT_ID=self.sandbox.sso.client_id, ESI_CLIENT_SECRET=self.secrets.client_secret,
            SYNC_ASSETS_TOKEN_KEY=self.secrets.token_key, ESI_SSO_URL=self.esi_url, ESI_SSO_ISSUER="login.eveonline.com",
        )
        return dagster_materialize(env, self.logs / f"{name}.log")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, fault_databases: Callable[[str], str], session_secrets: SessionSecrets,
          haystacks: Haystacks) -> Iterator[World]:
    sso = SsoSandbox(client_secret=session_secrets.client_secret)
    sandbox = EsiSandbox(regions={int(FORGE): PAGES}, n_price_types=10, corporations={}, sso=sso)
    haystacks.secret_sources.append(sso.issued_secrets)
    base = tmp_path_factory.mktemp("sigkill")
    home, logs = base / "dagster_home", base / "logs"
    home.mkdir()
    logs.mkdir()
    haystacks.paths += [home, logs]
    db_url = fault_databases("kill")
    _init_home(home)  # run processes start in pairs: Dagster's sqlite storage must exist before (its creation races)
    gate = LaneGate(sandbox.app)
    with serve_in_thread(gate) as esi_url:
        observer = Observer(db_url)
        try:
            yield World(sandbox, gate, esi_url, db_url, home, logs, observer, Runner(esi_url, db_url), session_secrets)
        finally:
            observer.close()


def _init_home(home: Path) -> None:
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    instance.get_runs(limit=1)
    instance.dispose()


@dataclass
class Kill:
    index: int
    planned: str
    observed: str = ""
    whole_group: bool = True  # the code location runs in-process: the CLI process is the run (no step worker)
    in_process: bool = True
    table: str = ""  # "old" | "new"
    pages_asked: int = 0
    cli_message: str = ""
    reported_success: bool = False


def test_sigkill_at_every_phase_leaves_old_or_new_never_a_mix(world: World, fault_report: FaultReport) -> None:
    entry = fault_report.entry(
        "1", "SIGKILL of the run process", invariant="1, 2, 4", main="kills",
        injection=(f"`dagster asset materialize` (subprocess, sqlite DAGSTER_HOME) of The Forge ({PAGES} pages, "
                   f"~{PAGES}k orders, a new snapshot each time) killed with SIGKILL at a chosen phase, reached through "
                   "pg_stat_activity, the count of pages asked, and test-held locks / trigger brakes (no hook in the product)."),
    )
    entry.tests.append("test_01_sigkill.py::test_sigkill_at_every_phase_leaves_old_or_new_never_a_mix")
    rng = rng_for("sigkill")
    obs = world.observer.conn

    # the old snapshot (its load also times a run, for the random kills)
    started = time.monotonic()
    assert world.runner.sync().success
    run_seconds = 1.5 * (time.monotonic() - started)
    assert frame_diff(world.runner.table(), expected_orders(world.sandbox), KEY) is None
    install_brakes(obs)
    install_always_expired(obs)
    expire(obs)

    plan = [phase for phase, n in PLAN.items() for _ in range(scaled(n))]
    rng.shuffle(plan)
    kills: list[Kill] = []
    queue: deque[tuple[int, Proc]] = deque()

    def top_up(next_index: int) -> int:
        while len(queue) < AHEAD and next_index < len(plan):
            queue.append((next_index, world.start(next_index)))
            next_index += 1
        return next_index

    ddl_gate = Brake(world.db_url, "faults-ddl-gate")
    started_upto = top_up(0)
    for i, phase in enumerate(plan):
        index, proc = queue.popleft()
        assert index == i
        name = f"faults-kill-{i}"
        # a new snapshot to sync
        old_frame = expected_orders(world.sandbox)
        world.sandbox.refresh("orders", int(FORGE))
        new_frame = expected_orders(world.sandbox)
        new_snap = world.sandbox.snapshot("orders", int(FORGE))
        old_digest, old_state = table_digest(obs), state_row(obs)
        kill = Kill(i, phase)
        brake = Brake(world.db_url)
        world.gate.open(i)
        _debug(f"kill {i} {phase}: open")
        try:
            # once this run fetches, its DDL is behind it; the processes started ahead wait before theirs
            # (else their ALTER TABLE, queued behind a brake, would block this run's write behind it)
            assert poll(lambda: world.gate.count(i) or not proc.alive(), 240, 0.001), f"{name}: no page was ever asked"
            ddl_gate.advisory(DDL_LOCK)
            kill.observed = _run_to_kill_point(world, proc, i, phase, brake, old_frame, new_frame, new_snap, rng, run_seconds)
            kill.pages_asked = world.gate.count(i)
            if kill.whole_group or not proc.kill_children():  # no step worker: the whole run goes
                kill.whole_group = True
                proc.kill_group()
        finally:
            brake.dispose()
        world.observer.wait_gone(name)
        ddl_gate.release()
        if not kill.whole_group:  # the CLI outlives its step worker and must say what happened
            code = proc.wait(120)
            assert code is not None, "the CLI hung after its step worker died"
            kill.reported_success = code == 0  # possible when the worker had finished its step already
            kill.cli_message = "" if code == 0 else _failure_line(proc.output())
            assert code == 0 or kill.cli_message, proc.output()[-3000:]
        proc.close()
        started_upto = top_up(started_upto)

        # the invariant: old rows + old validators, or new rows + new validators
        digest, state = table_digest(obs), state_row(obs)
        where = f"kill {i} at {kill.observed} (planned {phase}, {kill.pages_asked} pages asked)"
        if digest == old_digest:
            kill.table = "old"
            assert state == old_state, f"{where}: old rows but validators changed: {state} != {old_state}"
        else:
            diff = frame_diff(world.runner.table(), new_frame, KEY)
            assert diff is None, f"{where}: MIXED table: neither the old rows nor the new snapshot ({diff})"
            kill.table = "new"
            assert state is not None and list(state["page_etags"]) == list(new_snap.etags), f"{where}: new rows, old ETags"
            assert state["last_modified"] == new_snap.last_modified and state["row_count"] == len(new_frame), where
        assert not kill.reported_success or kill.table == "new", f"{where}: the run reported success, the table is old"
        if kill.observed == "completed":  # the random moment came after the end: not a kill
            entry.tally("random moments after the run had ended (not counted as kills)").add("completed")
        else:
            kills.append(kill)
            entry.tally("kills").add(f"{kill.observed} -> {kill.table}")

        # the next run converges to the new snapshot exactly
        _debug(f"kill {i} {kill.observed}: killed+checked")
        result = world.runner.sync()
        assert result.success, f"{where}: the next run failed"
        if kill.table == "new":  # already checked against the snapshot: must be untouched
            assert table_digest(obs) == digest, f"{where}: the next run changed the new snapshot"
        else:
            assert frame_diff(world.runner.table(), new_frame, KEY) is None, f"{where}: the next run did not converge"
        entry.tally("next run after a kill").add("converged to the new snapshot exactly")

    ddl_gate.dispose()
    # and a last complete CLI run converges too
    world.sandbox.refresh("orders", int(FORGE))
    world.gate.open("final")
    last = world.start("final")
    assert last.wait(240) == 0, last.output()[-3000:]
    last.close()
    assert frame_diff(world.runner.table(), expected_orders(world.sandbox), KEY) is None
    entry.tally("next run after a kill").add("converged to the new snapshot exactly (final CLI run)")

    observed = {k.observed for k in kills}
    assert len(kills) >= 20
    assert {"fetch", "merge:delete", "merge:update", "merge:insert", "state", "commit"} <= observed, observed
    for k in kills:
        entry.tally("kill variant").add(
            f"{'in-process' if k.in_process else 'multiprocess'} executor, "
            f"{'process group (CLI + step worker)' if k.whole_group else 'step worker only'}"
            + (", CLI reported success (step already done)" if k.reported_success else
               ", CLI reported the failure" if not k.whole_group else ""))
    messages = sorted({k.cli_message for k in kills if k.cli_message})
    entry.notes.append(f"{len(kills)} kills: the table held the old snapshot {sum(k.table == 'old' for k in kills)} times "
                       f"and the new one {sum(k.table == 'new' for k in kills)} times, with matching validators; never a mix.")
    if messages:
        entry.notes.append("What the CLI says when only its step worker dies: " + "; ".join(f"`{m}`" for m in messages[:2]))


def _run_to_kill_point(world: World, proc: Proc, lane: int, phase: str, brake: Brake, old_frame: pd.DataFrame,
                       new_frame: pd.DataFrame, new_snap: Any, rng: Any, run_seconds: float) -> str:
    """Let the run go until `phase`; returns the phase it was seen in when the kill is due."""
    obs, name = world.observer, f"faults-kill-{lane}"
    asked = lambda: world.gate.count(lane)  # noqa: E731

    def alive() -> bool:
        assert proc.alive(), f"{name} ended before its kill point ({phase}):\n{proc.output()[-3000:]}"
        return True

    if phase == "random":  # a uniformly random moment of the run, from its first request on
        assert poll(lambda: asked() or not proc.alive(), 240, 0.001)
        delay, start = rng.uniform(0, run_seconds), time.monotonic()
        while time.monotonic() - start < delay and proc.alive():
            time.sleep(0.002)
        if not proc.alive():
            return "completed"
        return f"random ({_current_phase(world, name, asked(), new_snap)})"
    if phase == "fetch":
        k = rng.randint(1, len(new_snap.pages) - 1)
        assert poll(lambda: alive() and asked() >= k, 240, 0.001), f"{name}: page {k} never asked"
        return "fetch"
    # brakes are engaged once the run fetches: its DDL (ALTER TABLE ... IF NOT EXISTS) is behind it
    assert poll(lambda: alive() and asked() >= 1, 240, 0.001), f"{name}: no page was ever asked"
    old_keys, new_keys = set(old_frame.order_id), set(new_frame.order_id)
    table = "esi.market_orders"
    if phase == "merge:before":  # staged, the DELETE waiting for the table: nothing merged yet
        brake.table(table, "SHARE")
        _wait_blocked(obs, name, alive, "merge:delete")
        return "merge:before"
    if phase == "merge:delete":
        brake.row(table, {"region_id": int(FORGE), "order_id": _middle(sorted(old_keys - new_keys))})
        return _wait_blocked(obs, name, alive, "merge:delete")
    if phase == "merge:update":
        merged = old_frame.merge(new_frame, on=KEY, suffixes=("_old", ""))
        changed = merged[(merged.price_old != merged.price) | (merged.volume_remain_old != merged.volume_remain)]
        brake.row(table, {"region_id": int(FORGE), "order_id": _middle(sorted(changed.order_id))})
        return _wait_blocked(obs, name, alive, "merge:update")
    if phase == "merge:insert":
        brake.pending_insert(table, {"region_id": int(FORGE), "order_id": _middle(sorted(new_keys - old_keys))})
        return _wait_blocked(obs, name, alive, "merge:insert")
    if phase == "state":
        brake.advisory(STATE_BRAKE)
        return _wait_blocked(obs, name, alive, "state")
    if phase == "commit":
        brake.advisory(COMMIT_BRAKE)
        return _wait_blocked(obs, name, alive, "commit")
    if phase == "after-commit":
        committed = lambda: (state_row(obs.conn) or {}).get("last_modified") == new_snap.last_modified  # noqa: E731
        assert poll(lambda: alive() and committed(), 240, 0.001), f"{name}: never committed"
        return "after-commit"
    if phase == "copy":
        later = WRITE_PHASES[2:] + ("copy",)
        found = poll(lambda: alive() and next((b.phase for b in obs.backends(name) if b.phase in later), None), 240, 0.0003)
        assert found, f"{name}: never reached its write"
        return found
    raise AssertionError(f"unknown phase {phase}")


def _wait_blocked(obs: Observer, name: str, alive: Callable[[], bool], phase: str) -> str:
    """Until the run's backend waits on the test's lock inside `phase`."""
    found = poll(lambda: alive() and any(b.phase == phase and b.wait_event_type == "Lock" for b in obs.backends(name)), 240)
    assert found, f"{name}: never blocked in {phase}"
    return phase


def _current_phase(world: World, name: str, asked: int, new_snap: Any) -> str:
    for b in world.observer.backends(name):
        if b.phase in WRITE_PHASES and b.state == "active":
            return b.phase
    if (state_row(world.observer.conn) or {}).get("last_modified") == new_snap.last_modified:
        return "after-commit"
    return "fetch" if asked else "startup"


def _debug(message: str) -> None:
    import os
    import sys

    if os.environ.get("SYNC_ASSETS_FAULT_DEBUG"):
        print(f"{time.monotonic():9.2f} {message}", file=sys.stderr, flush=True)


def _middle(keys: list[int]) -> int:
    assert keys, "the refresh produced no such rows"
    return int(keys[len(keys) // 2])


def _failure_line(output: str) -> str:
    for line in output.splitlines():
        if "STEP_FAILURE" in line or "unexpectedly" in line or "RUN_FAILURE" in line:
            return line.split(" - ")[-1].strip()[:200]
    return ""
