"""The comparison system inside Dagster: an asset on top of dlt's rest_api source, as a Dagster
user would write it.

    dagster asset materialize -m bench.dlt_defs --select dlt_sync

The source, pipeline and their configuration (BENCH_DLT_* environment variables) are
bench/dlt_source.py's, shared with the plain-script run (bench/dlt_pipeline.py).
"""

import dagster as dg

from bench.dlt_source import run_pipeline, write_result


@dg.asset(name="dlt_sync", kinds={"dlt", "postgres"})
def dlt_sync(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    result = run_pipeline()
    write_result(result)
    context.log.info(f"dlt pipeline.run: {result['seconds']:.2f}s {result['steps']}")
    return dg.MaterializeResult(metadata={"pipeline_seconds": round(result["seconds"], 3)})


defs = dg.Definitions(assets=[dlt_sync])
