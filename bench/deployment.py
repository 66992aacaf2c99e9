"""Steady-state cost of the demo deployment, before and after the automation rework, in one run.

    .venv/bin/python -m bench.deployment --write bench/RESULTS.md       # what `make bench-deployment` runs
    .venv/bin/python -m bench.deployment --quick                         # smoke test (~4 min per deployment)
    .venv/bin/python -m bench.deployment --minutes 15                    # shorter windows (see "Window" below)
    .venv/bin/python -m bench.deployment --report bench/deployment.json --write bench/RESULTS.md   # re-render

What it answers: how many runs per hour and how many CPU-seconds per hour does `sync-assets demo`
(webserver, daemon, code servers, runs; the ESI sandbox and the embedded PostgreSQL reported
separately) cost once it has warmed up, and how many asset partitions has it ever synced / are
fresh at the end - for the code before the automation rework and for the current code.

Versions
  before  the parent of the first commit that brought the run-tag concurrency limit (the
          `sync_assets/slot` tag / `tag_concurrency_limits` in dagster.yaml), found with `git log -S`.
          If its code location does not load (`import sync_assets.definitions` fails), the nearest
          first-parent ancestor that loads is measured instead, but only if the automation is
          byte-identical to the parent's (the files in AUTOMATION_FILES); otherwise only "after" is
          measured. Either way the JSON and the report say why.
  after   the current commit (HEAD), or the working tree as it is with --after-in-place.
  Each version is a temporary `git worktree` (removed afterwards) run with this virtualenv:
  `python -m sync_assets.cli demo --port P` with cwd=<worktree> and PYTHONPATH=<worktree>; the
  bench checks that `sync_assets` resolves to the worktree and reads the code servers' cwd and
  PYTHONPATH from /proc.

Window: 60 minutes by default, after 5 minutes of warm-up: the datasets' cadences go up to an hour
(the 3600 s datasets refresh at minute 7 of every hour before the rework, an hour after their last
sync after it), so a shorter window holds that hour's burst of runs either once or not at all and
its per-hour figures are off by up to 4x that burst; an hour also makes "partitions synced" comparable
with the problem statement's "after an hour".

Each deployment: a fresh DAGSTER_HOME in a temporary directory, no database URL set (so the demo
starts its own embedded PostgreSQL in $DAGSTER_HOME/pgdata), every SYNC_ASSETS_* / ESI_* /
DAGSTER_* variable of the caller removed; started in its own session; warm-up (--warmup minutes,
counted from the moment the code location has loaded), then the measured window (--minutes);
the deployments run one after the other, never side by side.

CPU (from /proc, every --interval seconds, 1 s by default): a process belongs to the deployment if
it descends from the demo command (by parent pid, and stays a member if it is reparented), or to
the embedded PostgreSQL if it is the postmaster of $DAGSTER_HOME/pgdata or descends from it. The
CPU of a group at time t is the sum over its live processes of utime+stime+cutime+cstime: a child
that exits and is reaped by its parent moves its whole CPU time (including its own reaped children)
into the parent's cutime/cstime, so processes that live and die between two samples are counted
exactly. The only CPU that can escape is that of a process reparented to init before it dies
(e.g. dagster's watch_orphans helper): for those the last sampled figure is added, and the tail
since that sample (at most --interval x 2 cores each) is the error bound, reported per deployment.
A window's CPU is the difference of the two totals at its ends. The split by role (webserver,
daemon, code server, runs, supervisors) uses each process's own utime+stime as last sampled; what
it cannot place (processes shorter than a sample, the tail after a process's last sample) is
reported as "unattributed".

Runs, partitions and checks come from the deployment's own GraphQL API, queried only after the
window has closed (so the queries do not count): runs created in the window by launcher tag
(dagster/schedule_name, dagster/sensor_name, else other) and status; per asset partition the
latest materialization ever (synced = has one), fresh = its latest materialization is younger than
the dataset's freshness warn window at the end of the window (the declarations of this checkout),
and for versions that have it, the latest `partitions_fresh` check evaluation (its `fresh` and
`partitions` metadata).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
COMMAND = ".venv/bin/python -m bench.deployment --write bench/RESULTS.md"  # what `make bench-deployment` runs
DEFAULT_JSON = ROOT / "bench" / "deployment.json"
SECTION_START = "<!-- bench.deployment: start (generated by bench/deployment.py; make bench-deployment) -->"
SECTION_END = "<!-- bench.deployment: end -->"
# The automation of a version: the fallback "before" must have exactly the parent's.
AUTOMATION_FILES = (
    "dagster.yaml", "workspace.yaml", "sync_assets/cli.py", "sync_assets/runtime.py",
    "sync_assets/defs/automation.py", "sync_assets/defs/sensors.py", "sync_assets/defs/guards.py",
)
REWORK_NEEDLES = ("sync_assets/slot", "tag_concurrency_limits")
FRESH_CHECK = "partitions_fresh"
GROUPS = ("deployment", "sandbox", "postgres")
ROLES = ("webserver", "daemon", "code_server", "runs", "supervisors")
STOP_GRACE_S = 40.0  # after SIGTERM to the demo command, what is left is SIGKILLed


# ----------------------------------------------------------------------------------------- git


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def rework_start() -> str:
    """The first commit that brought the run-tag limit (the oldest commit adding either needle)."""
    firsts = []
    for needle in REWORK_NEEDLES:
        found = git("log", "--reverse", "--format=%H", "-S", needle, "HEAD").splitlines()
        if found:
            firsts.append(found[0])
    if not firsts:
        raise SystemExit("bench: no commit mentions " + " or ".join(REWORK_NEEDLES))
    first = firsts[0]
    for other in firsts[1:]:
        if subprocess.run(["git", "merge-base", "--is-ancestor", other, first], cwd=ROOT).returncode == 0:
            first = other
    return first


def subject(commit: str) -> str:
    return git("log", "-1", "--format=%h %s", commit)[:110]


# ------------------------------------------------------------------------------------ versions


@dataclass
class Version:
    label: str  # "before" / "after"
    commit: str  # full hash; "" for the working tree
    tree: Path
    worktree: bool  # a temporary git worktree this bench created (removed at the end)
    notes: list[str] = field(default_factory=list)


def clean_env(tree: Path, home: Path | None = None) -> dict[str, str]:
    """The caller's environment without any setting of the project, Dagster or ESI."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SYNC_ASSETS_", "ESI_", "DAGSTER_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(tree)
    if home is not None:
        env["DAGSTER_HOME"] = str(home)
    return env


def probe(tree: Path) -> tuple[bool, str]:
    """Does the code location of `tree` load, from `tree` (not this checkout)? (ok, detail)"""
    code = "import sync_assets, sync_assets.definitions; print(sync_assets.__file__)"
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as home:
        done = subprocess.run([sys.executable, "-c", code], cwd=tree, env=clean_env(tree, Path(home)),
                              capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return False, lines[-1] if lines else f"exit code {done.returncode}"
    imported = Path(done.stdout.strip().splitlines()[-1]).resolve()
    if not imported.is_relative_to(tree.resolve()):
        return False, f"sync_assets was imported from {imported}, not from {tree}"
    return True, str(imported)


def add_worktree(commit: str, workdir: Path, name: str) -> Path:
    path = workdir / f"tree-{name}"
    git("worktree", "add", "--detach", str(path), commit)
    return path


def remove_worktree(path: Path) -> None:
    try:
        git("worktree", "remove", "--force", str(path))
    except subprocess.CalledProcessError:
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


def resolve_before(workdir: Path, max_back: int = 30) -> tuple[Version | None, dict]:
    """The "before" version (None: none can be measured) and how it was chosen."""
    start = rework_start()
    parent = git("rev-parse", f"{start}^")
    info: dict = {"rework_first_commit": subject(start), "parent": subject(parent), "parent_hash": parent}
    tree = add_worktree(parent, workdir, "before")
    ok, detail = probe(tree)
    info["parent_loads"] = ok
    info["parent_probe"] = detail
    if ok:
        return Version("before", parent, tree, True, [f"parent of {subject(start)}"]), info
    remove_worktree(tree)
    info["tried"] = []
    candidate = parent
    for _ in range(max_back):
        candidate = git("rev-parse", f"{candidate}^")
        same = subprocess.run(["git", "diff", "--quiet", candidate, parent, "--", *AUTOMATION_FILES], cwd=ROOT).returncode == 0
        if not same:
            info["tried"].append({"commit": subject(candidate), "result": "automation differs from the parent's: stop"})
            break
        tree = add_worktree(candidate, workdir, "before")
        ok, detail = probe(tree)
        info["tried"].append({"commit": subject(candidate), "result": "loads" if ok else detail})
        if ok:
            changed = git("diff", "--stat", candidate, parent, "--", "sync_assets").splitlines()
            info["fallback"] = subject(candidate)
            info["fallback_hash"] = candidate
            info["fallback_diff_to_parent"] = changed[-1].strip() if changed else "no changes"
            return Version("before", candidate, tree, True, [
                f"the parent {subject(parent)[:8]} of the first slot-tag commit does not load ({detail}); measured "
                f"{candidate[:7]}, the nearest ancestor that loads, whose automation ({', '.join(AUTOMATION_FILES)}) "
                f"is byte-identical to the parent's"]), info
        remove_worktree(tree)
    return None, info


# ------------------------------------------------------------------------------- CPU tracking


@dataclass
class Proc:
    pid: int
    start: int  # starttime in clock ticks since boot: (pid, start) names a process
    cmd: str
    comm: str
    ppid: int = 0
    parent_key: tuple[int, int] | None = None
    group: str = "deployment"
    role: str = "supervisors"
    own: int = 0  # utime+stime, ticks, as last sampled
    incl: int = 0  # + cutime+cstime
    alive: bool = True
    orphaned: bool = False  # exited while reparented outside the tree: its last sample is added


def _read_stats() -> dict[int, tuple[int, int, int, int, str, str]]:
    """pid -> (ppid, starttime, own ticks, reaped-children ticks, state, comm) of every process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        close = data.rfind(b")")
        comm = data[data.find(b"(") + 1:close].decode(errors="replace")
        f = data[close + 2:].split()
        out[int(name)] = (int(f[1]), int(f[19]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14]), f[0].decode(), comm)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _role(cmd: str) -> str | None:
    if "dagster_webserver" in cmd or "dagster-webserver" in cmd:
        return "webserver"
    if "dagster._daemon" in cmd or "dagster-daemon" in cmd:
        return "daemon"
    if " api grpc" in cmd or "code-server start" in cmd:
        return "code_server"
    return None


class Tracker:
    """Samples the process tree of one deployment (see the module docstring for the method)."""

    def __init__(self, root_pid: int, pgdata: Path, interval: float) -> None:
        self.root_pid = root_pid
        self.pgdata = pgdata
        self.interval = interval
        self.procs: dict[tuple[int, int], Proc] = {}
        self.root_key: tuple[int, int] | None = None
        self.postmaster: tuple[int, int] | None = None
        self.lost = Counter()  # group -> ticks of orphans added from their last sample
        self.orphans = Counter()  # group -> how many
        self.samples = 0
        self.sample_seconds = 0.0
        self.loadavg: list[tuple[float, float]] = []
        self.timeline: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    # -- lifecycle
    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        last_timeline = 0.0
        while not self._stop.wait(self.interval):
            totals = self.sample()
            now = time.time()
            if now - last_timeline >= 30:
                last_timeline = now
                self.timeline.append({"t": round(now, 1), **{g: round(v, 2) for g, v in totals["groups"].items()},
                                      "live": totals["live"]})

    # -- sampling
    def _find_postmaster(self, stats: dict) -> None:
        if self.postmaster is not None and self.postmaster[0] in stats and stats[self.postmaster[0]][1] == self.postmaster[1]:
            return
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if pid in stats and str(self.pgdata) in _cmdline(pid):
            self.postmaster = (pid, stats[pid][1])

    def sample(self) -> dict:
        with self._lock:
            began = time.perf_counter()
            stats = _read_stats()
            try:
                self.loadavg.append((time.time(), float(Path("/proc/loadavg").read_text().split()[0])))
            except OSError:
                pass
            if self.root_key is None and self.root_pid in stats:
                self.root_key = (self.root_pid, stats[self.root_pid][1])
            self._find_postmaster(stats)
            children: dict[int, list[int]] = defaultdict(list)
            for pid, st in stats.items():
                children[st[0]].append(pid)

            def alive(key: tuple[int, int] | None) -> bool:
                return key is not None and key[0] in stats and stats[key[0]][1] == key[1]

            members: set[int] = set()
            stack = [key[0] for key in (self.root_key, self.postmaster) if alive(key)]
            stack += [key[0] for key, p in self.procs.items() if p.alive and alive(key)]  # reparented members stay
            while stack:
                pid = stack.pop()
                if pid in members:
                    continue
                members.add(pid)
                stack.extend(children.get(pid, ()))

            seen: set[tuple[int, int]] = set()
            for pid in sorted(members, key=lambda p: stats[p][1]):  # parents (older) first
                ppid, start, own, kids, _state, comm = stats[pid]
                key = (pid, start)
                seen.add(key)
                proc = self.procs.get(key)
                if proc is None:
                    proc = self.procs[key] = Proc(pid, start, _cmdline(pid), comm)
                    parent = self.procs.get((ppid, stats[ppid][1])) if ppid in stats else None
                    proc.role = _role(proc.cmd) or ("runs" if parent is not None and parent.role in ("code_server", "runs")
                                                    else parent.role if parent is not None and parent.role in ("webserver", "daemon")
                                                    else "supervisors")
                proc.ppid = ppid
                proc.parent_key = (ppid, stats[ppid][1]) if ppid in stats else None
                proc.own, proc.incl, proc.comm = own, own + kids, comm
                proc.group = self._group(proc, stats)
            # the exits since the last sample
            for key, proc in self.procs.items():
                if not proc.alive or key in seen:
                    continue
                proc.alive = False
                parent = self.procs.get(proc.parent_key) if proc.parent_key else None
                if parent is not None and alive(proc.parent_key):
                    continue  # reaped by a member: in its cutime/cstime now
                if parent is not None and parent.parent_key in self.procs and alive(parent.parent_key):
                    continue  # its parent exited in the same interval, most likely after reaping it (Popen/multiprocessing wait)
                proc.orphaned = True
                self.lost[proc.group] += proc.incl
                self.orphans[proc.group] += 1
            totals = self._totals()
            self.samples += 1
            self.sample_seconds += time.perf_counter() - began
            return totals

    def _group(self, proc: Proc, stats: dict) -> str:
        if proc.comm == "postgres" or (self.postmaster is not None and (proc.pid, proc.start) == self.postmaster):
            return "postgres"
        pid, hops = proc.pid, 0
        while pid in stats and hops < 64:
            known = self.procs.get((pid, stats[pid][1]))
            if known is not None and "sandbox" in known.cmd and "sync_assets.cli" in known.cmd:
                return "sandbox"
            if self.postmaster is not None and (pid, stats[pid][1]) == self.postmaster:
                return "postgres"
            pid, hops = stats[pid][0], hops + 1
        return proc.group if proc.ppid == 1 else "deployment"  # a reparented process keeps its group

    def _totals(self) -> dict:
        groups = {g: 0 for g in GROUPS}
        roles = {r: 0 for r in ROLES}
        live = Counter()
        for proc in self.procs.values():
            if proc.alive:
                groups[proc.group] += proc.incl
                live[proc.group] += 1
            if proc.group == "deployment":
                roles[proc.role] += proc.own
        for group, ticks in self.lost.items():
            groups[group] += ticks
        return {"groups": {g: v / CLK_TCK for g, v in groups.items()}, "roles": {r: v / CLK_TCK for r, v in roles.items()},
                "live": dict(live), "orphans": dict(self.orphans), "lost": {g: v / CLK_TCK for g, v in self.lost.items()}}

    def live_members(self) -> list[Proc]:
        with self._lock:
            return [p for p in self.procs.values() if p.alive]


# ------------------------------------------------------------------------------------ machine


def cpu_stat() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def machine() -> dict:
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), "0")
    return {"cores": os.cpu_count(), "mem_gib": round(int(mem) / 1024 / 1024, 1), "arch": platform.machine(),
            "python": platform.python_version(), "clk_tck": CLK_TCK}


def dagster_version() -> str:
    try:
        from importlib.metadata import version

        return version("dagster")
    except Exception:  # noqa: BLE001
        return "?"


# ------------------------------------------------------------------------------------ GraphQL


class Graphql:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"

    def __call__(self, query: str, timeout: float = 300, **variables) -> dict:
        response = httpx.post(self.url, json={"query": query, "variables": variables}, timeout=timeout)
        try:
            body = response.json()  # the webserver answers a failed query with 500 and the errors in the body
        except ValueError:
            response.raise_for_status()
            raise
        if body.get("errors"):
            raise RuntimeError(f"GraphQL ({response.status_code}): {body['errors'][0].get('message')}")
        response.raise_for_status()
        return body["data"]


WORKSPACE = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""

RUNS = """query Runs($filter: RunsFilter) { runsOrError(filter: $filter, limit: 100000) { __typename
  ... on Runs { results { runId status jobName creationTime startTime endTime tags { key value } } }
  ... on PythonError { message } } }"""

ASSETS = """{ assetNodes { assetKey { path } isPartitioned partitionKeys
  assetChecksOrError { __typename ... on AssetChecks { checks { name } } } } }"""

ASSET = """query Asset($key: AssetKeyInput!, $partitions: [String!]) { assetNodeOrError(assetKey: $key) { __typename
  ... on AssetNode { latestMaterializationByPartition(partitions: $partitions) { partition timestamp runId }
                     assetMaterializations(limit: 10000) { timestamp partition runId } } } }"""

CHECK = """query Check($key: AssetKeyInput!, $name: String!) { assetCheckExecutions(assetKey: $key, checkName: $name, limit: 20) {
  status timestamp evaluation { timestamp success description
    metadataEntries { label __typename ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } } } } }"""

SCHEDULE_TAG, SENSOR_TAG, BACKFILL_TAG = "dagster/schedule_name", "dagster/sensor_name", "dagster/backfill"


def wait_ready(gql: Graphql, process: subprocess.Popen, timeout_s: float) -> dict:
    """Until the code location has loaded; raises with the load error if it cannot."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited with code {process.returncode} before its code location loaded ({last})")
        try:
            data = gql(WORKSPACE, timeout=30)["workspaceOrError"]
            entries = data.get("locationEntries") or []
            for entry in entries:
                located = entry.get("locationOrLoadError") or {}
                if located.get("__typename") == "PythonError":
                    raise LocationError(located.get("message", "").strip().splitlines()[-1] if located.get("message") else "load error")
                if entry.get("loadStatus") == "LOADED" and located.get("__typename") == "RepositoryLocation":
                    return entry
            last = f"location {[e.get('loadStatus') for e in entries]}"
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            if isinstance(exc, LocationError):
                raise
            last = str(exc)[:200]
        time.sleep(2)
    raise RuntimeError(f"the code location did not load within {timeout_s:.0f} s ({last})")


class LocationError(RuntimeError):
    pass


def launcher(tags: dict[str, str]) -> str:
    if SCHEDULE_TAG in tags:
        return "schedule"
    if SENSOR_TAG in tags:
        return "sensor"
    if BACKFILL_TAG in tags:
        return "backfill"
    return "other"


def collect_runs(gql: Graphql, t0: float, t1: float) -> dict:
    data = gql(RUNS, filter={"createdAfter": t0, "createdBefore": t1})["runsOrError"]
    if data["__typename"] != "Runs":
        raise RuntimeError(f"runsOrError: {data.get('message')}")
    runs = data["results"]
    by_launcher, by_status, by_name, durations = Counter(), Counter(), Counter(), []
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        kind = launcher(tags)
        by_launcher[kind] += 1
        by_status[run["status"]] += 1
        by_name[f"{kind}:{tags.get(SCHEDULE_TAG) or tags.get(SENSOR_TAG) or run['jobName']}"] += 1
        if run.get("startTime") and run.get("endTime"):
            durations.append(run["endTime"] - run["startTime"])
    durations.sort()
    return {"created": len(runs), "by_launcher": dict(by_launcher), "by_status": dict(by_status),
            "by_launcher_name": dict(by_name.most_common()),
            "median_run_seconds": round(durations[len(durations) // 2], 1) if durations else None}


def warn_window_s(path: list[str]) -> float | None:
    """The dataset's freshness warn window, from this checkout's declarations."""
    try:
        import sync_assets.apis.esi.datasets  # noqa: F401  registers ESI's datasets
        from sync_assets.core.catalog import dataset_for_asset_key

        return dataset_for_asset_key(path).freshness_windows[0].total_seconds()
    except Exception:  # noqa: BLE001
        return None


def collect_partitions(gql: Graphql, t0: float, t1: float) -> dict:
    """Per asset: partitions, ever synced, fresh at t1 (bench rule), materializations in the window,
    the latest partitions_fresh evaluation when the version has the check."""
    assets = []
    for node in gql(ASSETS)["assetNodes"]:
        path = node["assetKey"]["path"]
        partitioned = node["isPartitioned"]
        keys = node["partitionKeys"] if partitioned else []
        detail = gql(ASSET, key={"path": path}, partitions=keys)["assetNodeOrError"]
        events = detail.get("assetMaterializations") or []
        if partitioned:
            latest = {e["partition"]: float(e["timestamp"]) / 1000 for e in detail["latestMaterializationByPartition"] if e}
            total = len(keys)
        else:
            stamps = [float(e["timestamp"]) / 1000 for e in events]
            latest = {None: max(stamps)} if stamps else {}
            total = 1
        warn = warn_window_s(path)
        synced = [k for k in (keys if partitioned else [None]) if k in latest]
        fresh = [k for k in synced if warn is not None and t1 - latest[k] <= warn]
        in_window = sum(1 for e in events if t0 <= float(e["timestamp"]) / 1000 < t1)
        entry = {"asset": "/".join(path), "partitions": total, "synced": len(synced), "fresh_bench": len(fresh) if warn else None,
                 "warn_window_s": warn, "materializations_in_window": in_window,
                 "never_synced": [k for k in keys if k not in latest] if partitioned else ([] if synced else ["(unpartitioned)"])}
        checks = node.get("assetChecksOrError") or {}
        names = [c["name"] for c in checks.get("checks", [])] if checks.get("__typename") == "AssetChecks" else []
        entry["has_fresh_check"] = FRESH_CHECK in names
        if FRESH_CHECK in names:
            executions = gql(CHECK, key={"path": path}, name=FRESH_CHECK)["assetCheckExecutions"]  # newest first
            evaluation = next((e["evaluation"] for e in executions if e.get("evaluation")), None)  # skip in-progress ones
            if evaluation:
                meta = {m["label"]: m.get("intValue", m.get("floatValue")) for m in evaluation["metadataEntries"]}
                entry["fresh_check"] = {"passed": evaluation["success"], "fresh": meta.get("fresh"), "partitions": meta.get("partitions"),
                                        "age_s": round(t1 - evaluation["timestamp"], 1), "description": evaluation.get("description")}
            else:
                entry["fresh_check"] = {"status": executions[0]["status"] if executions else "never evaluated"}
        assets.append(entry)
    datasets = [a for a in assets if a["asset"].startswith("esi/")]
    checked = [a for a in datasets if a.get("fresh_check", {}).get("fresh") is not None]
    return {
        "assets": assets,
        "partitions": sum(a["partitions"] for a in datasets),
        "synced": sum(a["synced"] for a in datasets),
        "fresh_bench": sum(a["fresh_bench"] or 0 for a in datasets),
        "materializations_in_window": sum(a["materializations_in_window"] for a in datasets),
        "fresh_check": ({"fresh": sum(a["fresh_check"]["fresh"] for a in checked),
                         "partitions": sum(a["fresh_check"]["partitions"] or 0 for a in checked),
                         "assets_evaluated": len(checked), "assets_with_check": sum(a["has_fresh_check"] for a in datasets),
                         "oldest_evaluation_age_s": max((a["fresh_check"]["age_s"] for a in checked), default=None)}
                        if any(a["has_fresh_check"] for a in datasets) else None),
    }


# --------------------------------------------------------------------------------- deployment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def code_server_origin(tracker: Tracker) -> list[dict]:
    """cwd and PYTHONPATH of the code servers the deployment runs (which sync_assets they import)."""
    found = []
    for proc in tracker.live_members():
        if proc.role != "code_server":
            continue
        try:
            cwd = os.readlink(f"/proc/{proc.pid}/cwd")
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
            pythonpath = next((e.decode().split("=", 1)[1] for e in environ if e.startswith(b"PYTHONPATH=")), None)
        except OSError:
            continue
        found.append({"pid": proc.pid, "cmd": proc.cmd[:80], "cwd": cwd, "PYTHONPATH": pythonpath})
    return found


def sleep_watching(seconds: float, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited with code {process.returncode} during the {what}")
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))


def _signal(proc: Proc, sig: int) -> None:
    try:  # only the process this bench saw, not a later one that got its pid
        with open(f"/proc/{proc.pid}/stat", "rb") as handle:
            data = handle.read()
        if int(data[data.rfind(b")") + 2:].split()[19]) == proc.start:
            os.kill(proc.pid, sig)
    except (OSError, ValueError, IndexError):
        pass


def stop_deployment(process: subprocess.Popen, tracker: Tracker, pgdata: Path) -> dict:
    """SIGTERM to the demo command (both versions forward it to dagster); after STOP_GRACE_S SIGKILL to
    every process of the tree that is left; then the embedded PostgreSQL: fast shutdown, SIGKILL after 30 s."""
    report = {"exit_code": None, "killed": 0}
    began = time.monotonic()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    for _ in range(5):  # a launch may be under way while we kill: sample again until nothing is left
        tracker.sample()
        left = [p for p in tracker.live_members() if p.group != "postgres"]
        if not left:
            break
        report["killed"] += len(left)
        for proc in left:
            _signal(proc, signal.SIGKILL)
        time.sleep(1)
    if process.poll() is None:
        process.kill()
    process.wait()
    report["exit_code"] = process.returncode
    tracker.sample()
    postgres = [p for p in tracker.live_members() if p.group == "postgres"]
    if postgres:
        master = tracker.postmaster
        root = next((p for p in postgres if master and (p.pid, p.start) == master), None)
        if root is not None:
            _signal(root, signal.SIGINT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tracker.sample()
            if not [p for p in tracker.live_members() if p.group == "postgres"]:
                break
            time.sleep(0.5)
        for proc in tracker.live_members():
            _signal(proc, signal.SIGKILL)
        report["postgres_stopped_by_bench"] = True
    try:  # whatever the tracker missed: the postmaster of this deployment's data directory
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        if str(pgdata) in _cmdline(pid):
            os.kill(pid, signal.SIGINT)
            for _ in range(60):
                time.sleep(0.5)
                if str(pgdata) not in _cmdline(pid):
                    break
            else:
                os.kill(pid, signal.SIGKILL)
            report["postgres_stopped_by_bench"] = True
    except (OSError, ValueError, IndexError):
        pass
    tracker.sample()
    report["left_running"] = [f"{p.pid} {p.cmd[:60]}" for p in tracker.live_members()]
    report["stop_seconds"] = round(time.monotonic() - began, 1)
    return report


def diff(a: dict, b: dict) -> dict:
    return {k: round(b[k] - a.get(k, 0.0), 2) for k in b}


def run_deployment(version: Version, workdir: Path, warmup_s: float, window_s: float, interval: float, ready_timeout_s: float) -> dict:
    home = workdir / f"home-{version.label}"
    home.mkdir(parents=True)
    port = free_port()
    result: dict = {"label": version.label, "commit": version.commit, "subject": subject(version.commit) if version.commit else "working tree",
                    "tree": str(version.tree), "notes": version.notes, "port": port}
    ok, detail = probe(version.tree)
    result["import_check"] = {"ok": ok, "sync_assets": detail}
    log_path = home / "demo.log"
    print(f"bench: {version.label}: {result['subject']} (sync_assets from {detail}); demo on port {port}, log {log_path}", flush=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "sync_assets.cli", "demo", "--port", str(port)],
                                   cwd=version.tree, env=clean_env(version.tree, home), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    tracker = Tracker(process.pid, home / "pgdata", interval)
    tracker.start()
    started = time.monotonic()
    gql = Graphql(port)
    try:
        try:
            location = wait_ready(gql, process, ready_timeout_s)
        except LocationError as exc:
            result["error"] = f"the code location does not load: {exc}"
            return result
        result["startup_seconds"] = round(time.monotonic() - started, 1)
        result["location"] = location["name"]
        result["code_servers"] = code_server_origin(tracker)
        print(f"bench: {version.label}: code location loaded after {result['startup_seconds']} s; warm-up {warmup_s / 60:.1f} min", flush=True)
        sleep_watching(warmup_s, process, "warm-up")
        s0, m0, r0, t0 = tracker.sample(), cpu_stat(), resource.getrusage(resource.RUSAGE_SELF), time.time()
        print(f"bench: {version.label}: measuring {window_s / 60:.1f} min from {datetime.fromtimestamp(t0, timezone.utc):%H:%M:%S} UTC", flush=True)
        sleep_watching(window_s, process, "measured window")
        s1, m1, r1, t1 = tracker.sample(), cpu_stat(), resource.getrusage(resource.RUSAGE_SELF), time.time()
        length = t1 - t0
        per_hour = 3600 / length
        cpu = diff(s0["groups"], s1["groups"])
        roles = diff(s0["roles"], s1["roles"])
        roles["unattributed"] = round(cpu["deployment"] - sum(roles.values()), 2)
        orphans = {g: s1["orphans"].get(g, 0) - s0["orphans"].get(g, 0) for g in GROUPS}
        loads = [v for t, v in tracker.loadavg if t0 <= t <= t1]
        result["window"] = {"start": datetime.fromtimestamp(t0, timezone.utc).isoformat(timespec="seconds"),
                            "end": datetime.fromtimestamp(t1, timezone.utc).isoformat(timespec="seconds"),
                            "seconds": round(length, 1), "warmup_seconds": round(warmup_s, 1)}
        result["cpu_seconds"] = cpu
        result["cpu_seconds_per_hour"] = {g: round(v * per_hour, 1) for g, v in cpu.items()}
        result["cores"] = {g: round(v / length, 3) for g, v in cpu.items()}
        result["deployment_roles_cpu_seconds_per_hour"] = {r: round(v * per_hour, 1) for r, v in roles.items()}
        result["orphans_in_window"] = orphans
        result["error_bound_cpu_seconds"] = {g: round(n * interval * (os.cpu_count() or 1), 1) for g, n in orphans.items()}
        result["machine_during_window"] = {
            "busy_share": round((m1[0] - m0[0]) / max(1, m1[1] - m0[1]), 3),
            "busy_cores": round((m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * (os.cpu_count() or 1), 2),
            "loadavg_1m_mean": round(sum(loads) / len(loads), 2) if loads else None,
            "loadavg_1m_max": max(loads) if loads else None,
            "bench_sampler_cpu_seconds": round((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime), 2),
            "samples": tracker.samples, "sample_mean_ms": round(1000 * tracker.sample_seconds / max(1, tracker.samples), 1),
        }
        print(f"bench: {version.label}: window closed; CPU-s/hour {result['cpu_seconds_per_hour']}; reading runs and partitions", flush=True)
        result["uptime_at_end_seconds"] = round(time.monotonic() - started, 1)
        try:
            runs = collect_runs(gql, t0, t1)
            runs["per_hour"] = round(runs["created"] * per_hour, 1)
            runs["by_launcher_per_hour"] = {k: round(v * per_hour, 1) for k, v in runs["by_launcher"].items()}
            result["runs"] = runs
            since = collect_runs(gql, 0.0, t1)
            result["runs_since_start"] = {"created": since["created"], "by_status": since["by_status"], "by_launcher": since["by_launcher"]}
        except Exception as exc:  # noqa: BLE001  the CPU figures stand without it
            result["runs_error"] = f"{type(exc).__name__}: {exc}"
        try:
            parts = collect_partitions(gql, t0, t1)
            parts["materializations_per_hour"] = round(parts["materializations_in_window"] * per_hour, 1)
            result["partitions"] = parts
        except Exception as exc:  # noqa: BLE001
            result["partitions_error"] = f"{type(exc).__name__}: {exc}"
        return result
    except Exception as exc:  # noqa: BLE001  reported, the other deployment still runs
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        result["stop"] = stop_deployment(process, tracker, home / "pgdata")
        tracker.stop()
        result["cpu_timeline"] = tracker.timeline
        result["processes_seen"] = len(tracker.procs)
        tail = log_path.read_text(errors="replace").splitlines()[-15:] if log_path.exists() else []
        if result.get("error"):
            result["log_tail"] = tail
        print(f"bench: {version.label}: stopped ({result['stop']})", flush=True)


# -------------------------------------------------------------------------------------- report


def _f(value, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def render(data: dict) -> str:
    deps = [d for d in data["deployments"] if d]
    work = data.get("workdir", "")
    short = (lambda text: text.replace(work, "<tmp>") if work else text)  # noqa: E731
    cols = [d["label"] for d in deps]
    head = "| | " + " | ".join(f"{d['label']} (`{d['commit'][:7] or 'tree'}`)" for d in deps) + " |"
    sep = "|---|" + "---|" * len(deps)

    def row(name: str, fn) -> str:
        cells = []
        for d in deps:
            try:
                cells.append(fn(d))
            except (KeyError, TypeError, ZeroDivisionError, AttributeError):
                cells.append("—")
        return f"| {name} | " + " | ".join(cells) + " |"

    def part(d: dict, key: str) -> str:
        p = d["partitions"]
        return f"{p[key]} / {p['partitions']}"

    def check(d: dict) -> str:
        c = d["partitions"]["fresh_check"]
        if c is None:
            return "no such check"
        age = c.get("oldest_evaluation_age_s")
        return (f"{c['fresh']} / {c['partitions']} ({c['assets_evaluated']} of {c['assets_with_check']} assets evaluated"
                + (f", oldest evaluation {age / 60:.0f} min before the end)" if age is not None else ")"))

    def runs_split(d: dict) -> str:
        h = d["runs"]["by_launcher_per_hour"]
        return ", ".join(f"{k} {_f(v, 0)}" for k, v in sorted(h.items(), key=lambda kv: -kv[1]))

    def statuses(d: dict) -> str:
        return ", ".join(f"{k.lower()} {v}" for k, v in sorted(d["runs"]["by_status"].items(), key=lambda kv: -kv[1]))

    m = data["machine"]
    lines = [
        SECTION_START,
        "## Deployment steady state: runs and CPU per hour, before/after the automation rework",
        "",
        f"Produced by `make bench-deployment   # = {data['command']}` on {data['started'][:16].replace('T', ' ')} UTC in "
        f"{data['total_minutes']:.1f} min: {m['arch']}, **{m['cores']} cores**, {m['mem_gib']} GiB, CPython {m['python']}, "
        f"dagster {data['dagster']}. Each deployment: `sync-assets demo` from its own git worktree, fresh `DAGSTER_HOME` and "
        f"embedded PostgreSQL, {data['warmup_minutes']:g} min warm-up after the code location loaded, then a "
        f"{data['window_minutes']:g} min measured window; the two deployments ran one after the other. Raw figures: "
        f"`{data['json']}`.{' **Smoke run (`--quick`): windows too short for steady-state figures.**' if data.get('quick') else ''}",
        "",
        "Problem statement it answers: *\"Measured here before: about 173 runs/hour and 0.40 CPU cores (≈1,440 CPU-s/hour) on this "
        "2-core machine kind, while only 13 of 32 asset partitions had ever been synced after an hour.\"*",
        "",
        *summary(deps),
        head, sep,
        row("measured window", lambda d: f"{d['window']['seconds'] / 60:.1f} min ({d['window']['start'][11:16]}–{d['window']['end'][11:16]} UTC), "
            f"after {d['window']['warmup_seconds'] / 60:.1f} min warm-up"),
        row("**runs / hour** (created in the window)", lambda d: f"**{_f(d['runs']['per_hour'], 0)}** ({d['runs']['created']} runs)"),
        row("… by launcher, per hour", runs_split),
        row("… their status at the end of the window", statuses),
        row("median run duration (finished runs)", lambda d: f"{_f(d['runs']['median_run_seconds'], 1)} s"),
        row("**CPU-s / hour, deployment** (webserver, daemon, code servers, runs, CLI)",
            lambda d: f"**{_f(d['cpu_seconds_per_hour']['deployment'], 0)}** ({d['cores']['deployment']:.2f} cores)"),
        row("CPU-s / hour, embedded PostgreSQL", lambda d: f"{_f(d['cpu_seconds_per_hour']['postgres'], 0)} ({d['cores']['postgres']:.2f} cores)"),
        row("deployment + PostgreSQL", lambda d: f"{_f(d['cpu_seconds_per_hour']['deployment'] + d['cpu_seconds_per_hour']['postgres'], 0)} "
            f"({d['cores']['deployment'] + d['cores']['postgres']:.2f} cores)"),
        row("CPU-s / hour, ESI sandbox (separate process)", lambda d: f"{_f(d['cpu_seconds_per_hour']['sandbox'], 0)} ({d['cores']['sandbox']:.2f} cores)"),
        row("asset materializations / hour", lambda d: _f(d["partitions"]["materializations_per_hour"], 0)),
        row("**partitions ever synced** / total, end of window", lambda d: f"**{part(d, 'synced')}**"),
        row("fresh / total (latest materialization within the warn window)", lambda d: part(d, "fresh_bench")),
        row("fresh / total (`partitions_fresh` check, latest evaluation)", check),
        row("runs since the start (warm-up included), by status", lambda d: f"{d['runs_since_start']['created']}: " + ", ".join(
            f"{k.lower()} {v}" for k, v in sorted(d["runs_since_start"]["by_status"].items(), key=lambda kv: -kv[1]))),
        row("time from start to end of window", lambda d: f"{d['uptime_at_end_seconds'] / 60:.1f} min"),
        row("machine during the window: load avg (1 min) mean / max; busy cores",
            lambda d: f"{d['machine_during_window']['loadavg_1m_mean']} / {d['machine_during_window']['loadavg_1m_max']}; "
            f"{d['machine_during_window']['busy_cores']} of {m['cores']}"),
        row("CPU error bound (orphaned processes × interval × cores)", lambda d: f"±{d['error_bound_cpu_seconds']['deployment']} CPU-s "
            f"({d['orphans_in_window']['deployment']} orphans)"),
        "",
        "CPU-s / hour of the deployment by role (own utime+stime of each process as last sampled; *unattributed* = the tree "
        "total minus the roles: processes shorter than a sample and the tails after a process's last sample):",
        "",
        "| role | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(deps),
    ]
    for role in (*ROLES, "unattributed"):
        lines.append(f"| {role} | " + " | ".join(_f(d.get("deployment_roles_cpu_seconds_per_hour", {}).get(role), 0) for d in deps) + " |")
    lines += ["", "Runs in the window by launcher and name:", ""]
    for d in deps:
        if d.get("runs"):
            lines.append(f"- {d['label']}: " + (", ".join(f"`{k}` {v}" for k, v in d["runs"]["by_launcher_name"].items()) or "none"))
    lines += ["", "Partitions never synced at the end of the window:", ""]
    for d in deps:
        if d.get("partitions"):
            never = [f"`{a['asset']}` {len(a['never_synced'])}/{a['partitions']}" for a in d["partitions"]["assets"] if a["never_synced"]]
            lines.append(f"- {d['label']}: " + (", ".join(never) or "none"))
    lines += ["", "### Versions", ""]
    before = data.get("before_choice", {})
    if before:
        lines.append(f"- First commit of the rework (oldest adding `{'` or `'.join(REWORK_NEEDLES)}`): `{before.get('rework_first_commit')}`; "
                     f"its parent `{before.get('parent')}`.")
        if not before.get("parent_loads"):
            lines.append(f"- **The parent cannot start its demo**: its code location does not load (`import sync_assets.definitions` → "
                         f"`{short(str(before.get('parent_probe')))}`; the failing import of the same name stops `dagster dev`'s code server). "
                         "Commits tried going back: " + "; ".join(f"`{t['commit'][:7]}` {short(t['result'])[:70]}…" for t in before.get("tried", [])) + ".")
            if before.get("fallback"):
                lines.append(f"- Measured as *before* instead: `{before['fallback']}`, the nearest ancestor that loads. Its automation "
                             f"({', '.join('`' + f + '`' for f in AUTOMATION_FILES)}) is byte-identical to the parent's; the code between "
                             f"them is the fetch seam, paginators and time windows ({before.get('fallback_diff_to_parent')}).")
            else:
                lines.append("- No ancestor with the same automation loads: only *after* was measured.")
    for d in deps:
        origin = "; ".join(f"{c['cmd'].split(' --')[0]} cwd={c['cwd']} PYTHONPATH={c['PYTHONPATH']}" for c in d.get("code_servers", []))
        lines.append(short(f"- {d['label']}: `{d['subject']}`; `sync_assets` imported from `{d['import_check']['sync_assets']}`"
                           + (f"; code servers: {origin}" if origin else "") + (f". **Error: {d['error']}**" if d.get("error") else "")))
        if d.get("stop"):
            s = d["stop"]
            lines.append(f"  - stopped in {s.get('stop_seconds')} s: demo exit code {s.get('exit_code')}, {s.get('killed')} processes "
                         f"SIGKILLed after the {STOP_GRACE_S:.0f} s grace{', embedded PostgreSQL stopped by the bench' if s.get('postgres_stopped_by_bench') else ''}; "
                         f"left running: {s.get('left_running') or 'none'}")
    lines += [
        "",
        "### Method and caveats",
        "",
        f"- **CPU**: every {data['interval']:g} s the bench reads `/proc/<pid>/stat` of every process descending from the demo command "
        "(by parent pid; a member stays one when reparented) and of the embedded PostgreSQL's postmaster and its backends. A group's "
        "CPU at a moment is the sum over its live processes of utime+stime+cutime+cstime: a child reaped by its parent hands its "
        "whole CPU (with its own reaped children) to the parent's cutime/cstime, so runs and helpers that start and end between two "
        "samples are counted exactly (10 ms ticks). Only processes reparented to init before they die escape that chain; for them "
        "the last sample is added and the bound above (per orphan: one interval on every core) covers the rest. The window's CPU "
        "is the difference of the totals at its two ends. The bench's own sampling ("
        + ", ".join(f"{d['label']} {d['machine_during_window']['bench_sampler_cpu_seconds']} CPU-s in the window, "
                    f"{d['machine_during_window']['sample_mean_ms']} ms per sample" for d in deps if d.get("machine_during_window"))
        + ") is not in any figure.",
        "- **Runs** are those *created* in the window (`runsOrError` with `createdAfter`/`createdBefore`, read after the window "
        "closed, so the GraphQL queries cost nothing inside it), by launcher tag (`dagster/schedule_name`, `dagster/sensor_name`, "
        "`dagster/backfill`, else other) and by their status when read.",
        "- **Partitions**: 15 ESI assets; `esi/market_orders` has 5 regions, `esi/market_prices` none (counted as one), the 13 "
        "corporation datasets one dynamic partition per connected corporation (2 in the sandbox): 32. *Synced* = the partition has "
        "a materialization in Dagster's event log; *fresh* = its latest materialization is younger than the dataset's freshness "
        "warn window (3 cache periods; this checkout's declarations, the same datasets and cache times in both versions) at the end "
        "of the window. The `partitions_fresh` column is the check's own latest evaluation (a run's, or the expiry sensor's when a "
        "partition changed state).",
        "- **Uptime**: the problem statement counts partitions after an hour of uptime; here they are counted at the end of "
        "warm-up + window (see *time from start*; the demo command's start to the window's end).",
        "- **Window length**: the 3600 s datasets (17 of the 32 partitions) refresh once an hour (before: the schedules' minute 7; "
        "after: an hour after each partition's last sync), so a window shorter than an hour holds that burst once or not at all "
        "and extrapolates it to the hour by up to 60/window times.",
        "- **Before's shutdown**: its demo does not stop on SIGTERM (the CLI forwards it to `dagster dev`, which hangs; fixed "
        "later), so the bench SIGKILLs what is left after the grace period and stops its embedded PostgreSQL itself.",
        "- **Shared machine**: the deployments ran while other work (test suites, other benchmarks) ran on the same "
        f"{m['cores']} cores, and not equally in both windows: 1-minute load average "
        + ", ".join(f"{d['label']} {d['machine_during_window']['loadavg_1m_mean']} mean / {d['machine_during_window']['loadavg_1m_max']} max"
                    for d in deps if d.get("machine_during_window"))
        + " (busy cores include the deployment itself). Contention stretches runs; where automation skips a partition whose "
        "run is still active (before) that also means fewer launches, so runs/hour under contention is a lower bound of the idle "
        "machine's. CPU-seconds are less affected than wall times, but not immune (cache misses, retries on timeouts).",
        "- The sandbox runs with `--auto-refresh` (new data after every cache window, like ESI), full scale (The Forge 300 pages).",
        "- `make bench` rewrites RESULTS.md from its own results and drops this section; re-render it from the JSON with "
        "`.venv/bin/python -m bench.deployment --report bench/deployment.json --write bench/RESULTS.md`.",
        SECTION_END,
    ]
    return "\n".join(lines) + "\n"


def summary(deps: list[dict]) -> list[str]:
    """One line before -> after of the headline figures (when both versions were measured)."""
    by = {d["label"]: d for d in deps if d.get("cpu_seconds_per_hour") and d.get("runs") and d.get("partitions")}
    if set(by) != {"before", "after"}:
        return []
    b, a = by["before"], by["after"]

    def change(x: float, y: float) -> str:
        return f"{y / x:.2f}×" if x else "—"

    def per_run(d: dict) -> str:
        return f"{d['cpu_seconds_per_hour']['deployment'] / d['runs']['per_hour']:.1f}" if d["runs"]["per_hour"] else "—"

    def both(d: dict) -> float:
        return d["cpu_seconds_per_hour"]["deployment"] + d["cpu_seconds_per_hour"]["postgres"]

    return [
        f"**Before → after**: runs/hour {_f(b['runs']['per_hour'])} → {_f(a['runs']['per_hour'])} "
        f"({change(b['runs']['per_hour'], a['runs']['per_hour'])}); deployment CPU {_f(b['cpu_seconds_per_hour']['deployment'])} → "
        f"{_f(a['cpu_seconds_per_hour']['deployment'])} CPU-s/hour ({b['cores']['deployment']:.2f} → {a['cores']['deployment']:.2f} cores, "
        f"{change(b['cpu_seconds_per_hour']['deployment'], a['cpu_seconds_per_hour']['deployment'])}); with the embedded PostgreSQL "
        f"{_f(both(b))} → {_f(both(a))} ({change(both(b), both(a))}); deployment CPU-s per run {per_run(b)} → {per_run(a)}; partitions ever synced {b['partitions']['synced']} → "
        f"{a['partitions']['synced']} of {a['partitions']['partitions']}, fresh at the end {b['partitions']['fresh_bench']} → "
        f"{a['partitions']['fresh_bench']}.",
        "",
    ]


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        tail = rest.split(SECTION_END, 1)[1]
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# ---------------------------------------------------------------------------------------- main


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.deployment", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="measured window per deployment (default 60: every cadence, "
                        "hourly ones included, once)")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up minutes after the code location loaded (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 0.5 min warm-up, 2 min window per deployment")
    parser.add_argument("--interval", type=float, default=1.0, help="CPU sampling interval, seconds (default 1)")
    parser.add_argument("--only", choices=("before", "after"), help="measure one version only")
    parser.add_argument("--after-in-place", action="store_true", help="run 'after' from this working tree (uncommitted edits "
                        "included) instead of a worktree of HEAD")
    parser.add_argument("--json", type=Path, help=f"raw results (default {DEFAULT_JSON.relative_to(ROOT)}, "
                        "bench/deployment.quick.json with --quick)")
    parser.add_argument("--write", type=Path, help="append/replace this bench's section of a Markdown file (bench/RESULTS.md)")
    parser.add_argument("--report", type=Path, help="only render the section from an earlier JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (Dagster homes, logs)")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds for the code location to load")
    args = parser.parse_args(argv)

    if args.report:
        data = json.loads(args.report.read_text())
        section = render(data)
        if args.write:
            write_section(args.write, section)
            print(f"bench: wrote the section into {args.write}")
        else:
            print(section)
        return 0

    if args.quick:
        args.minutes, args.warmup = 2.0, 0.5
    json_path = args.json or (ROOT / "bench" / ("deployment.quick.json" if args.quick else "deployment.json"))
    workdir = Path(tempfile.mkdtemp(prefix="bench-deployment-"))
    began = time.time()
    data: dict = {"command": COMMAND if not args.quick else ".venv/bin/python -m bench.deployment --quick", "quick": args.quick,
                  "started": datetime.fromtimestamp(began, timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                  "dagster": dagster_version(), "warmup_minutes": args.warmup, "window_minutes": args.minutes,
                  "interval": args.interval, "head": subject("HEAD"), "workdir": str(workdir),
                  "json": str(json_path.relative_to(ROOT)) if json_path.is_relative_to(ROOT) else str(json_path), "deployments": []}
    versions: list[Version] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM stops the deployment under way like Ctrl-C
    try:
        if args.only != "after":
            before, info = resolve_before(workdir)
            data["before_choice"] = info
            if before is not None:
                versions.append(before)
            else:
                print(f"bench: no 'before' version can start: {info}", flush=True)
        if args.only != "before":
            if args.after_in_place:
                dirty = git("status", "--porcelain", "--", "sync_assets", "dagster.yaml", "workspace.yaml")
                versions.append(Version("after", git("rev-parse", "HEAD"), ROOT, False,
                                        ["the working tree" + (f", with uncommitted changes: {dirty.splitlines()}" if dirty else "")]))
            else:
                head = git("rev-parse", "HEAD")
                versions.append(Version("after", head, add_worktree(head, workdir, "after"), True, ["HEAD"]))
        for version in versions:
            result = run_deployment(version, workdir, args.warmup * 60, args.minutes * 60, args.interval, args.ready_timeout)
            data["deployments"].append(result)
            json_path.write_text(json.dumps(data, indent=1, default=str))  # partial results survive a later failure
    except KeyboardInterrupt:
        print("bench: interrupted", flush=True)
        data["interrupted"] = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        for version in versions:
            if version.worktree:
                remove_worktree(version.tree)
        if args.keep:
            print(f"bench: kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    data["total_minutes"] = round((time.time() - began) / 60, 1)
    json_path.write_text(json.dumps(data, indent=1, default=str))
    section = render(data)
    print(section)
    if args.write:
        write_section(args.write, section)
        print(f"bench: wrote {json_path} and the section into {args.write}", flush=True)
    else:
        print(f"bench: wrote {json_path}", flush=True)
    return 1 if any(d.get("error") for d in data["deployments"]) or data.get("interrupted") else 0


if __name__ == "__main__":
    raise SystemExit(main())
