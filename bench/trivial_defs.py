"""Dagster's own fixed cost: one asset that does nothing, materialized exactly like the real ones
(`dagster asset materialize -m bench.trivial_defs --select trivial`)."""

import dagster as dg


@dg.asset
def trivial() -> None:
    return None


defs = dg.Definitions(assets=[trivial])
