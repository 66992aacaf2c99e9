"""Benchmark workers: each runs in its own process (started by bench.run under /usr/bin/time -v)
and writes one JSON result file.

    python -m bench.workers sync  --asset esi/market_orders --partition 10000002 --out F   (env as for `dagster`;
                                  no --partition for an unpartitioned asset)
    python -m bench.workers floor --esi-url URL --path /markets/10000002/orders --params '{"order_type":"all"}' \
                                  --database-url URL --dataset esi.market_orders --context '{"region_id": 10000002}' --out F

`sync` is sync_assets through an in-process `dagster.materialize` of the code location's own asset,
checks and resources (sync_assets.definitions, configured by the same environment variables as
`dagster asset materialize`), on an ephemeral instance as bench/market_orders.py does. The timed call is preceded by a warm-up materialization of a
trivial asset and the import of the libraries the code location defers to a run's first sync
(`core.lazy.SYNC_LIBRARIES`), so first-call costs (lazy imports, instance setup) are not charged to
the sync: the whole-process rows carry them. `--profile PREFIX` wraps the timed call in pyinstrument and writes PREFIX.txt (and the HTML tree into
$BENCH_PROFILE_HTML_DIR when set);
$BENCH_FETCH_SPANS=1 times every snapshot walk (ApiResource.fetch_snapshot, one per slice) and
reports the span from the first start to the last end (fetch_span_seconds);
$BENCH_PREIMPORT (comma-separated modules, diagnostics only) imports them before the timed call, e.g.
`pandas` when the product's lazy import of it fails under concurrent first use;
`--serial-fetch` runs the page walk's thread pool inline, so that a (main-thread) profiler sees
where the fetch CPU goes. `--profile-limit S` cuts a profiled run after S seconds (SIGALRM in the
profiled main thread): the tree of what it did so far is written and the process exits, so that a
crawling walk still leaves its profile.

`frame` reads a synced partition back (after the measured run, in its own process, so that nothing
of it reaches the sync's peak RSS) into the DataFrame of the data itself: the table's rows of the
scope, every table column with the dtype sync_assets gives it (its own `rows_to_frame`), and reports
that frame's `memory_usage(deep=True)` as frame_rows / frame_bytes:

    python -m bench.workers frame --database-url URL --dataset esi.corporation_assets \
                                  --scope '{"corporation_id": 98000001}' --out F

`floor` measures the physical floor on this machine, with no sync_assets code on the hot path:
  fetch       every page fetched by `--concurrency` threads over keep-alive http.client
              connections (bytes only)
  fetch+parse the same plus orjson.loads of each body
  copy        COPY of the same rows, pre-encoded as CSV (not timed), into an empty table with the
              dataset's DDL (primary key included), committed
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import json
import os
import resource
import signal
import sys
import threading
import time
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _write(out: str, data: dict[str, Any]) -> None:
    Path(out).write_text(json.dumps(data, indent=1, default=str))


# --------------------------------------------------------------------------- sync (in-process)


class _RssSampler:
    """RSS every 20 ms (to see where the peak happens); kept to ~100 points in the report."""

    def __init__(self, interval: float = 0.02) -> None:
        self.points: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True, name="rss-sampler")
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.points.append((round(time.perf_counter() - self.t0, 3), _rss_bytes()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def trace(self) -> list[tuple[float, int]]:
        step = max(1, len(self.points) // 100)
        return self.points[::step]


class _InlineExecutor:
    """ThreadPoolExecutor stand-in that runs each task at submit (profiling only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> "_InlineExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        return None

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller like a real executor
            future.set_exception(exc)
        return future


def _load_deferred_libraries() -> None:
    """Import what the code location defers to a run's first sync (pandas, numpy, pyarrow and its
    JSON, compute and CSV modules: `core.lazy.SYNC_LIBRARIES`), through the product's own prefetch,
    and wait for it: a first-call cost like Dagster's, charged to the whole-process rows only."""
    from sync_assets.core.lazy import SYNC_LIBRARIES, importing, prefetch

    prefetch(*SYNC_LIBRARIES)
    while importing():
        time.sleep(0.01)


def sync(args: argparse.Namespace) -> None:
    """sync_assets exactly as its code location defines it (sync_assets.definitions: resources from
    the environment, the asset and its checks), materialized in this process."""
    import dagster as dg

    from sync_assets.definitions import defs

    key = dg.AssetKey(args.asset.split("/"))
    asset = defs.get_assets_def(key)
    checks = [c for c in (defs.asset_checks or []) if any(k.asset_key == key for k in c.check_keys)]
    frame_info: dict[str, Any] = {}
    resources = dict(defs.resources)
    io_key = asset.get_io_manager_key_for_asset_key(key)
    base_io = resources[io_key]

    class RecordingIOManager(type(base_io)):  # type: ignore[misc,valid-type]
        """The project's IO manager; also records the process's memory when the snapshot reaches it.
        (The size of the data itself is not taken here: the snapshot need not hold it, pages may be
        loaded while fetching; bench.run reads the synced rows back afterwards, `frame` below.)"""

        def handle_output(self, context, obj) -> None:  # type: ignore[override]
            frame_info["rss_at_write"] = _rss_bytes()
            frame_info["write_started_at"] = round(time.perf_counter() - sampler.t0, 3)
            frame_info["peak_rss_before_write"] = _peak_rss_bytes()  # the fetch and the DataFrame assembly
            started = time.perf_counter()
            super().handle_output(context, obj)
            frame_info["handle_output_seconds"] = time.perf_counter() - started

    resources[io_key] = RecordingIOManager(**{name: getattr(base_io, name) for name in type(base_io).model_fields})
    overrides = json.loads(os.environ.get("BENCH_ESI_OVERRIDES") or "{}")  # diagnostics only (A/B of a code path)
    if overrides:
        esi = resources["esi"]
        fields = type(esi).model_fields
        unknown = set(overrides) - set(fields)
        if unknown:
            raise SystemExit(f"BENCH_ESI_OVERRIDES: {type(esi).__name__} has no field(s) {sorted(unknown)}")
        resources["esi"] = type(esi)(**{**{name: getattr(esi, name) for name in fields}, **overrides})
    preimported = [m for m in (os.environ.get("BENCH_PREIMPORT") or "").split(",") if m]  # diagnostics only
    for module in preimported:
        importlib.import_module(module)
    instance = dg.DagsterInstance.ephemeral()
    dynamic = getattr(asset.partitions_def, "name", None) if isinstance(asset.partitions_def, dg.DynamicPartitionsDefinition) else None
    if dynamic and args.partition:
        instance.add_dynamic_partitions(dynamic, [args.partition])

    @dg.asset(name="bench_warmup")
    def warmup() -> None:
        return None

    dg.materialize([warmup], instance=instance)  # Dagster's one-time costs, not the sync's
    _load_deferred_libraries()  # and the product's own first-use imports (core.lazy), likewise
    started = time.perf_counter()
    dg.materialize([warmup], instance=instance)
    dagster_floor = time.perf_counter() - started  # what any in-process materialization costs here
    if args.serial_fetch:
        import sync_assets.fetch.pagination as pagination

        pagination.ThreadPoolExecutor = _InlineExecutor  # type: ignore[assignment,misc]
    spans = _time_fetch_snapshots() if os.environ.get("BENCH_FETCH_SPANS") else []
    rss_before = _rss_bytes()
    sampler = _RssSampler()
    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    if profiler is not None and args.profile_limit:

        def cut(signum: int, frame: Any) -> None:  # runs in the main (profiled) thread, between bytecodes
            profiler.stop()
            _write_profile(args.profile, profiler, note=f"Cut after {args.profile_limit:.0f} s (--profile-limit): "
                                                        "the materialization had not finished; the tree is its first part.")
            _write(args.out, {"ok": True, "profile_cut_after_s": args.profile_limit, "seconds": time.perf_counter() - started})
            os._exit(0)

        signal.signal(signal.SIGALRM, cut)
        signal.setitimer(signal.ITIMER_REAL, args.profile_limit)
    result = dg.materialize(
        [asset, *checks], partition_key=args.partition, resources=resources, instance=instance, raise_on_error=False
    )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if profiler is not None and args.profile_limit:
        signal.setitimer(signal.ITIMER_REAL, 0)
    sampler.stop()
    if profiler is not None:
        profiler.stop()
        _write_profile(args.profile, profiler)
    out: dict[str, Any] = {
        "ok": result.success,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # this process's, all threads (the database's and the API's are their own)
        "rss_before": rss_before,
        "peak_rss": _peak_rss_bytes(),
        "dagster_trivial_seconds": dagster_floor,
        "rss_trace": sampler.trace(),
        **frame_info,
    }
    if preimported:
        out["preimported"] = preimported
    if spans:  # every snapshot's walk (one per slice), relative to the materialization's start
        out["fetch_spans"] = [(round(a - started, 3), round(b - started, 3)) for a, b in spans]
        out["fetch_span_seconds"] = max(b for _, b in spans) - min(a for a, _ in spans)
    events = result.get_asset_materialization_events()
    if events:
        out["metadata"] = {k: _plain(getattr(v, "value", v)) for k, v in events[0].materialization.metadata.items()}
    if not result.success:
        out["error"] = "; ".join(_error_text(e.step_failure_data.error) for e in result.get_step_failure_events() if e.step_failure_data.error)
    _write(args.out, out)


def _time_fetch_snapshots() -> list[tuple[float, float]]:
    """(start, end) perf_counter of every ApiResource.fetch_snapshot call from now on: a sliced
    dataset walks once per slice (concurrently) and its metadata has no walk time of its own; the
    walk is the span from the first start to the last end. Bench-side wrapper, product untouched."""
    import functools

    from sync_assets.fetch.resource import ApiResource

    spans: list[tuple[float, float]] = []
    original = ApiResource.fetch_snapshot

    @functools.wraps(original)
    def timed(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spans.append((started, time.perf_counter()))

    ApiResource.fetch_snapshot = timed  # type: ignore[method-assign]
    return spans


def _error_text(error: Any) -> str:
    """The first line of a step's error and of its root cause (Dagster wraps the user's exception)."""
    text = error.message.strip().splitlines()[0]
    cause = error
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause
    if cause is not error:
        text += " caused by " + cause.message.strip().splitlines()[0]
    return text


def _write_profile(prefix: str, profiler: Any, note: str = "") -> None:
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    Path(prefix + ".txt").write_text((note + "\n" if note else "") + text)
    html_dir = os.environ.get("BENCH_PROFILE_HTML_DIR")  # the interactive tree is large: not kept in the repository
    if html_dir:
        Path(html_dir, Path(prefix).name + ".html").write_text(profiler.output_html())


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


# --------------------------------------------------------------------------- the data's own size


def frame(args: argparse.Namespace) -> None:
    """The DataFrame of the synced data itself: the scope's rows read back from the table (as JSON,
    as the API sent them), converted by sync_assets' own rows_to_frame with the dataset's table
    columns and dtypes, in one frame; its deep memory usage is what a sync holding the whole
    snapshot in memory would have to hold at least."""
    import orjson
    import pandas as pd
    from sqlalchemy import create_engine

    from sync_assets.apis.esi.datasets import ESI_DATASETS  # noqa: F401 (registers them)
    from sync_assets.core.catalog import DATASETS_BY_KEY
    from sync_assets.db.urls import psycopg2_url
    from sync_assets.fetch.frames import rows_to_frame
    from sync_assets.warehouse.tables import qi, table_name

    started = time.perf_counter()
    dataset = DATASETS_BY_KEY[args.dataset]
    columns = dataset.table_columns
    scope = json.loads(args.scope)
    where = " AND ".join(f"{qi(name)} = %s" for name in scope) or "TRUE"
    query = (f"SELECT row_to_json(t)::text FROM (SELECT {', '.join(qi(c.name) for c in columns)} "
             f"FROM {table_name(dataset)} WHERE {where}) t")
    engine = create_engine(psycopg2_url(args.database_url, "frame"))
    raw = engine.raw_connection()
    chunks = []
    try:
        cursor = raw.cursor(name="bench_frame")  # server-side: streamed in chunks
        cursor.itersize = args.chunk
        cursor.execute(query, list(scope.values()))
        while True:
            rows = cursor.fetchmany(args.chunk)
            if not rows:
                break
            chunks.append(rows_to_frame([orjson.loads(r[0]) for r in rows], columns, "read back"))
        cursor.close()
    finally:
        raw.close()
        engine.dispose()
    data = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0] if chunks else None
    del chunks
    if data is None:
        from sync_assets.fetch.frames import empty_frame

        data = empty_frame(columns)
    _write(args.out, {"ok": True, "frame_rows": len(data), "frame_bytes": int(data.memory_usage(deep=True).sum()),
                      "frame_dtypes": {name: str(dtype) for name, dtype in data.dtypes.items()},
                      "frame_read_seconds": time.perf_counter() - started})


def read_back(database_url: str, dataset: str, scope: dict[str, Any], out: Path, env: dict[str, str] | None = None,
              timeout: float = 600) -> dict[str, Any]:
    """bench.run's side of `frame`: run it in its own process (not under /usr/bin/time, after the
    measured run) and return frame_rows / frame_bytes, or frame_error saying why not."""
    import subprocess

    cmd = [sys.executable, "-m", "bench.workers", "frame", "--database-url", database_url, "--dataset", dataset,
           "--scope", json.dumps(scope), "--out", str(out)]
    try:
        done = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"frame_error": f"read-back timed out after {timeout:.0f} s"}
    if done.returncode != 0 or not out.exists():
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        return {"frame_error": f"read-back failed (exit {done.returncode}): {tail[:400]}"}
    result = json.loads(out.read_text())
    result.pop("ok", None)
    return result


# --------------------------------------------------------------------------- physical floors


def floor(args: argparse.Namespace) -> None:
    import orjson

    url = urllib.parse.urlsplit(args.esi_url)
    params = json.loads(args.params)
    headers = {"Accept": "application/json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    local = threading.local()

    def get(page: int) -> tuple[bytes, dict[str, str]]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        conn.request("GET", f"{args.path}?{urllib.parse.urlencode({**params, 'page': page})}", headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"page {page}: HTTP {response.status} {body[:200]!r}")
        return body, {k.lower(): v for k, v in response.getheaders()}

    def walk(parse: bool) -> tuple[float, list[Any], int]:
        """Page 1, then pages 2..N on `concurrency` threads (what any X-Pages client must do)."""
        started = time.perf_counter()
        body, hdrs = get(1)
        pages = int(hdrs.get("x-pages", "1"))
        first = orjson.loads(body) if parse else body

        def one(page: int) -> Any:
            data, _ = get(page)
            return orjson.loads(data) if parse else data

        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            rest = list(pool.map(one, range(2, pages + 1)))
        return time.perf_counter() - started, [first, *rest], pages

    out: dict[str, Any] = {"concurrency": args.concurrency}
    out["fetch_seconds"], bodies, out["pages"] = walk(parse=False)
    out["body_bytes"] = sum(len(b) for b in bodies)
    del bodies
    out["fetch_parse_seconds"], pages_json, _ = walk(parse=True)
    out["rows"] = sum(len(p) for p in pages_json)
    if args.database_url:
        out.update(_copy_floor(args, pages_json))
    out["peak_rss"] = _peak_rss_bytes()
    _write(args.out, out)


def _copy_floor(args: argparse.Namespace, pages_json: list[Any]) -> dict[str, Any]:
    """COPY of the same rows into an empty table with the dataset's DDL, in each of PostgreSQL's two
    bulk formats, CSV and binary; each input is built first (untimed), so only the database's
    ingest is on the clock. The floor is the faster of the two."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from sqlalchemy import create_engine, text

    from sync_assets.fetch.frames import rows_to_frame
    from sync_assets.apis.esi.datasets import ESI_DATASETS  # noqa: F401 (registers them)
    from sync_assets.core.catalog import DATASETS_BY_KEY
    from sync_assets.core.rows import to_arrow
    from sync_assets.warehouse import writer
    from sync_assets.warehouse.tables import ensure_table, qi, table_name
    from sync_assets.db.urls import psycopg2_url

    dataset = DATASETS_BY_KEY[args.dataset]
    frame = pd.concat([rows_to_frame(p, dataset.columns, "floor") for p in pages_json], ignore_index=True)
    del pages_json
    for position, (name, value) in enumerate(json.loads(args.context).items()):
        frame.insert(position, name, value)
    names = [c.name for c in dataset.table_columns]
    sink = pa.BufferOutputStream()
    pacsv.write_csv(pa.Table.from_pandas(frame[names], preserve_index=False), sink, pacsv.WriteOptions(include_header=False))
    inputs = {"csv": sink.getvalue().to_pybytes()}
    if all(c.type in writer.BINARY_COPY_TYPES for c in dataset.table_columns):  # encoded as sync_assets encodes it
        stream = writer._BinaryStream(to_arrow(frame, dataset.table_columns), dataset.table_columns)
        inputs["binary"] = b"".join(iter(stream.read, b""))
    engine = create_engine(psycopg2_url(args.database_url, "floor"))
    seconds: dict[str, float] = {}
    try:
        for fmt, data in inputs.items():
            with engine.begin() as conn:
                ensure_table(conn, dataset)
                conn.execute(text(f"TRUNCATE {table_name(dataset)}"))
            raw = engine.raw_connection()
            try:
                cursor = raw.cursor()
                started = time.perf_counter()
                cursor.copy_expert(f"COPY {table_name(dataset)} ({', '.join(qi(n) for n in names)}) FROM STDIN WITH (FORMAT {fmt})",
                                   pa.BufferReader(data))
                raw.commit()
                seconds[fmt] = time.perf_counter() - started
                cursor.close()
            finally:
                raw.close()
    finally:
        engine.dispose()
    fastest = min(seconds, key=seconds.__getitem__)
    return {"copy_seconds": seconds[fastest], "copy_format": fastest, "copy_seconds_by_format": seconds,
            "copy_rows": len(frame), "csv_bytes": len(inputs["csv"]), "frame_bytes": int(frame.memory_usage(deep=True).sum())}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    jobs = parser.add_subparsers(dest="job", required=True)
    s = jobs.add_parser("sync")
    s.add_argument("--asset", required=True, help="asset key, e.g. esi/market_orders")
    s.add_argument("--partition", help="partition key (none for an unpartitioned asset, e.g. iris/merchants)")
    s.add_argument("--profile", help="write the pyinstrument tree to PREFIX.txt")
    s.add_argument("--profile-limit", type=float, help="with --profile: stop after this many seconds, keeping the tree so far")
    s.add_argument("--serial-fetch", action="store_true")
    s.add_argument("--out", required=True)
    b = jobs.add_parser("frame")
    b.add_argument("--database-url", required=True)
    b.add_argument("--dataset", required=True, help="e.g. esi.corporation_assets")
    b.add_argument("--scope", default="{}", help="the partition's scope columns, e.g. {\"corporation_id\": 98000001}")
    b.add_argument("--chunk", type=int, default=100_000, help="rows fetched and converted at a time")
    b.add_argument("--out", required=True)
    f = jobs.add_parser("floor")
    f.add_argument("--esi-url", required=True)
    f.add_argument("--path", required=True)
    f.add_argument("--params", default="{}")
    f.add_argument("--token")
    f.add_argument("--concurrency", type=int, default=8)
    f.add_argument("--database-url")
    f.add_argument("--dataset")
    f.add_argument("--context", default="{}", help="context columns, e.g. {\"region_id\": 10000002}")
    f.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    {"sync": sync, "frame": frame, "floor": floor}[args.job](args)


if __name__ == "__main__":
    sys.exit(main())
