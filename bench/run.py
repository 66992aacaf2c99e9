"""sync_assets vs a Dagster asset on dlt's rest_api source vs the physical floor, in one run.

    .venv/bin/python -m bench.run --write bench/RESULTS.md            # what `make bench` runs
    .venv/bin/python -m bench.run --quick                              # smoke test (small sizes, 1 run)
    .venv/bin/python -m bench.run --workloads F:full,M,API --reps 1 --quick --write /tmp/b/RESULTS.md   # parts alone

One embedded PostgreSQL (pgserver) and one ESI sandbox (its own process, over HTTP on 127.0.0.1)
serve every system; every measured system runs as its own process under `/usr/bin/time -v`
(whole-process wall time, CPU time and peak RSS), systems are interleaved (the order rotates each
repetition) and every figure is the median of `--repeat` runs. See the generated RESULTS.md for
the method, the results, the targets and the profiles; raw runs go to results.json and the
pyinstrument trees to profiles/, next to the report (bench/ for the canonical run). ~25-30 min on
2 cores, plus about a minute per repetition for the F-5xx walk (paced by ESI's error limit) and up
to 90 s for a no-headers walk that crawls (killed at its timeout, reported as a lower bound);
`--only`/`--workloads`, `--systems`, `--repeat`/`--reps`, `--dlt-default-runs`, `--dlt-latency`,
`--no-dlt-default-m` trade time for coverage. A run that hangs is killed, reported with the query Postgres was running, and not
repeated. Not part of the test suite.

Workloads
  F     The Forge market orders (300 pages x 1000 orders), 0 ms latency: full sync into an empty
        table; unchanged re-sync (before Expires: no request; after Expires: all 304); re-sync
        after a snapshot refresh (~10% changed, ~5% gone, ~5% new)
  F-100 the same with 100 ms sandbox latency per request (full, unchanged/304)
  RL    the sandbox limits the route to R requests/s (its own sliding-window bucket, window 1 s,
        2R tokens: a 200 costs 2 tokens); time vs the bound pages/R and 429s
  F-noheaders  F full (in-process, fresh database) with the sandbox answering without X-Ratelimit-*
        headers (knob rate_limit_enabled=False; the route keeps its declared group market-order,
        12000 tokens / 15 min): time vs the same walk with headers (target <= 1.2x)
  F-5xx F full (in-process, fresh database) while the sandbox answers 30% of the route's requests
        with 502/503/504 (some HTML; error_seed = rep), ESI's error limit on (100 errors / 60 s):
        time, retries, exact data (rows and a fingerprint vs the sandbox's snapshot and the clean
        walk), 420s (must be 0)
  M     1,000,000 corporation assets (1000 pages, SSO token) - peak RSS and time; the same at
        250,000 assets to check that memory grows only with the DataFrame
  API   the SP-API and IRIS walks against their own sandboxes at their declared limits: one
        in-process materialization each (amazon/inventory_summaries of the US + CA seller at
        Amazon's real rates; iris/merchants with the sandbox and the resource on the same small
        plan, --iris-limit); page-walk time vs the bound the limit allows (target <= 1.1x), 429s
Systems
  sync_cli     `dagster asset materialize -m sync_assets.definitions` (whole process, in_process executor)
  sync_inproc  in-process `dagster.materialize` of the same asset (bench.workers sync)
  dlt_csv      a Dagster asset running dlt's rest_api source, merge, loader_file_format="csv" (COPY)
  dlt_default  the same with dlt's default loader file format (INSERT VALUES); once per workload by
               default, only to show that csv is dlt's faster configuration
  dlt_script_csv, dlt_script_default  the same dlt pipeline as a plain script, no Dagster
               (`python bench/dlt_pipeline.py`; F full and M)
  floor        concurrent fetch(+orjson parse) only, and COPY only (bench.workers floor)
  dagster      a trivial asset materialized the same way (Dagster's own fixed cost)
  dagster_frozen_exit  the same, its heap frozen at exit as sync_assets' code location does
  sync_inproc_nobudget  diagnostic: sync_inproc without the Postgres-shared API budget
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # pgserver/platformdirs on a headless machine

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DAGSTER = str(Path(sys.executable).with_name("dagster"))
TIME = "/usr/bin/time"
FORGE = 10000002
CORP_M, CORP_M4 = 98000001, 98000002  # 1,000,000 and 250,000 assets (ids differ modulo 97)
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
ISSUER = "login.eveonline.com"
IRIS_KEY = "iris-bench-key"  # the IRIS sandbox's accepted X-API-KEY (offline: not a secret)
# F variants measured in the F full rotation, reported as workloads of their own (system sync_inproc)
VARIANTS = {"sync_inproc_noheaders": "F-noheaders", "sync_inproc_storm": "F-5xx"}
# dlt systems: (loader file format, plain script?): inside a Dagster asset (bench/dlt_defs.py) or as
# a plain script (bench/dlt_pipeline.py), both on bench/dlt_source.py
DLT_SYSTEMS = {"dlt_csv": ("csv", False), "dlt_default": ("default", False),
               "dlt_script_csv": ("csv", True), "dlt_script_default": ("default", True)}


# =============================================================================== measuring processes


@dataclass
class Run:
    workload: str
    system: str
    phase: str
    rep: int
    ok: bool = False
    wall: float = 0.0  # whole process, seconds
    cpu: float = 0.0  # user + system seconds of the process tree
    peak_rss: int = 0  # bytes
    inner: dict = field(default_factory=dict)  # the worker's own report (in-process time, metadata...)
    server: dict = field(default_factory=dict)  # sandbox counters of the route during the run
    error: str = ""

    @property
    def label(self) -> str:
        return f"{self.workload}/{self.phase}/{self.system}#{self.rep}"


def timed_process(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, float, float, int]:
    """(exit status, wall s, cpu s, peak RSS bytes) of `cmd` under /usr/bin/time -v (falls back to
    wait4's rusage when /usr/bin/time is missing). On timeout the whole process group is killed
    and subprocess.TimeoutExpired raised."""
    use_time = Path(TIME).exists()
    tfile = log.with_suffix(".time")
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([TIME, "-v", "-o", str(tfile), *cmd] if use_time else cmd, cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if use_time:
                proc.wait(timeout)
            else:
                deadline = time.monotonic() + timeout
                while True:
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        proc.returncode = os.waitstatus_to_exitcode(status)
                        break
                    if time.monotonic() > deadline:
                        raise subprocess.TimeoutExpired(cmd, timeout)
                    time.sleep(0.02)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    outer = time.perf_counter() - started
    if not use_time:
        return proc.returncode, outer, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024
    fields = {}
    for line in tfile.read_text().splitlines():
        key, _, value = line.strip().rpartition(": ")
        fields[key] = value
    wall = _clock(fields.get("Elapsed (wall clock) time (h:mm:ss or m:ss)", "")) or outer
    cpu = float(fields.get("User time (seconds)", 0)) + float(fields.get("System time (seconds)", 0))
    rss = int(fields.get("Maximum resident set size (kbytes)", 0)) * 1024
    status = int(fields.get("Exit status", proc.returncode))
    return status, wall, cpu, rss


def _clock(value: str) -> float:
    try:
        parts = [float(p) for p in value.split(":")]
    except ValueError:
        return 0.0
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# =============================================================================== the sandbox process


class Sandbox:
    """The ESI sandbox in its own process (it must not share our GIL), knobs via its admin API."""

    module = "sync_assets.apis.esi.sandbox.server"  # its `run(port=..., **kwargs)` serves until killed
    ready = "/_sandbox/state"  # an admin route that answers once it serves

    def __init__(self, workdir: Path, name: str, **kwargs: Any):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = f"from {self.module} import run; run(port={self.port}, **{kwargs!r})"
        self.log = open(workdir / f"sandbox_{name}.log", "ab")
        self.process = subprocess.Popen([PY, "-c", code], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"sandbox exited with {self.process.returncode}; see {self.log.name}")
            try:
                httpx.get(f"{self.url}{self.ready}", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def post(self, action: str, payload: dict | None = None) -> Any:
        response = self.client.post(f"/_sandbox/{action}", json=payload or {})
        response.raise_for_status()
        return response.json()

    def configure(self, **knobs: Any) -> None:
        self.post("config", knobs)

    def before_run(self) -> None:
        self.post("limits/reset")
        self.post("counters/reset")

    def counters(self, route: str) -> dict:
        return self.client.get("/_sandbox/counters").raise_for_status().json().get(route, {})

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class AmazonSandboxProcess(Sandbox):
    """The SP-API + LWA sandbox (sync_assets.apis.amazon.sandbox) in its own process. Its counters
    are per (seller, operation): `counters(op)` sums an operation over the sellers."""

    module = "sync_assets.apis.amazon.sandbox.server"
    ready = "/_sandbox/config"

    def counters(self, route: str) -> dict:
        data = self.client.get("/_sandbox/counters").raise_for_status().json()
        out: dict[str, Any] = {"requests": 0, "status_429": 0, "statuses": {}, "peak_per_second": 0.0, "sellers": []}
        for key, c in data.get("operations", {}).items():
            seller, _, op = key.partition("|")
            if op != route:
                continue
            out["sellers"].append(seller)
            out["requests"] += c["requests"]
            out["status_429"] += c["throttled"]
            out["peak_per_second"] = max(out["peak_per_second"], c.get("peak_per_second", 0.0))
            for status, n in c.get("statuses", {}).items():
                out["statuses"][status] = out["statuses"].get(status, 0) + n
        out["status_200"] = out["statuses"].get("200", 0)
        out["throttled_all_operations"] = data.get("throttled")
        out["lwa"] = data.get("lwa")
        return out


class IrisSandboxProcess(Sandbox):
    """The IRIS CRM sandbox (sync_assets.apis.iris.sandbox) in its own process. Its counters are
    per API key: `counters(route)` sums the route over the keys; the 429s are the keys' (its
    limiter is one window per key, shared by every route)."""

    module = "sync_assets.apis.iris.sandbox.server"

    def counters(self, route: str) -> dict:
        data = self.client.get("/_sandbox/counters").raise_for_status().json()
        out: dict[str, Any] = {"requests": 0, "route_requests": 0, "status_429": 0, "statuses": {}, "max_in_window": 0,
                               "max_in_sliding_window": 0, "window_spreads": []}
        for c in data.values():
            out["window_spreads"] += c.get("window_spreads", [])
            out["requests"] += c["requests"]
            out["route_requests"] += c.get("routes", {}).get(route, 0)
            out["status_429"] += c["rate_limited"]
            out["max_in_window"] = max(out["max_in_window"], c["max_in_window"])
            out["max_in_sliding_window"] = max(out["max_in_sliding_window"], c["max_in_sliding_window"])
            for status, n in c.get("statuses", {}).items():
                out["statuses"][status] = out["statuses"].get(status, 0) + n
        out["status_200"] = out["statuses"].get("200", 0)
        return out


# =============================================================================== the harness


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args, self.work = args, workdir
        self.runs: list[Run] = []
        self.timed_out: dict[tuple[str, str, str], str] = {}
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.counter = 0
        self.pgdata = workdir / "pg"
        from sync_assets.db.embedded import start_embedded_postgres

        self.pg_url = start_embedded_postgres(self.pgdata)
        self.dagster_home = workdir / "dagster_home"
        self.dagster_home.mkdir()
        from sync_assets.runtime import write_instance_yaml

        write_instance_yaml(self.dagster_home)  # the project's instance config with Postgres storage (DAGSTER_PG_URL)
        self.sqlite_home = workdir / "dagster_home_sqlite"  # no dagster.yaml: Dagster's default (SQLite) storage
        self.sqlite_home.mkdir()
        self.dagster_pg = self.database("dagster")
        self.create_dagster_storage()
        from cryptography.fernet import Fernet

        self.token_key = Fernet.generate_key().decode()
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_ASSETS_", "DAGSTER_", "ESI_", "BENCH_"))}
        self.base_env.update(DAGSTER_HOME=str(self.dagster_home), DAGSTER_PG_URL=self.dagster_pg, PYTHONUNBUFFERED="1",
                             RUNTIME__DLTHUB_TELEMETRY="false")
        self.sandbox: Sandbox | None = None
        self.amazon: dict[str, Any] | None = None  # the SP-API sandbox's app credentials and the synced seller
        from sync_assets.apis.esi import EsiResource

        self.budget_field = "budget_database_url" in EsiResource.model_fields  # the shared API budget exists
        self.started = time.monotonic()
        self.load_before = os.getloadavg()

    # ------------------------------------------------------------------ databases

    def database(self, name: str) -> str:
        from sync_assets.db.embedded import ensure_database

        return ensure_database(self.pg_url, name)

    def fresh_database(self, name: str) -> str:
        self.drop_database(name)
        return self.database(name)

    def drop_database(self, name: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.pg_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    def sql(self, url: str, statement: str) -> Any:
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement))
                return result.all() if result.returns_rows else result.rowcount
        finally:
            engine.dispose()

    def expire(self, url: str) -> None:
        """Let the stored Expires pass, as if the clock had moved (what sync_assets_tests do)."""
        self.sql(url, "UPDATE sync_assets.sync_state SET expires_at = now() - interval '1 second'")

    def stop(self) -> None:
        if self.sandbox:
            self.sandbox.stop()
        from sync_assets.db.embedded import stop_embedded_postgres

        stop_embedded_postgres(self.pgdata)

    # ------------------------------------------------------------------ running one system once

    def measure(self, run: Run, cmd: list[str], env: dict[str, str], route: str, result_file: Path | None = None) -> Run:
        self.counter += 1
        log = self.logs / f"{self.counter:03d}_{run.workload}_{run.phase}_{run.system}_{run.rep}.log".replace("/", "-")
        cell = (run.workload, run.phase, run.system)
        if cell in self.timed_out:  # a hang is reported once, not paid for in every repetition
            run.error = f"skipped: timed out in an earlier repetition ({self.timed_out[cell]})"
            self.runs.append(run)
            print(f"[{time.monotonic() - self.started:6.0f}s] {run.label:45s} {run.error}", flush=True)
            return run
        timeout = self.timeout_for(run)
        if self.sandbox:
            self.sandbox.before_run()
        try:
            rc, run.wall, run.cpu, run.peak_rss = timed_process(cmd, env, log, timeout)
        except subprocess.TimeoutExpired:
            rc, run.wall = -1, timeout
            self.timed_out[cell] = f"killed after {timeout:.0f}s"
            active = self.terminate_backends()
            run.error = (f"timeout: killed after {timeout:.0f}s"
                         + (f"; Postgres was still running: {' | '.join(active)}" if active else "")
                         + f"; last log line: {_tail(log, 1)[:300]}")
        if self.sandbox:
            run.server = self.sandbox.counters(route)
        if result_file is not None and result_file.exists():
            run.inner = json.loads(result_file.read_text())
        run.ok = rc == 0 and run.inner.get("ok", True) is not False
        if not run.ok and not run.error:
            run.error = run.inner.get("error") or _tail(log)
        self.runs.append(run)
        status = "ok" if run.ok else f"FAILED ({run.error[:300]})"
        inner = f" inner {run.inner['seconds']:.2f}s" if isinstance(run.inner.get("seconds"), (int, float)) else ""
        print(f"[{time.monotonic() - self.started:6.0f}s] {run.label:45s} wall {run.wall:6.2f}s{inner} cpu {run.cpu:6.2f}s "
              f"rss {run.peak_rss / 2**20:6.0f} MB  {status}", flush=True)
        return run

    def timeout_for(self, run: Run) -> float:
        """Generous bounds (several times the slowest run seen on a loaded machine): a run that
        exceeds them is hung, e.g. on a slow query, and is reported as such."""
        if run.workload == "M":
            return 900.0 if run.system.startswith("dlt") else 420.0
        if run.workload == "API":  # paced walks of 10-40 s at the declared limits
            return 600.0
        if run.system.startswith("dlt"):
            return 400.0
        if run.workload == "F-5xx":  # paced by ESI's error limit (100 errors / 60 s): a minute or two
            return 300.0 * self.args.pages / 300 + 60.0
        return 60.0 * self.args.pages / 300 + 30.0

    def terminate_backends(self) -> list[str]:
        """A killed client leaves its query running in Postgres: say which (the diagnosis) and stop
        it, so that it does not load the machine during the next measurements."""
        where = "WHERE datname NOT IN ('postgres', 'dagster') AND pid <> pg_backend_pid()"
        active: list[str] = []
        with contextlib.suppress(Exception):
            rows = self.sql(self.pg_url, "SELECT round(extract(epoch FROM now() - query_start)) AS s, left(query, 400) AS q "
                                         f"FROM pg_stat_activity {where} AND state = 'active'")
            active = [f"{int(r.s)} s in `{' '.join(r.q.split())}`" for r in rows]
            self.sql(self.pg_url, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity {where}")
        return active

    def sync_env(self, db: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        assert self.sandbox
        env = dict(self.base_env, SYNC_ASSETS_ESI_URL=self.sandbox.url, SYNC_ASSETS_DATABASE_URL=db)
        if extra:
            env.update(extra)
        return env

    def sso_env(self) -> dict[str, str]:
        from sync_assets.apis.esi.sandbox.sso import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET

        assert self.sandbox
        return {"ESI_SSO_URL": self.sandbox.url, "ESI_SSO_ISSUER": ISSUER, "ESI_CLIENT_ID": SANDBOX_CLIENT_ID,
                "ESI_CLIENT_SECRET": SANDBOX_CLIENT_SECRET, "SYNC_ASSETS_TOKEN_KEY": self.token_key}

    def sync_cli(self, run: Run, db: str, asset: str, partition: str, route: str, extra: dict[str, str] | None = None) -> Run:
        cmd = [DAGSTER, "asset", "materialize", "-m", "sync_assets.definitions", "--select", asset,
               "--partition", partition]  # the code location's executor is in_process
        self.measure(run, cmd, self.sync_env(db, extra), route)
        run.inner = self.last_materialization(asset) if run.ok else {}
        if run.ok and run.inner.get("run_ok") is False:
            run.ok, run.error = False, "run did not succeed"
        return run

    def sync_inproc(self, run: Run, db: str, asset: str, partition: str | None, route: str, extra: dict[str, str] | None = None,
                    profile: str | None = None, serial: bool = False, profile_limit: float | None = None) -> Run:
        out = self.work / f"result_{self.counter + 1}.json"
        cmd = [PY, "-m", "bench.workers", "sync", "--asset", asset, *(["--partition", partition] if partition else []), "--out", str(out)]
        if profile:
            cmd += ["--profile", profile]
            if profile_limit:
                cmd += ["--profile-limit", str(profile_limit)]
        if serial:
            cmd += ["--serial-fetch"]
        return self.measure(run, cmd, self.sync_env(db, extra), route, out)

    def create_dagster_storage(self) -> None:
        """Dagster's storage (its tables in the `dagster` database; the SQLite files of the default
        storage) created once before anything is timed, as a deployment's is: otherwise the first
        timed Dagster process of each kind would create it (~3 s for the Postgres tables)."""
        import dagster as dg

        for home in (self.sqlite_home, self.dagster_home):  # Dagster's default storage (SQLite files), then ours
            os.environ["DAGSTER_HOME"], os.environ["DAGSTER_PG_URL"] = str(home), self.dagster_pg
            with dg.DagsterInstance.get() as instance:
                instance.get_run_records(limit=1)

    def last_materialization(self, asset: str) -> dict:
        """Metadata of the materialization the last CLI run recorded in the Dagster instance."""
        import dagster as dg

        os.environ["DAGSTER_HOME"], os.environ["DAGSTER_PG_URL"] = str(self.dagster_home), self.dagster_pg
        with dg.DagsterInstance.get() as instance:
            [record] = instance.get_run_records(limit=1)
            events = instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            out: dict[str, Any] = {"run_ok": record.dagster_run.status == dg.DagsterRunStatus.SUCCESS}
            for event in events:
                if event.asset_materialization and event.asset_materialization.asset_key == dg.AssetKey(asset.split("/")):
                    md = event.asset_materialization.metadata
                    out["metadata"] = {k: _plain(getattr(v, "value", v)) for k, v in md.items()}
            return out

    def dlt(self, run: Run, db_name: str, fmt: str, path: str, params: dict, primary_key: str, table: str,
            route: str, token: str | None = None, script: bool = False) -> Run:
        """dlt's rest_api source into `db_name`: inside a Dagster asset (bench/dlt_defs.py, materialized
        like sync_cli) or, `script`, as a plain script (`python bench/dlt_pipeline.py`, no Dagster);
        both run bench/dlt_source.py with the same configuration."""
        assert self.sandbox
        out = self.work / f"result_{self.counter + 1}.json"
        env = dict(
            self.base_env, BENCH_DLT_URL=self.sandbox.url, BENCH_DLT_PATH=path, BENCH_DLT_PARAMS=json.dumps(params),
            BENCH_DLT_PRIMARY_KEY=primary_key, BENCH_DLT_TABLE=table, BENCH_DLT_FORMAT=fmt,
            BENCH_DLT_CREDENTIALS=f"postgresql://postgres:@localhost/{db_name}?host={self.pgdata}",
            BENCH_DLT_PIPELINES_DIR=str(self.work / "dlt" / db_name), BENCH_RESULT_FILE=str(out),
        )
        if token:
            env["BENCH_DLT_TOKEN"] = token
        if script:
            cmd = [PY, "bench/dlt_pipeline.py"]  # cwd: the repository root
        else:
            cmd = [DAGSTER, "asset", "materialize", "-m", "bench.dlt_defs", "--select", "dlt_sync", "--config-json", json.dumps(IN_PROCESS)]
        self.measure(run, cmd, env, route, out)
        if run.ok:
            url = self.database(db_name)
            run.inner["rows_in_table"] = self.sql(url, f"SELECT count(*) FROM esi_dlt.{table}")[0][0]
            with contextlib.suppress(Exception):  # rows of the last load (dlt keeps its staging table)
                run.inner["rows_loaded"] = self.sql(url, f"SELECT count(*) FROM esi_dlt_staging.{table}")[0][0]
        return run

    def dlt_system(self, run: Run, system: str, db_name: str, **kwargs: Any) -> Run:
        """One of DLT_SYSTEMS: dlt_csv, dlt_default (inside Dagster), dlt_script_csv, dlt_script_default."""
        fmt, script = DLT_SYSTEMS[system]
        return self.dlt(run, db_name, fmt, script=script, **kwargs)

    def selected(self, systems: list[str]) -> list[str]:
        """`--systems`: the F and M rotations keep only the systems named (all by default)."""
        chosen = self.args.systems
        return [s for s in systems if not chosen or s in chosen]

    def floor(self, run: Run, db: str | None, path: str, params: dict, dataset: str, context: dict, route: str,
              token: str | None = None) -> Run:
        assert self.sandbox
        out = self.work / f"result_{self.counter + 1}.json"
        cmd = [PY, "-m", "bench.workers", "floor", "--esi-url", self.sandbox.url, "--path", path, "--params", json.dumps(params),
               "--dataset", dataset, "--context", json.dumps(context), "--out", str(out)]
        if db:
            cmd += ["--database-url", db]
        if token:
            cmd += ["--token", token]
        return self.measure(run, cmd, self.base_env, route, out)

    def dagster_fixed(self, run: Run, storage: str, executor: str, frozen_exit: bool = False) -> Run:
        env = dict(self.base_env)
        if frozen_exit:
            env["BENCH_FREEZE_AT_EXIT"] = "1"
        if storage == "sqlite":
            env["DAGSTER_HOME"] = str(self.sqlite_home)
        cmd = [DAGSTER, "asset", "materialize", "-m", "bench.trivial_defs", "--select", "trivial"]
        if executor == "in_process":
            cmd += ["--config-json", json.dumps(IN_PROCESS)]
        return self.measure(run, cmd, env, "orders")

    # ------------------------------------------------------------------ SSO (workload M)

    def connect_director(self, db: str, corporation_id: int) -> None:
        """A director of the corporation logs in: its refresh token is stored (encrypted) in `db`."""
        from functools import partial

        from sqlalchemy import create_engine

        from sync_assets.apis.esi import EsiResource
        from sync_assets.apis.esi.auth import lookup_identity
        from sync_assets.apis.esi.sso import tokens
        from sync_assets.apis.esi.sso.crypto import TokenCipher
        from sync_assets.apis.esi.sso.sso import EveSso

        assert self.sandbox
        env = self.sso_env()
        grant = self.sandbox.post("characters", {"corporation_id": corporation_id, "director": True})
        engine = create_engine(db)
        try:
            with EveSso(self.sandbox.url, env["ESI_CLIENT_ID"], env["ESI_CLIENT_SECRET"], issuer=ISSUER) as sso:
                tokens.add_refresh_token(engine, sso, grant["refresh_token"], lookup=partial(lookup_identity, EsiResource(base_url=self.sandbox.url)),
                                         cipher=TokenCipher(self.token_key))
        finally:
            engine.dispose()

    def access_token(self, corporation_id: int) -> str:
        """An access token of a new director (what a dlt user would paste into the source config)."""
        from sync_assets.apis.esi.sso.sso import EveSso

        assert self.sandbox
        env = self.sso_env()
        grant = self.sandbox.post("characters", {"corporation_id": corporation_id, "director": True})
        with EveSso(self.sandbox.url, env["ESI_CLIENT_ID"], env["ESI_CLIENT_SECRET"], issuer=ISSUER) as sso:
            return sso.refresh(grant["refresh_token"]).access_token

    def add_dynamic_partition(self, name: str, key: str) -> None:
        import dagster as dg

        os.environ["DAGSTER_HOME"], os.environ["DAGSTER_PG_URL"] = str(self.dagster_home), self.dagster_pg
        with dg.DagsterInstance.get() as instance:
            if not instance.has_dynamic_partition(name, key):
                instance.add_dynamic_partitions(name, [key])

    # ------------------------------------------------------------------ workloads

    def start_sandbox(self, name: str, **kwargs: Any) -> Sandbox:
        if self.sandbox:
            self.sandbox.stop()
        self.sandbox = Sandbox(self.work, name, **kwargs)
        return self.sandbox

    def forge_sandbox(self) -> Sandbox:
        # Orders cached 3600 s (not ESI's 300 s) so that the expiry guard never fires mid-benchmark;
        # the re-syncs after Expires move the stored expires_at instead (Bench.expire).
        return self.start_sandbox(
            "forge", regions={FORGE: self.args.pages}, n_price_types=100, corporations={},
            cache_seconds={"orders": 3600}, rate_limit_tokens={"market-order": 10**9},
        )

    def workload_f(self, rep: int) -> None:
        sandbox = self.forge_sandbox()
        orders = dict(path=f"/markets/{FORGE}/orders", params={"order_type": "all"})
        dlt_orders = dict(path=f"markets/{FORGE}/orders", params={"order_type": "all"}, primary_key="order_id", table="market_orders")
        asset, part = "esi/market_orders", str(FORGE)
        dbs = {s: self.fresh_database(f"f{rep}_{s}")
               for s in ("sync_cli", "sync_inproc", "sync_inproc_nobudget", "floor", "sync_inproc_noheaders", "sync_inproc_storm")}
        runs: dict[str, Run] = {}
        dlt_dbs = {s: f"f{rep}_{s}" for s in DLT_SYSTEMS}
        for name in dlt_dbs.values():
            self.fresh_database(name)

        def full(system: str) -> Callable[[], Any]:
            workload = VARIANTS.get(system, "F")  # the variants are workloads of their own, run in this rotation
            r = runs[system] = Run(workload, system if workload == "F" else "sync_inproc", "full", rep)
            return {
                "sync_cli": lambda: self.sync_cli(r, dbs["sync_cli"], asset, part, "orders"),
                # the same in-process walk with the sandbox sending no X-Ratelimit-* headers, and under a 5xx storm
                "sync_inproc_noheaders": lambda: self.sync_no_headers(r, dbs[system], asset, part),
                "sync_inproc_storm": lambda: self.sync_storm(r, dbs[system], asset, part, seed=rep),
                "sync_inproc": lambda: self.sync_inproc(r, dbs["sync_inproc"], asset, part, "orders"),
                # diagnostic A/B: the same without the Postgres-shared API budget (one transaction per request)
                "sync_inproc_nobudget": lambda: self.sync_inproc(r, dbs["sync_inproc_nobudget"], asset, part, "orders",
                                                                 {"BENCH_ESI_OVERRIDES": json.dumps({"budget_database_url": None})}),
                # dlt inside a Dagster asset and as a plain script, each with csv (COPY) and its default (INSERT)
                **{name: (lambda name=name: self.dlt_system(r, name, dlt_dbs[name], route="orders", **dlt_orders)) for name in DLT_SYSTEMS},
                "floor": lambda: self.floor(r, dbs["floor"], dataset="esi.market_orders", context={"region_id": FORGE}, route="orders", **orders),
                "dagster": lambda: self.dagster_fixed(r, "postgres", "in_process"),
                "dagster_frozen_exit": lambda: self.dagster_fixed(r, "postgres", "in_process", frozen_exit=True),
                "dagster_multiprocess": lambda: self.dagster_fixed(r, "postgres", "multiprocess"),
                "dagster_sqlite": lambda: self.dagster_fixed(r, "sqlite", "in_process"),
            }[system]

        systems = ["sync_cli", "sync_inproc", "dlt_csv", "dlt_script_csv", "floor", "dagster", "dagster_frozen_exit",
                   "sync_inproc_noheaders", "sync_inproc_storm"]
        if self.budget_field:
            systems.append("sync_inproc_nobudget")
        if rep < self.args.dlt_default_runs:  # only to show which dlt configuration is the faster
            systems += ["dlt_default", "dlt_script_default"]
        if rep == 0:  # what the executor and the storage choice cost (reported, not compared)
            systems += ["dagster_multiprocess", "dagster_sqlite"]
        for system in rotate(self.selected(systems), rep):
            full(system)()
        # exact data: every table of the snapshot (generation 0) against the sandbox's row count and
        # against the with-headers, error-free walk (before the re-syncs change anything)
        snapshot_rows = self.snapshot_rows(FORGE)
        for system in ("sync_inproc", "sync_inproc_noheaders", "sync_inproc_storm"):
            if system not in runs:
                continue
            r = runs[system]
            r.inner["snapshot_rows"] = snapshot_rows
            r.inner.update(self.table_fingerprint(dbs[system], FORGE))
        f_dbs = [f"f{rep}_{s}" for s in (*dbs, *DLT_SYSTEMS)]
        if self.args.f_full_only:  # --only F:full: the full-sync rotation alone
            for name in f_dbs:
                self.drop_database(name)
            return

        def resync(phase: str, system: str) -> None:
            r = Run("F", system, phase, rep)
            if system in DLT_SYSTEMS:
                self.dlt_system(r, system, dlt_dbs[system], route="orders", **dlt_orders)
                return
            if phase != "unchanged_cached":
                self.expire(dbs[system])
            if system == "sync_inproc_nobudget":
                self.sync_inproc(r, dbs[system], asset, part, "orders", {"BENCH_ESI_OVERRIDES": json.dumps({"budget_database_url": None})})
            else:
                (self.sync_cli if system == "sync_cli" else self.sync_inproc)(r, dbs[system], asset, part, "orders")

        # unchanged: before Expires sync_assets does not ask at all (what most schedule ticks cost:
        # measured as a whole process); after it, every page is 304
        if self.selected(["sync_cli"]):
            resync("unchanged_cached", "sync_cli")
        for system in rotate(self.selected(["sync_cli", "sync_inproc", "dlt_csv"] + (["sync_inproc_nobudget"] if self.budget_field else [])), rep):
            resync("unchanged", system)
        sandbox.post("refresh", {"route": "orders", "region_id": FORGE})
        for system in rotate(self.selected(["sync_cli", "sync_inproc", "dlt_csv"]), rep):
            resync("refreshed", system)

        # F-100: the same snapshot (generation 1) behind 100 ms per request, into empty tables
        sandbox.configure(latency=0.1)
        dbs100 = {s: self.fresh_database(f"f100_{rep}_{s}") for s in ("sync_cli", "sync_inproc")}
        for system in rotate(["sync_cli", "sync_inproc", "floor"] + (["dlt_csv"] if rep == 0 and self.args.dlt_latency else []), rep):
            r = Run("F-100", system, "full", rep)
            if system == "floor":
                self.floor(r, None, dataset="esi.market_orders", context={"region_id": FORGE}, route="orders", **orders)
            elif system == "dlt_csv":
                name = f"f100_{rep}_dlt_csv"
                self.fresh_database(name)
                self.dlt(r, name, "csv", route="orders", **dlt_orders)
                self.drop_database(name)
            else:
                (self.sync_cli if system == "sync_cli" else self.sync_inproc)(r, dbs100[system], asset, part, "orders")
        self.expire(dbs100["sync_inproc"])
        self.sync_inproc(Run("F-100", "sync_inproc", "unchanged", rep), dbs100["sync_inproc"], asset, part, "orders")
        sandbox.configure(latency=0.0)

        # RL: R requests/s on the route: the sandbox's sliding-window bucket with a 1 s window and
        # 2R tokens (a 200 costs 2 tokens, a 304 1, as on ESI)
        rate = self.args.rate
        sandbox.configure(rate_limit_window=1, rate_limit_tokens={"market-order": 2 * rate})
        db = self.fresh_database(f"rl_{rep}")
        r = self.sync_inproc(Run("RL", "sync_inproc", "full", rep), db, asset, part, "orders")
        r.inner["rate"] = rate
        sandbox.configure(rate_limit_window=900, rate_limit_tokens={"market-order": 10**9})
        for name in [*f_dbs, *(f"f100_{rep}_{s}" for s in ("sync_cli", "sync_inproc")), f"rl_{rep}"]:
            self.drop_database(name)

    def sync_no_headers(self, run: Run, db: str, asset: str, partition: str) -> Run:
        """The in-process sync with the sandbox's rate limiting off for every route (knob
        rate_limit_enabled=False: no X-Ratelimit-* headers, no bucket, no 429; the error-limit
        headers stay). The product still knows the route's group from its declaration."""
        assert self.sandbox
        self.sandbox.configure(rate_limit_enabled=False)
        try:
            headers = self.probe_headers()
            self.sync_inproc(run, db, asset, partition, "orders")
        finally:
            self.sandbox.configure(rate_limit_enabled=True)
        run.inner["ratelimit_headers_sent"] = headers  # what page 1 carried (checked before the run): must be []
        return run

    def sync_storm(self, run: Run, db: str, asset: str, partition: str, seed: int, error_rate: float = 0.3) -> Run:
        """The in-process sync while the sandbox answers `error_rate` of the route's requests with an
        injected 502/503/504 (3 in 10 of them HTML pages), ESI's error limit on at the sandbox's default."""
        assert self.sandbox
        knobs = self.sandbox.client.get("/_sandbox/config").raise_for_status().json()
        self.sandbox.configure(error_rate=error_rate, error_seed=seed, error_routes=["orders"])
        try:
            self.sync_inproc(run, db, asset, partition, "orders")
        finally:
            self.sandbox.configure(error_rate=0.0, error_routes=None)
        run.inner.update(error_rate=error_rate, error_seed=seed, error_limit=knobs["error_limit"] if knobs["error_limit_enabled"] else None,
                         error_limit_window=knobs["error_limit_window"])
        with contextlib.suppress(Exception):  # 420s are served on every route once the error limit is spent
            run.inner["status_420_all_routes"] = self.sandbox.counters("total").get("status_420")
        return run

    def probe_headers(self) -> list[str]:
        """The X-Ratelimit-* header names of one page-1 answer (limits reset first, so a previous
        storm's spent error window cannot answer it with a 420)."""
        assert self.sandbox
        self.sandbox.post("limits/reset")
        response = self.sandbox.client.get(f"/markets/{FORGE}/orders", params={"order_type": "all", "page": 1})
        response.raise_for_status()
        return sorted(h for h in response.headers if h.lower().startswith("x-ratelimit"))

    def snapshot_rows(self, region_id: int) -> int | None:
        """Rows of the sandbox's current orders snapshot of the region (its own count)."""
        assert self.sandbox
        state = self.sandbox.client.get("/_sandbox/state").raise_for_status().json()
        snaps = [s for s in state["snapshots"] if s["route"] == "orders" and s.get("region_id") == region_id]
        return max(snaps, key=lambda s: s["generation"])["rows"] if snaps else None

    def table_fingerprint(self, db: str, region_id: int) -> dict:
        """Rows of the region in the orders table and an md5 over every row (primary-key order), to
        compare tables written by different runs of the same snapshot."""
        from sync_assets.apis.esi.datasets import ESI_DATASETS  # noqa: F401 (registers them)
        from sync_assets.core.catalog import DATASETS_BY_KEY
        from sync_assets.warehouse.tables import qi, table_name

        dataset = DATASETS_BY_KEY["esi.market_orders"]
        order = ", ".join(qi(k) for k in dataset.primary_key)
        try:
            [(rows, digest)] = self.sql(db, f"SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY {order})) "
                                            f"FROM {table_name(dataset)} t WHERE region_id = {int(region_id)}")
        except Exception as exc:  # noqa: BLE001 - a failed run may not have created the table
            return {"rows_in_table": None, "fingerprint": None, "fingerprint_error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        return {"rows_in_table": rows, "fingerprint": digest}

    def m_sandbox(self) -> Sandbox:
        sandbox = self.start_sandbox(
            "corporations", regions={FORGE: 1}, n_price_types=10,
            corporations={CORP_M: {"base": "small", "assets": self.args.assets},
                          CORP_M4: {"base": "small", "assets": self.args.assets // 4}},
            rate_limit_tokens={"corp-asset": 10**9},
        )
        for corp in (CORP_M, CORP_M4):  # build the snapshots now, not during a timed run
            token = self.access_token(corp)
            httpx.get(f"{sandbox.url}/corporations/{corp}/assets", headers={"Authorization": f"Bearer {token}"}, timeout=300).raise_for_status()
        for corp in (CORP_M, CORP_M4):
            self.add_dynamic_partition("esi_corporations", str(corp))
        return sandbox

    def workload_m(self, rep: int) -> None:
        from .workers import read_back

        assert self.sandbox
        asset = "esi/corporation_assets"

        def assets_of(corp: int) -> dict:
            return dict(path=f"/corporations/{corp}/assets", params={})

        dlt_assets = dict(path=f"corporations/{CORP_M}/assets", params={}, primary_key="item_id", table="corporation_assets")
        systems = ["sync_cli", "sync_inproc", "dlt_csv", "dlt_script_csv", "floor", "sync_inproc_quarter"]
        if self.args.dlt_default_m and rep == 0:  # ~2.5 min each; only to show which dlt configuration is faster
            systems += ["dlt_default", "dlt_script_default"]
        for system in rotate(self.selected(systems), rep):
            r = Run("M", system, "full", rep)
            name = f"m{rep}_{system}"
            db = self.fresh_database(name)
            if system in ("sync_cli", "sync_inproc", "sync_inproc_quarter"):
                corp = CORP_M4 if system == "sync_inproc_quarter" else CORP_M
                self.connect_director(db, corp)
                (self.sync_cli if system == "sync_cli" else self.sync_inproc)(r, db, asset, str(corp), "assets", self.sso_env())
                if system != "sync_cli" and r.ok:  # the data's own DataFrame, read back after the measured process
                    r.inner.update(read_back(db, "esi.corporation_assets", {"corporation_id": corp}, self.work / f"frame_{name}.json"))
            elif system == "floor":
                self.floor(r, db, dataset="esi.corporation_assets", context={"corporation_id": CORP_M}, route="assets",
                           token=self.access_token(CORP_M), **assets_of(CORP_M))
            else:
                self.dlt_system(r, system, name, route="assets", token=self.access_token(CORP_M), **dlt_assets)
            self.drop_database(name)

    # ------------------------------------------------------------------ API: SP-API and IRIS walks at their limits

    def amazon_sandbox(self) -> AmazonSandboxProcess:
        """The SP-API sandbox at Amazon's real rates (rate_scale=1); the seller with the most
        marketplaces (US + CA) is the one synced."""
        if self.sandbox:
            self.sandbox.stop()
        sandbox = self.sandbox = AmazonSandboxProcess(self.work, "amazon", scale=_scale(self.args.amazon_scale), rate_scale=1.0)
        grant = sandbox.client.get("/_sandbox/credentials").raise_for_status().json()
        sellers = sandbox.client.get("/_sandbox/sellers").raise_for_status().json()
        seller_id, seller = max(sellers.items(), key=lambda kv: (len(kv[1]["marketplaces"]), kv[0]))
        self.amazon = {"seller_id": seller_id, "seller": seller, "client_id": grant["client_id"],
                       "client_secret": grant["client_secret"], "refresh_token": grant["refresh_tokens"][seller_id]}
        return sandbox

    def api_amazon(self, rep: int) -> Run:
        """amazon/inventory_summaries of the US + CA seller: one walk per marketplace (50 SKUs a page,
        next tokens), both on the seller's getInventorySummaries bucket (2/s, burst 2)."""
        from sync_assets.apis.amazon.auth import AmazonAuthResource
        from sync_assets.apis.amazon.sandbox.limits import RATE_TABLE
        from sync_assets.apis.amazon.spec import OPERATION_LIMITS

        assert self.sandbox and self.amazon
        a, op = self.amazon, "getInventorySummaries"
        name = f"api{rep}_amazon"
        db = self.fresh_database(name)
        env = {"SYNC_ASSETS_APIS": "amazon", "SYNC_ASSETS_AMAZON_URL": self.sandbox.url, "SP_API_LWA_URL": f"{self.sandbox.url}/auth/o2/token",
               "SP_API_CLIENT_ID": a["client_id"], "SP_API_CLIENT_SECRET": a["client_secret"], "SYNC_ASSETS_TOKEN_KEY": self.token_key,
               "BENCH_PREIMPORT": self.args.api_preimport, "BENCH_FETCH_SPANS": "1"}
        auth = AmazonAuthResource.from_env(dict(env, SYNC_ASSETS_DATABASE_URL=db))
        try:  # what `sync-assets amazon add-seller` stores (one LWA grant, before the timed run)
            auth.add_seller(a["seller_id"], a["refresh_token"], "na", a["seller"]["marketplaces"])
        finally:
            auth.close()
        knobs = self.sandbox.client.get("/_sandbox/config").raise_for_status().json()
        r = Run("API", "sync_inproc", "amazon/inventory_summaries", rep)
        self.sync_inproc(r, db, "amazon/inventory_summaries", a["seller_id"], op, env)
        declared, served = OPERATION_LIMITS[op], RATE_TABLE[op]
        r.inner["api"] = {
            **_budget_policy(),
            "api": "SP-API", "operation": op, "seller_id": a["seller_id"], "marketplaces": a["seller"]["marketplaces"],
            "inventory": a["seller"].get("inventory"), "page_size": knobs.get("inventory_page_size"), "kind": "token_bucket",
            "rate": declared.rate, "burst": declared.burst,
            "sandbox_rate": served.rate * float(knobs.get("rate_scale", 1.0)), "sandbox_burst": served.burst,
            "pages": r.server.get("status_200"),
        }
        self.drop_database(name)
        return r

    def iris_sandbox(self) -> IrisSandboxProcess:
        """The IRIS sandbox with a small plan (--iris-limit N/S) so that a walk of many pages must pace."""
        if self.sandbox:
            self.sandbox.stop()
        capacity, window = self.args.iris_limit.split("/")
        self.sandbox = IrisSandboxProcess(self.work, "iris", api_keys={"bench": IRIS_KEY}, merchants=self.args.iris_merchants,
                                          rate_limit=int(capacity), rate_limit_window=float(window))
        return self.sandbox

    def api_iris(self, rep: int) -> Run:
        """iris/merchants (1000 a page), the resource configured with the same plan as the sandbox's
        (SYNC_ASSETS_IRIS__RATE_LIMIT): one sliding window per key."""
        assert self.sandbox
        name = f"api{rep}_iris"
        db = self.fresh_database(name)
        env = {"SYNC_ASSETS_APIS": "iris", "SYNC_ASSETS_IRIS_URL": f"{self.sandbox.url}/api/v1", "IRIS_API_KEY": IRIS_KEY,
               "SYNC_ASSETS_IRIS__RATE_LIMIT": self.args.iris_limit, "BENCH_PREIMPORT": self.args.api_preimport,
               "BENCH_FETCH_SPANS": "1"}
        knobs = self.sandbox.client.get("/_sandbox/config").raise_for_status().json()
        r = Run("API", "sync_inproc", "iris/merchants", rep)
        self.sync_inproc(r, db, "iris/merchants", None, "merchants", env)
        capacity, window = self.args.iris_limit.split("/")
        r.inner["api"] = {
            **_budget_policy(),
            "api": "IRIS", "route": "merchants", "merchants": self.args.iris_merchants, "page_size": 1000, "kind": "sliding_window",
            "capacity": int(capacity), "window_s": float(window),
            "sandbox_capacity": knobs.get("rate_limit"), "sandbox_window_s": knobs.get("rate_limit_window"),
            "pages": r.server.get("status_200"),
        }
        self.drop_database(name)
        return r

    def profiles(self) -> None:
        """pyinstrument of sync_assets' hot paths (in-process, not timed runs)."""
        out = self.args.profiles
        out.mkdir(parents=True, exist_ok=True)
        (self.work / "profiles").mkdir(exist_ok=True)
        self.base_env["BENCH_PROFILE_HTML_DIR"] = str(self.work / "profiles")  # kept with --keep
        self.forge_sandbox()
        asset, part = "esi/market_orders", str(FORGE)
        db = self.fresh_database("prof_f")
        self.sync_inproc(Run("profile", "sync_inproc", "F_full", 0), db, asset, part, "orders", profile=str(out / "F_full"))
        self.expire(db)
        self.sync_inproc(Run("profile", "sync_inproc", "F_unchanged", 0), db, asset, part, "orders", profile=str(out / "F_unchanged"))
        self.expire(db)
        self.sync_inproc(Run("profile", "sync_inproc", "F_unchanged_serial", 0), db, asset, part, "orders",
                         profile=str(out / "F_unchanged_serial"), serial=True)
        db = self.fresh_database("prof_f_serial")
        self.sync_inproc(Run("profile", "sync_inproc", "F_full_serial", 0), db, asset, part, "orders",
                         profile=str(out / "F_full_serial"), serial=True)
        # the walk without X-Ratelimit-* headers, inline: where its time goes (budget waits included);
        # cut after half the run's timeout so that a crawling walk still leaves its tree
        db = self.fresh_database("prof_f_noheaders")
        r = Run("profile", "sync_inproc", "F_noheaders_serial", 0)
        assert self.sandbox
        self.sandbox.configure(rate_limit_enabled=False)
        try:
            self.sync_inproc(r, db, asset, part, "orders", profile=str(out / "F_noheaders_serial"), serial=True,
                             profile_limit=round(self.timeout_for(r) / 2))
        finally:
            self.sandbox.configure(rate_limit_enabled=True)
        self.m_sandbox()
        db = self.fresh_database("prof_m")
        self.connect_director(db, CORP_M)
        self.sync_inproc(Run("profile", "sync_inproc", "M_full", 0), db, "esi/corporation_assets", str(CORP_M), "assets",
                         self.sso_env(), profile=str(out / "M_full"))
        for name in ("prof_f", "prof_f_serial", "prof_f_noheaders", "prof_m"):
            self.drop_database(name)


def _budget_policy() -> dict[str, float]:
    """The product's own margins on a declared limit (its BudgetPolicy defaults): what it allows itself."""
    try:
        from sync_assets.fetch.budget import BudgetPolicy
    except ImportError:
        return {}
    policy = BudgetPolicy()
    return {name: getattr(policy, name) for name in ("safety_margin", "clock_slack_s", "clock_slack_share", "arrival_jitter_s") if hasattr(policy, name)}


def _scale(text: str) -> str | int:
    return int(text) if str(text).isdigit() else text


def rotate(items: list[str], rep: int) -> list[str]:
    k = rep % len(items)
    return items[k:] + items[:k]


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip()[:200] for line in text[-lines:])


# =============================================================================== main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, help="write the Markdown report here (e.g. bench/RESULTS.md)")
    parser.add_argument("--repeat", "--reps", type=int, default=3, help="runs per measurement (median reported)")
    parser.add_argument("--pages", type=int, default=300, help="The Forge pages (1000 orders each)")
    parser.add_argument("--assets", type=int, default=1_000_000, help="corporation assets of workload M (1000 per page)")
    parser.add_argument("--rate", type=int, default=30, help="RL: requests per second the sandbox allows")
    parser.add_argument("--only", "--workloads", default="F,M,API,profile",
                        help="comma-separated workloads: F (includes F-100, RL, F-noheaders and F-5xx), F:full (only F's full-sync "
                             "rotation), M, API (the SP-API and IRIS walks), profile")
    parser.add_argument("--systems", help="comma-separated systems: the F full and M rotations run only these (e.g. "
                                          "sync_cli,dlt_csv,dlt_default,dlt_script_csv,dlt_script_default); default all")
    parser.add_argument("--amazon-scale", default="full", help="API: SP-API sandbox scale (full: 2000 SKUs per marketplace)")
    parser.add_argument("--iris-merchants", type=int, default=100_000, help="API: IRIS sandbox merchants (1000 a page)")
    parser.add_argument("--api-preimport", default="", help="API: modules the worker imports before the timed "
                        "materialization (diagnostics, e.g. pandas; the report says so); default none")
    parser.add_argument("--iris-limit", default="20/5", help="API: IRIS plan '<requests>/<seconds>', the sandbox's and the "
                                                           "resource's (SYNC_ASSETS_IRIS__RATE_LIMIT) alike")
    parser.add_argument("--dlt-default-runs", type=int, default=1,
                        help="runs of dlt's default configuration per workload (it is slower than csv; only picks the best)")
    parser.add_argument("--dlt-latency", action="store_true", help="also run dlt_csv once under F-100 (~50 s)")
    parser.add_argument("--dlt-default-m", action=argparse.BooleanOptionalAction, default=True,
                        help="run dlt's default configuration once on M, inside Dagster and as a plain script (~2.5 min each)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 30 pages, 50,000 assets, 1 run")
    parser.add_argument("--chart", type=Path, help="chart PNG (default: docs/bench_results.png for bench/RESULTS.md, "
                                                    "else next to the report); docs/bench_memory.png is written beside it")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) instead of deleting it")
    parser.add_argument("--from-json", type=Path, help="only re-render the report from a results.json written by a previous run")
    args = parser.parse_args(argv)
    if args.from_json:
        return rerender(args)
    if args.quick:
        args.pages, args.assets, args.repeat = min(args.pages, 30), min(args.assets, 50_000), 1
    only = {w.strip() for w in args.only.split(",")}
    unknown = only - {"F", "F:full", "M", "API", "profile"}
    if unknown:
        parser.error(f"--only: unknown workload(s) {sorted(unknown)}")
    args.f_full_only = "F:full" in only and "F" not in only
    args.systems = {s.strip() for s in args.systems.split(",")} if args.systems else None
    if not re.fullmatch(r"\d+/\d+(\.\d+)?", args.iris_limit):
        parser.error("--iris-limit: '<requests>/<seconds>', e.g. 10/5")
    workdir = Path(tempfile.mkdtemp(prefix="sync-assets-bench-"))
    # profiles (text trees) go next to the report they are quoted in
    args.profiles = (args.write.parent if args.write else workdir) / "profiles"
    args.chart = _chart_path(args, workdir)
    print(f"bench: work directory {workdir}", flush=True)
    bench = Bench(args, workdir)
    failed = False
    try:
        for rep in range(args.repeat):
            if "F" in only or "F:full" in only:
                bench.workload_f(rep)
        if "M" in only:
            bench.m_sandbox()
            for rep in range(args.repeat):
                bench.workload_m(rep)
        if "API" in only:
            bench.amazon_sandbox()
            for rep in range(args.repeat):
                bench.api_amazon(rep)
            bench.iris_sandbox()
            for rep in range(args.repeat):
                bench.api_iris(rep)
        if "profile" in only:
            bench.profiles()
    except Exception:
        traceback.print_exc()
        failed = True
    finally:
        bench.stop()
    elapsed = time.monotonic() - bench.started
    from . import report

    raw = {"args": {k: str(v) for k, v in vars(args).items() if k != "systems"} | {"systems": sorted(args.systems or [])}, "elapsed_s": elapsed, "load_before": bench.load_before,
           "finished_at": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "load_after": os.getloadavg(), "runs": [asdict(r) for r in bench.runs]}
    results = (args.write.parent if args.write else workdir) / "results.json"
    results.write_text(json.dumps(raw, indent=1, default=str))
    print(f"bench: raw runs in {results}", flush=True)
    text = report.render(bench.runs, args, elapsed, bench.load_before, os.getloadavg(), chart=args.chart)
    if args.write:
        args.write.write_text(text)
        print(f"bench: wrote {args.write} and {args.chart}", flush=True)
    else:
        print(text)
    if not args.keep and args.write:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"bench: done in {elapsed / 60:.1f} min", flush=True)
    return 1 if failed else 0


def _chart_path(args: argparse.Namespace, workdir: Path) -> Path:
    if args.chart:
        return args.chart
    if args.write and args.write.resolve() == (ROOT / "bench" / "RESULTS.md").resolve():
        return ROOT / "docs" / "bench_results.png"
    return (args.write.parent if args.write else workdir) / "bench_results.png"


def rerender(args: argparse.Namespace) -> int:
    """The report of an earlier run (bench/results.json), e.g. after changing the report's layout."""
    from . import report

    raw = json.loads(args.from_json.read_text())
    args.profiles = args.from_json.parent / "profiles"
    args.chart = _chart_path(args, args.from_json.parent)
    saved = raw["args"]
    for name in ("pages", "assets", "rate", "repeat"):
        setattr(args, name, int(saved[name]))
    for name, default in (("iris_limit", "20/5"), ("amazon_scale", "full"), ("iris_merchants", "100000"), ("api_preimport", "")):
        setattr(args, name, saved.get(name, default))
    args.iris_merchants = int(args.iris_merchants)
    args.quick = saved.get("quick") == "True"
    runs = [Run(**r) for r in raw["runs"]]
    text = report.render(runs, args, raw["elapsed_s"], tuple(raw["load_before"]), tuple(raw["load_after"]), chart=args.chart,
                         when=raw.get("finished_at"))
    if args.write:
        args.write.write_text(text)
        print(f"bench: wrote {args.write} and {args.chart}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
