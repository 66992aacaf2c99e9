"""Shared machinery of the fault tests: processes we start (and always stop), a Postgres observer
that sees the run's statements, brakes that hold a run at a chosen statement, table digests, and
in-process Dagster runs against the sandbox."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import dagster as dg
import pandas as pd
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool

from sync_assets.apis.esi import EsiResource
from sync_assets.apis.esi.datasets import MARKET_ORDERS
from sync_assets.core.datasets import Dataset
from sync_assets.orchestration.assets import IO_MANAGER_KEY, build_sync_asset
from sync_assets.apis.esi.spec import ESI
from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FORGE = "10000002"
ORDERS_ASSET = build_sync_asset(MARKET_ORDERS, ESI)
SCALE = float(os.environ.get("SYNC_ASSETS_FAULT_SCALE") or 1)
DDL_LOCK = 7_349_001  # sync_assets.warehouse.tables._DDL_LOCK: the first lock every run process takes
STATE_BRAKE, COMMIT_BRAKE = 7_349_902, 7_349_903


def scaled(n: int, minimum: int = 1) -> int:
    """`n` at SYNC_ASSETS_FAULT_SCALE=1, more for longer soaks."""
    return max(minimum, int(math.ceil(n * SCALE)))


def with_app_name(url: str, name: str) -> str:
    """The same database URL, tagging its connections (pg_stat_activity.application_name)."""
    return make_url(url).update_query_dict({"application_name": name}).render_as_string(hide_password=False)


# --- processes ----------------------------------------------------------------------------------

_LIVE: set["Proc"] = set()
_LIVE_LOCK = threading.Lock()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    tree, out, todo = _children_map(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Proc:
    """A command in its own process group; `close()` (or the session teardown) kills what is left."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = ROOT):
        self.argv, self.log_path = argv, log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid
        with _LIVE_LOCK:
            _LIVE.add(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """The whole run: the CLI process, its step worker(s) and anything they started."""
        stragglers = descendants(self.pid)
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        for pid in stragglers:  # anything that left the group (setsid) goes too
            _kill(pid, sig)

    def kill_children(self, sig: int = signal.SIGKILL) -> list[int]:
        """Only the workers below the CLI process (a step process dying, e.g. the OOM killer)."""
        pids = descendants(self.pid)
        for pid in pids:
            _kill(pid, sig)
        return pids

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.alive():
            self.kill_group(signal.SIGKILL)
        self.wait(30)
        for pid in descendants(self.pid):
            _kill(pid, signal.SIGKILL)
        self._log.close()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> "Proc":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def live_processes() -> set["Proc"]:
    with _LIVE_LOCK:
        return set(_LIVE)


def close_all_processes(keep: set["Proc"] = frozenset()) -> None:  # type: ignore[assignment]
    for proc in live_processes() - set(keep):
        proc.close()


def dagster_materialize(env: dict[str, str], log_path: Path, partition: str = FORGE, select: str = "esi/market_orders") -> Proc:
    """`dagster asset materialize` as a user types it (the code location's executor: in-process, one
    process per run)."""
    argv = [str(BIN / "dagster"), "asset", "materialize", "-m", "sync_assets.definitions", "--select", select]
    if partition:
        argv += ["--partition", partition]
    return Proc(argv, env, log_path)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any sync_assets / Dagster / SSO setting, plus `extra`."""
    drop = ("SYNC_ASSETS_", "DAGSTER_", "ESI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) or k == "SYNC_ASSETS_FAULT_SCALE"}
    env.update(extra)
    return env


# --- Postgres: observing and braking a run --------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    pid: int
    state: str
    query: str
    wait_event_type: str | None

    @property
    def phase(self) -> str:
        return phase_of(self.query, self.state)


def phase_of(query: str, state: str = "active") -> str:
    q = query.lstrip().upper()
    if q.startswith("COPY _SYNC_STAGE"):
        return "copy"
    if q.startswith("CREATE TEMP TABLE _SYNC_STAGE"):
        return "stage:create"
    if q.startswith("ANALYZE _SYNC_STAGE"):
        return "stage:analyze"
    if q.startswith('DELETE FROM "ESI"'):
        return "merge:delete"
    if q.startswith('UPDATE "ESI"'):
        return "merge:update"
    if q.startswith('INSERT INTO "ESI"'):
        return "merge:insert"
    if q.startswith("INSERT INTO SYNC_ASSETS.SYNC_STATE"):
        return "state"
    if q.startswith("COMMIT") and state == "active":
        return "commit"
    if q.startswith("SELECT COUNT(*)") and state != "idle":
        return "merge:count" if "= ANY(" not in q else "after-commit"
    return "other"


class Observer:
    """A connection of its own to the run's database: pg_stat_activity, digests, brakes."""

    def __init__(self, url: str, name: str = "faults-observer"):
        self.engine = create_engine(with_app_name(url, name), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self.conn = self.engine.connect()

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()

    def backends(self, application_name: str) -> list[Backend]:
        rows = self.conn.execute(
            text("SELECT pid, state, query, wait_event_type FROM pg_stat_activity "
                 "WHERE application_name = :a AND pid <> pg_backend_pid()"),
            {"a": application_name},
        ).all()
        return [Backend(r.pid, r.state or "", r.query or "", r.wait_event_type) for r in rows]

    def wait_gone(self, application_name: str, timeout_s: float = 30.0) -> int:
        """Wait until no backend of `application_name` is left (a killed client's backend finishes its
        statement, notices the closed socket and rolls back). Returns how many had to be terminated."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.backends(application_name):
                return 0
            time.sleep(0.01)
        return len(self.conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :a"), {"a": application_name}
        ).all())


def install_brakes(conn: Connection) -> None:
    """Test-owned triggers (not product code) that hold a write at the sync-state upsert or inside
    COMMIT while the test holds an advisory lock; free when the lock is not held."""
    conn.execute(text("CREATE SCHEMA IF NOT EXISTS faults"))
    conn.execute(text(
        "CREATE OR REPLACE FUNCTION faults.brake() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "PERFORM pg_advisory_lock_shared(TG_ARGV[0]::bigint); PERFORM pg_advisory_unlock_shared(TG_ARGV[0]::bigint); "
        "RETURN NULL; END $$"
    ))
    conn.execute(text("DROP TRIGGER IF EXISTS faults_state_brake ON sync_assets.sync_state"))
    conn.execute(text("DROP TRIGGER IF EXISTS faults_commit_brake ON sync_assets.sync_state"))
    conn.execute(text(f"CREATE TRIGGER faults_state_brake AFTER INSERT OR UPDATE ON sync_assets.sync_state "
                      f"FOR EACH STATEMENT EXECUTE FUNCTION faults.brake('{STATE_BRAKE}')"))
    conn.execute(text(f"CREATE CONSTRAINT TRIGGER faults_commit_brake AFTER INSERT OR UPDATE ON sync_assets.sync_state "
                      f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION faults.brake('{COMMIT_BRAKE}')"))


class Brake:
    """Holds one lock on a connection of its own until released: an advisory lock (the gate before
    a run's first statement, the trigger brakes), a row lock, a table lock, or an uncommitted key."""

    def __init__(self, url: str, name: str = "faults-brake"):
        self.engine = create_engine(with_app_name(url, name), poolclass=NullPool)
        self.conn: Connection | None = None
        self.kind = ""

    def _open(self) -> Connection:
        assert self.conn is None, "one lock per brake"
        self.conn = self.engine.connect()
        return self.conn

    def advisory(self, key: int) -> "Brake":
        conn = self._open()
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()  # session lock: survives the transaction
        self.kind = f"advisory:{key}"
        return self

    def row(self, table: str, where: dict[str, Any]) -> "Brake":
        conn = self._open()
        cond = " AND ".join(f'"{k}" = :{k}' for k in where)
        assert conn.execute(text(f"SELECT 1 FROM {table} WHERE {cond} FOR UPDATE"), where).all(), "no such row to lock"
        self.kind = "row"
        return self

    def table(self, table: str, mode: str = "SHARE") -> "Brake":
        self._open().execute(text(f"LOCK TABLE {table} IN {mode} MODE"))
        self.kind = f"table:{mode}"
        return self

    def pending_insert(self, table: str, row: dict[str, Any]) -> "Brake":
        cols = ", ".join(f'"{k}"' for k in row)
        vals = ", ".join(f":{k}" for k in row)
        self._open().execute(text(f"INSERT INTO {table} ({cols}) VALUES ({vals})"), row)
        self.kind = "pending_insert"
        return self

    def release(self) -> None:
        if self.conn is None:
            return
        try:
            if self.kind.startswith("advisory"):
                self.conn.execute(text("SELECT pg_advisory_unlock_all()"))
                self.conn.commit()
            else:
                self.conn.rollback()
            self.conn.close()
        except Exception:  # the server may be gone (restart tests): the lock went with it
            self.conn.invalidate()
        self.conn = None

    def dispose(self) -> None:
        self.release()
        self.engine.dispose()


# --- table state -----------------------------------------------------------------------------------

STATE_COLUMNS = "page_etags, last_modified, expires_at, data_version, row_count, last_checked_at, last_changed_at, last_success_at"


def table_digest(conn: Connection, region: str = FORGE) -> tuple[int, str]:
    row = conn.execute(text(
        "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY order_id)), '') "
        "FROM esi.market_orders t WHERE region_id = :r"), {"r": int(region)}).one()
    return int(row[0]), row[1]


def state_row(conn: Connection, dataset: str = "esi.market_orders", partition: str = FORGE) -> dict[str, Any] | None:
    row = conn.execute(text(f"SELECT {STATE_COLUMNS} FROM sync_assets.sync_state WHERE dataset = :d AND partition_key = :p"),
                       {"d": dataset, "p": partition}).first()
    return dict(row._mapping) if row else None


def expire(conn: Connection, dataset: str = "esi.market_orders", partition_like: str = "%") -> None:
    """Let the stored Expires pass (the clock moving on), so the next run asks the API again."""
    conn.execute(text("UPDATE sync_assets.sync_state SET expires_at = now() - interval '1 second' "
                      "WHERE dataset = :d AND partition_key LIKE :p"), {"d": dataset, "p": partition_like})


def expected_orders(sandbox: Any, region: str = FORGE) -> pd.DataFrame:
    frame = sandbox.orders_snapshot(int(region))
    frame.insert(0, "region_id", int(region))
    return frame


def frame_diff(actual: pd.DataFrame, expected: pd.DataFrame, key: list[str]) -> str | None:
    """None when both hold the same rows (same keys, same value in every column); else a summary."""
    if len(actual) != len(expected):
        a, e = set(map(tuple, actual[key].to_numpy().tolist())), set(map(tuple, expected[key].to_numpy().tolist()))
        return f"{len(actual)} rows vs {len(expected)} expected ({len(a - e)} extra keys, {len(e - a)} missing)"
    columns = list(actual.columns)
    a = actual.sort_values(key).reset_index(drop=True)
    e = expected[columns].sort_values(key).reset_index(drop=True)
    for column in columns:
        try:
            if a[column].equals(e[column].astype(a[column].dtype)):
                continue
        except (TypeError, ValueError):
            pass
        left = a[column].astype(object).where(a[column].notna(), None).tolist()
        right = e[column].astype(object).where(e[column].notna(), None).tolist()
        if left != right:
            bad = sum(x != y for x, y in zip(left, right))
            return f"column {column!r} differs in {bad} rows"
    return None


# --- in-process runs ---------------------------------------------------------------------------------

INSTANCES: list[dg.DagsterInstance] = []  # every instance runs were recorded in: the secret scan reads them


class Runner:
    """`dagster.materialize` of one sync asset against the sandbox (over HTTP) and a real Postgres."""

    def __init__(self, base_url: str, database_url: str, instance: dg.DagsterInstance | None = None, **esi: Any):
        self.base_url, self.database_url = base_url, database_url
        self.warehouse = PostgresWarehouse(database_url=database_url)
        self.instance = instance or dg.DagsterInstance.ephemeral()
        INSTANCES.append(self.instance)
        self.esi = dict(base_url=base_url, backoff_initial_s=0.01, backoff_max_s=0.05, expiry_guard_s=0, max_attempts=8)
        if "budget_database_url" in EsiResource.model_fields:  # budgets shared through Postgres, as in the definitions
            self.esi["budget_database_url"] = database_url
        self.esi.update(esi)

    def resources(self, **esi: Any) -> dict[str, Any]:
        return {"esi": EsiResource(**{**self.esi, **esi}), "warehouse": self.warehouse,
                IO_MANAGER_KEY: SnapshotIOManager(warehouse=self.warehouse)}

    def sync(self, asset: dg.AssetsDefinition = ORDERS_ASSET, partition: str | None = FORGE, *, full_refresh: bool = False,
             resources: dict[str, Any] | None = None, **esi: Any) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [asset], partition_key=partition, resources=resources or self.resources(**esi), instance=self.instance,
            raise_on_error=False, run_config={"ops": {asset.op.name: {"config": {"full_refresh": full_refresh}}}},
        )

    def table(self, dataset: Dataset = MARKET_ORDERS, partition: str | None = FORGE) -> pd.DataFrame:
        return self.warehouse.read_table(dataset, [partition] if dataset.partitioning and partition else None)

    def messages(self, result: dg.ExecuteInProcessResult) -> list[str]:
        return [e.user_message for e in self.instance.all_logs(result.run_id) if e.user_message]


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    texts = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            texts.append(f"{error.cls_name}: {error.message}")
            error = error.cause
    return "\n".join(texts)


def materialization_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    events = result.get_asset_materialization_events()
    assert len(events) == 1, f"{len(events)} materializations"
    return {k: getattr(v, "value", v) for k, v in events[0].materialization.metadata.items()}


def retry_lines(messages: Iterable[str]) -> list[str]:
    return [m for m in messages if "; retry " in m]


def poll(condition: Callable[[], Any], timeout_s: float, interval_s: float = 0.002) -> Any:
    """Call `condition` until it returns something truthy (returned) or the time is up (None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    return None


@dataclass
class Tally:
    """Counts for the report: what was tried and what came out."""

    tried: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: str, n: int = 1) -> None:
        self.tried += n
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n


def rng_for(name: str) -> random.Random:
    """A seeded RNG per test (SYNC_ASSETS_FAULT_SEED varies the run; the seed is in the report)."""
    return random.Random(f"{os.environ.get('SYNC_ASSETS_FAULT_SEED', '0')}:{name}")


# --- holding a run at its first request ------------------------------------------------------------

class LaneGate:
    """ASGI app in front of the sandbox: requests under `/laneN/...` wait until lane N is opened
    (then go on to the sandbox without the prefix), and are counted per lane. Lets the test start
    a run process early, while the previous one is still being checked, and release it on cue."""

    def __init__(self, app: Any):
        self.app = app
        self._lock = threading.Lock()
        self._open: set[str] = set()
        self._counts: dict[str, int] = {}
        self._held: dict[str, int] = {}

    def open(self, lane: int | str) -> None:
        with self._lock:
            self._open.add(str(lane))

    def count(self, lane: int | str) -> int:
        """Requests of the lane let through."""
        with self._lock:
            return self._counts.get(str(lane), 0)

    def held(self, lane: int | str) -> int:
        """Requests of the lane that arrived (let through or still waiting)."""
        with self._lock:
            return self._held.get(str(lane), 0)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        import asyncio
        import re

        if scope["type"] == "http":
            match = re.match(r"^/lane(\w+?)(/.*)$", scope["path"])
            if match:
                lane, path = match.group(1), match.group(2)
                scope = dict(scope, path=path, raw_path=path.encode())
                with self._lock:
                    self._held[lane] = self._held.get(lane, 0) + 1
                while True:
                    with self._lock:
                        if lane in self._open:
                            self._counts[lane] = self._counts.get(lane, 0) + 1
                            break
                    await asyncio.sleep(0.002)
        await self.app(scope, receive, send)


def install_always_expired(conn: Connection) -> None:
    """Test-owned trigger: every stored Expires is already past, so every run asks the API (and
    a run process started early never stops at the cache check)."""
    conn.execute(text("CREATE SCHEMA IF NOT EXISTS faults"))
    conn.execute(text(
        "CREATE OR REPLACE FUNCTION faults.expired() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "NEW.expires_at := now() - interval '1 second'; RETURN NEW; END $$"
    ))
    conn.execute(text("DROP TRIGGER IF EXISTS faults_always_expired ON sync_assets.sync_state"))
    conn.execute(text("CREATE TRIGGER faults_always_expired BEFORE INSERT OR UPDATE ON sync_assets.sync_state "
                      "FOR EACH ROW EXECUTE FUNCTION faults.expired()"))
