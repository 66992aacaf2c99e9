"""Fault 2: PostgreSQL stopped and started (or left down) in the middle of a run.

Invariant 4 (one materialization is one transaction): a clean failure with a message naming the
database problem, or a retry that succeeds; never a partial write; the next run converges.

The server is an embedded pgserver of this test's own (its own data directory), stopped with
`sync_assets.db.embedded.stop_embedded_postgres` (fast shutdown: open transactions roll back)
and started again with `start_embedded_postgres` in a fresh process, as a restart by someone else
would be. (Started again in the same process it silently is not: see the last test.)
The run is held at the chosen point by a lane gate in front of the sandbox (during the fetch) or
by a lock the test holds (inside the write transaction, inside COMMIT).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import dagster as dg
import pytest
from sqlalchemy import create_engine, text

from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.db.embedded import ensure_database, start_embedded_postgres, stop_embedded_postgres

from .conftest import FaultReport
from .helpers import (
    COMMIT_BRAKE, FORGE, Brake, LaneGate, Observer, Runner, expected_orders, expire, failure_text, frame_diff,
    install_brakes, poll, state_row, table_digest, with_app_name,
)

PAGES = 6
KEY = ["region_id", "order_id"]
# what a clear database failure message contains (one of)
CLEAR = ("data database", "terminating connection", "server closed the connection", "connection to server",
         "could not connect", "administrator command", "Is the server running")


def _start_in_new_process(data_dir: Path) -> None:
    code = "import sys; from pathlib import Path; from sync_assets.db.embedded import start_embedded_postgres as s; s(Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, str(data_dir)], check=True, timeout=120, capture_output=True)


@dataclass
class Pg:
    data_dir: Path
    url: str

    def stop(self) -> None:
        stop_embedded_postgres(self.data_dir)

    def start(self) -> None:
        _start_in_new_process(self.data_dir)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pg]:
    data_dir = tmp_path_factory.mktemp("restart") / "pg"
    server = start_embedded_postgres(data_dir)
    try:
        yield Pg(data_dir, ensure_database(server, "faults"))
    finally:
        stop_embedded_postgres(data_dir)


@pytest.fixture(scope="module")
def world(pg: Pg) -> Iterator[tuple[EsiSandbox, LaneGate, str]]:
    sandbox = EsiSandbox(regions={int(FORGE): PAGES}, n_price_types=10, corporations={})
    gate = LaneGate(sandbox.app)
    with serve_in_thread(gate) as url:
        yield sandbox, gate, url


class Background:
    """A Dagster run (in-process executor) in a thread of this process."""

    def __init__(self, runner: Runner, **esi: Any):
        self.result: dg.ExecuteInProcessResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(runner, esi), daemon=True)
        self.thread.start()

    def _run(self, runner: Runner, esi: dict[str, Any]) -> None:
        try:
            self.result = runner.sync(**esi)
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def join(self, timeout: float = 240) -> dg.ExecuteInProcessResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not end"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


SCENARIOS = ["down-before-the-run", "restart-during-fetch", "down-during-fetch", "restart-inside-the-write", "restart-inside-commit"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_postgres_restart_mid_run_fails_cleanly_or_retries_and_never_writes_half(
    scenario: str, pg: Pg, world: tuple[EsiSandbox, LaneGate, str], fault_report: FaultReport,
) -> None:
    sandbox, gate, url = world
    entry = fault_report.entry(
        "2", "PostgreSQL stopped / restarted mid-run", invariant="4, 8", main="runs",
        injection=("The data database's own embedded server (pgserver) is stopped with `stop_embedded_postgres` (fast "
                   "shutdown) and started again with `start_embedded_postgres` while a run is held at a chosen point."),
    )
    entry.tests.append(f"test_02_postgres_restart.py::test_postgres_restart_mid_run_fails_cleanly_or_retries_and_never_writes_half[{scenario}]")
    runner = Runner(f"{url}/lane{scenario.replace('-', '')}", with_app_name(pg.url, "faults-run"))
    direct = Runner(url, pg.url)  # the next run: straight to the sandbox
    assert direct.sync().success
    old_frame = direct.table()
    observer = Observer(pg.url)
    install_brakes(observer.conn)
    sandbox.refresh("orders", int(FORGE))
    expire(observer.conn)
    old_digest, old_state = table_digest(observer.conn), state_row(observer.conn)
    new_frame, new_snap = expected_orders(sandbox), sandbox.snapshot("orders", int(FORGE))
    lane = scenario.replace("-", "")
    observer.close()
    brake = Brake(pg.url)
    try:
        if scenario == "down-before-the-run":
            pg.stop()
            gate.open(lane)
            result = runner.sync()
            pg.start()
        elif scenario in ("restart-during-fetch", "down-during-fetch"):
            run = Background(runner)
            assert poll(lambda: gate.held(lane), 120, 0.01), "the run never reached its fetch"
            if scenario == "restart-during-fetch":
                pg.restart()
                gate.open(lane)
                result = run.join()
            else:
                pg.stop()
                gate.open(lane)
                result = run.join()
                pg.start()
        else:
            run = Background(runner)
            assert poll(lambda: gate.held(lane), 120, 0.01), "the run never reached its fetch"
            phase = "merge:delete" if scenario == "restart-inside-the-write" else "commit"
            if phase == "commit":
                brake.advisory(COMMIT_BRAKE)
            else:  # a row the DELETE must remove, locked: the run stops inside its DELETE
                gone = sorted(set(old_frame.order_id) - set(new_frame.order_id))
                brake.row("esi.market_orders", {"region_id": int(FORGE), "order_id": gone[len(gone) // 2]})
            gate.open(lane)
            watcher = Observer(pg.url)
            blocked = poll(lambda: any(b.phase == phase and b.wait_event_type == "Lock" for b in watcher.backends("faults-run")), 120)
            watcher.close()
            assert blocked, f"the run never blocked in {phase}"
            pg.restart()
            result = run.join()
    finally:
        brake.dispose()
        if not (pg.data_dir / "postmaster.pid").exists():  # whatever happened, the server runs again
            pg.start()

    observer = Observer(pg.url)
    digest, state = table_digest(observer.conn), state_row(observer.conn)
    if result.success:
        outcome = "retried and succeeded: table = new snapshot"
        assert frame_diff(direct.table(), new_frame, KEY) is None, "a successful run left something else than the new snapshot"
        assert list(state["page_etags"]) == list(new_snap.etags)
    else:
        message = failure_text(result)
        assert any(word in message for word in CLEAR), f"unclear failure: {message[:2000]}"
        assert digest == old_digest, "a failed run changed the table"
        assert state == old_state, "a failed run changed the validators"
        outcome = "clean failure, table and validators unchanged"
        entry.notes.append(f"{scenario}: `{_root_cause(message)}`")
        print(f"FAILURE TEXT {scenario}:\n{message}\n")
    entry.tally("runs").add(f"{scenario}: {outcome}")
    observer.close()

    # the next run converges
    assert direct.sync().success
    assert frame_diff(direct.table(), new_frame, KEY) is None
    entry.tally("next run").add("converged to the new snapshot exactly")


def _root_cause(message: str) -> str:
    """The innermost error of a failure_text() chain, first line."""
    causes = [c for c in message.split("\n") if c and not c.startswith((" ", "\t", "dagster._core"))]
    return causes[-1][:240] if causes else ""


def test_start_after_stop_in_the_same_process_starts_the_server(pg: Pg, fault_report: FaultReport) -> None:
    """`start_embedded_postgres` after `stop_embedded_postgres` in one process must start the server
    again (its docstring: "Start (or join)"): what a long-lived process (a CLI, a test session)
    does after the server went down. This process started the server first (the `pg` fixture)."""
    entry = fault_report.entry("2", "PostgreSQL stopped / restarted mid-run")
    entry.tests.append("test_02_postgres_restart.py::test_start_after_stop_in_the_same_process_starts_the_server")
    try:
        stop_embedded_postgres(pg.data_dir)
        again = start_embedded_postgres(pg.data_dir)
        engine = create_engine(again)
        try:
            with engine.connect() as conn:
                ok = conn.execute(text("SELECT 1")).scalar() == 1
        except Exception as exc:  # noqa: BLE001 - the failure is the finding
            ok = False
            entry.notes.append(f"start after stop in one process: `{type(exc).__name__}: {str(exc).splitlines()[0][:160]}`")
        finally:
            engine.dispose()
        entry.tally("start after stop, same process").add("server running" if ok else "NOT started (bug)")
        assert ok, f"start_embedded_postgres returned {again} but no server is running there"
    finally:
        if not (pg.data_dir / "postmaster.pid").exists():
            pg.start()


def test_a_finished_run_gives_its_database_connections_back(pg: Pg, world: tuple[EsiSandbox, LaneGate, str],
                                                            fault_report: FaultReport) -> None:
    """Runs in a long-lived process (the in-process executor, `dagster dev`'s code server evaluating
    schedules) must not keep connections after they end: PostgreSQL refuses clients past
    max_connections (100 by default), for every process using the server."""
    import gc

    entry = fault_report.entry("2", "PostgreSQL stopped / restarted mid-run")
    entry.tests.append("test_02_postgres_restart.py::test_a_finished_run_gives_its_database_connections_back")
    sandbox, _, url = world
    database = ensure_database(pg.url.replace("/faults?", "/postgres?"), "faults_connections")
    runner = Runner(url, with_app_name(database, "faults-leak"))
    assert runner.sync().success  # tables exist from here on
    observer = Observer(database)
    gc.collect()
    gc.disable()  # what a busy process looks like between two collections
    try:
        counts = []
        for _ in range(5):
            sandbox.refresh("orders", int(FORGE))
            expire(observer.conn)
            assert runner.sync().success
            counts.append(len(observer.backends("faults-leak")))
    finally:
        gc.enable()
        gc.collect()
    after_gc = len(observer.backends("faults-leak"))
    observer.close()
    entry.tally("idle connections left after each of 5 in-process runs").add(
        f"{counts} (after a garbage collection: {after_gc})")
    # the warehouse keeps one small pool per database URL (<= 6); anything beyond grows with every run
    assert counts[-1] <= 6, (
        f"connections left by finished runs: {counts} ({after_gc} once the garbage collector ran): the budget engine "
        f"of each run is never disposed")
