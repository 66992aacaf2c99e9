"""The dlt side of the comparison, shared by both ways a dlt user runs it: inside a Dagster asset
(bench/dlt_defs.py) and as a plain script (bench/dlt_pipeline.py). No Dagster import here.

Configured by environment (set by bench.run for each run):
  BENCH_DLT_URL            ESI (sandbox) base URL
  BENCH_DLT_PATH           route path, e.g. markets/10000002/orders or corporations/98000001/assets
  BENCH_DLT_PARAMS         JSON object of fixed query parameters, e.g. {"order_type": "all"}
  BENCH_DLT_PRIMARY_KEY    merge key, e.g. order_id
  BENCH_DLT_TABLE          destination table name
  BENCH_DLT_TOKEN          optional bearer token (corporation routes)
  BENCH_DLT_CREDENTIALS    postgresql://user:pass@host/db?host=/socket/dir
  BENCH_DLT_FORMAT         "default" (dlt's default: INSERT VALUES) or "csv" (COPY)
  BENCH_DLT_PIPELINES_DIR  dlt's working directory (state, extract/normalize/load files)
  BENCH_RESULT_FILE        where to write {"seconds": ..., ...} of pipeline.run (inner time)

dlt has no conditional requests: every run fetches every page. Merge on the primary key is the
write disposition a user picks to keep a table in sync (dlt's default merge strategy,
delete-insert via a staging dataset); note that merge never deletes rows that vanished from the
API, unlike sync_assets' mirror mode.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")


def build_source(base_url: str, path: str, params: dict[str, Any], primary_key: str, table: str, token: str | None):
    from dlt.sources.helpers.rest_client.paginators import BasePaginator
    from dlt.sources.rest_api import rest_api_source

    class XPagesPaginator(BasePaginator):
        """ESI paging: ?page=N, the number of pages in the X-Pages response header."""

        def __init__(self) -> None:
            super().__init__()
            self.page = 1

        def init_request(self, request) -> None:
            self.page = 1
            self._has_next_page = True
            request.params = {**(request.params or {}), "page": 1}

        def update_state(self, response, data=None) -> None:
            pages = int(response.headers.get("x-pages") or 1)
            if self.page >= pages:
                self._has_next_page = False
            else:
                self.page += 1

        def update_request(self, request) -> None:
            request.params["page"] = self.page

    client: dict[str, Any] = {"base_url": base_url.rstrip("/") + "/", "paginator": XPagesPaginator()}
    if token:
        client["auth"] = {"type": "bearer", "token": token}
    return rest_api_source(
        {
            "client": client,
            "resource_defaults": {"write_disposition": "merge", "primary_key": primary_key},
            "resources": [{"name": table, "endpoint": {"path": path, "params": params, "data_selector": "$"}}],
        },
        name="esi",
    )


def run_pipeline(env: dict[str, str] | None = None) -> dict[str, Any]:
    """`dlt.pipeline(...).run(source)` as configured by the environment: {"seconds": pipeline.run,
    "steps": extract/normalize/load seconds, "format": ...}."""
    import dlt

    env = dict(os.environ if env is None else env)
    source = build_source(
        env["BENCH_DLT_URL"], env["BENCH_DLT_PATH"], json.loads(env.get("BENCH_DLT_PARAMS") or "{}"),
        env["BENCH_DLT_PRIMARY_KEY"], env["BENCH_DLT_TABLE"], env.get("BENCH_DLT_TOKEN") or None,
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_" + env["BENCH_DLT_TABLE"],
        destination=dlt.destinations.postgres(credentials=env["BENCH_DLT_CREDENTIALS"]),
        dataset_name="esi_dlt",
        pipelines_dir=env["BENCH_DLT_PIPELINES_DIR"],
    )
    fmt = env.get("BENCH_DLT_FORMAT", "default")
    started = time.perf_counter()
    info = pipeline.run(source, **({} if fmt == "default" else {"loader_file_format": fmt}))
    seconds = time.perf_counter() - started
    info.raise_on_failed_jobs()
    trace = pipeline.last_trace
    steps = {step.step: (step.finished_at - step.started_at).total_seconds() for step in trace.steps if step.finished_at}
    return {"seconds": seconds, "steps": steps, "format": fmt}


def write_result(result: dict[str, Any], env: dict[str, str] | None = None) -> None:
    out = (os.environ if env is None else env).get("BENCH_RESULT_FILE")
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh)
