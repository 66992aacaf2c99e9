"""Dagster's own fixed cost: one asset that does nothing, materialized exactly like the real ones
(`dagster asset materialize -m bench.trivial_defs --select trivial`). With BENCH_FREEZE_AT_EXIT set,
the process also freezes its heap at exit as sync_assets' code location does (core/heap.py
freeze_at_exit): the fixed cost a sync_assets run carries."""

import os

import dagster as dg

if os.environ.get("BENCH_FREEZE_AT_EXIT"):
    from sync_assets.core.heap import freeze_at_exit

    freeze_at_exit()


@dg.asset
def trivial() -> None:
    return None


defs = dg.Definitions(assets=[trivial])
