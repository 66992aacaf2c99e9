"""Benchmark: sync The Forge's market orders from the ESI sandbox into PostgreSQL.

Measures on this machine, with the sandbox served over HTTP on 127.0.0.1 by its own process and an
embedded PostgreSQL (or SYNC_ASSETS_DATABASE_URL):
  full       first sync into an empty table (every page 200, every row inserted)
  unchanged  re-sync after Expires with no snapshot change (every page 304, 0 rows written)
  refreshed  re-sync after a snapshot refresh (~10% changed, ~5% gone, ~5% new)
Each phase goes through `dagster.materialize` (in-process), as an asset run would.

    .venv/bin/python bench/market_orders.py [--pages 300] [--repeat 3] [--write bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import socket
import subprocess
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import dagster as dg
import httpx

from sync_assets.apis.esi import EsiResource
from sync_assets.apis.esi.datasets import MARKET_ORDERS
from sync_assets.orchestration.assets import IO_MANAGER_KEY, build_sync_asset
from sync_assets.apis.esi.spec import ESI
from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager
from sync_assets.db.embedded import ensure_database, start_embedded_postgres, stop_embedded_postgres

FORGE = "10000002"


def run_once(url: str, database_url: str) -> dict[str, dict[str, float]]:
    warehouse = PostgresWarehouse(database_url=database_url)
    resources = {
        "esi": EsiResource(base_url=url, expiry_guard_s=0),
        "warehouse": warehouse,
        IO_MANAGER_KEY: SnapshotIOManager(warehouse=warehouse),
    }
    asset = build_sync_asset(MARKET_ORDERS, ESI)
    instance = dg.DagsterInstance.ephemeral()
    out: dict[str, dict[str, float]] = {}

    def phase(name: str) -> None:
        started = time.perf_counter()
        result = dg.materialize([asset], partition_key=FORGE, resources=resources, instance=instance)
        seconds = time.perf_counter() - started
        [event] = result.get_asset_materialization_events()
        meta = {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
        out[name] = {
            "seconds": seconds,
            "rows": float(meta.get("dagster/partition_row_count", meta["dagster/row_count"])),
            "rows_written": float(meta["rows_written"]),
            "fetch_seconds": float(meta["fetch_seconds"]),
            "bytes": float(meta["bytes_received"]),
            "status_304": float(meta["status_304"]),
            "pages": float(meta["pages"]),
        }

    def wait_for_expiry() -> None:
        expires = warehouse.read_validators(MARKET_ORDERS, FORGE).expires_at
        time.sleep(max((expires - datetime.now(timezone.utc)).total_seconds(), 0) + 0.05)

    phase("full")
    wait_for_expiry()
    phase("unchanged")
    httpx.post(f"{url}/_sandbox/refresh", json={"route": "orders", "region_id": int(FORGE)}, timeout=60).raise_for_status()
    wait_for_expiry()
    phase("refreshed")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", type=Path, help="write a Markdown report here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        server = start_embedded_postgres(Path(tmp) / "data")
        runs = []
        for i in range(args.repeat):
            database_url = ensure_database(server, f"bench_{i}")
            with sandbox_process(args.pages) as url:
                runs.append(run_once(url, database_url))
            print(f"run {i + 1}/{args.repeat}: " + ", ".join(f"{k} {v['seconds']:.2f}s" for k, v in runs[-1].items()), flush=True)
        stop_embedded_postgres(Path(tmp) / "data")

    rows = []
    for phase in ("full", "unchanged", "refreshed"):
        seconds = statistics.median(r[phase]["seconds"] for r in runs)
        fetch = statistics.median(r[phase]["fetch_seconds"] for r in runs)
        last = runs[-1][phase]
        rows.append((phase, seconds, fetch, last["rows"], last["rows_written"], last["rows"] / seconds, last["bytes"], last["status_304"], last["pages"]))
    table = [
        "| phase | wall s (median) | fetch s | rows in table | rows written | rows/s | body bytes | 304 pages / pages |",
        "|---|---|---|---|---|---|---|---|",
    ] + [
        f"| {p} | {s:.2f} | {f:.2f} | {int(n):,} | {int(w):,} | {r:,.0f} | {int(b):,} | {int(c)}/{int(pg)} |"
        for p, s, f, n, w, r, b, c, pg in rows
    ]
    print("\n".join(table))
    if args.write:
        command = "make bench   # = .venv/bin/python bench/market_orders.py --write bench/RESULTS.md"
        args.write.write_text(
            "# Benchmark results\n\n"
            f"Produced by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d} "
            f"({platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
            f"{_cores()} cores), median of {args.repeat} runs.\n\n"
            f"## Market orders, The Forge ({args.pages} pages × 1000 orders), sandbox on 127.0.0.1, 0 ms latency, "
            "embedded PostgreSQL, in-process `dagster.materialize`\n\n"
            + "\n".join(table)
            + "\n\nWall time covers the whole materialization (read sync state, fetch and parse every page, COPY,"
            " merge, commit, Dagster events). `fetch s` is the page walk alone. *rows/s* = rows in the table /"
            " wall time. The unchanged re-sync asks every page with its ETag (all 304) and transfers no body.\n"
        )
        print(f"wrote {args.write}")


@contextlib.contextmanager
def sandbox_process(pages: int) -> Iterator[str]:
    """The sandbox in its own process, as a remote API would be: it must not share our GIL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = (
        "from sync_assets.apis.esi.sandbox.server import run; "
        f"run(port={port}, regions={{{int(FORGE)}: {pages}}}, n_price_types=100, cache_seconds={{'orders': 1}})"
    )
    process = subprocess.Popen([sys.executable, "-c", code])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/_sandbox/state", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
