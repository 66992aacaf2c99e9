"""The comparison system as most dlt users run it: a plain script, no Dagster.

    python bench/dlt_pipeline.py          # configured by the BENCH_DLT_* environment variables

The same source, paginator, merge and loader file format as the Dagster asset (bench/dlt_defs.py):
both call bench/dlt_source.py. Writes pipeline.run's time to $BENCH_RESULT_FILE.
"""

import sys
from pathlib import Path

if not __package__:  # run as a file: the repository root, so that `bench` imports
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dlt_source import run_pipeline, write_result  # noqa: E402

if __name__ == "__main__":
    result = run_pipeline()
    write_result(result)
    print(f"dlt pipeline.run: {result['seconds']:.2f}s {result['steps']}")
