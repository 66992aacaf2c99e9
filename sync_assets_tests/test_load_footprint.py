"""Loading the code location (what Dagster's code server and every `dg` command do) imports no
DataFrame machinery: pandas, numpy and pyarrow load when a run first uses them
(`sync_assets/core/lazy.py`), and no token cryptography (PyJWT, cryptography): it loads when a token
is first verified or decrypted. Checked in a fresh interpreter, the way the code server loads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, sys
import sync_assets.definitions
heavy = ("pandas", "numpy", "pyarrow", "jwt", "cryptography")
print(json.dumps({name: name in sys.modules for name in heavy}))
"""


def test_loading_the_code_location_imports_no_dataframe_or_crypto_library() -> None:
    every_api = {"SYNC_ASSETS_APIS": "esi,iris,amazon"}  # every API's declarations and resources
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **every_api})
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {"pandas": False, "numpy": False, "pyarrow": False, "jwt": False, "cryptography": False}


THREADS = """
from concurrent.futures import ThreadPoolExecutor
from sync_assets.core.lazy import pandas as pd
with ThreadPoolExecutor(8) as pool:  # page workers reading pd.DataFrame at once, the first use included
    sums = list(pool.map(lambda i: int(pd.DataFrame({"a": [i, 1]})["a"].sum()), range(64)))
print(sums == [i + 1 for i in range(64)])
"""


def test_a_deferred_module_works_once_used_even_from_many_threads_at_once() -> None:
    for _ in range(3):  # a race shows in a fresh interpreter: try a few
        done = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]


PREFETCH = """
import json, time
from concurrent.futures import ThreadPoolExecutor
from sync_assets.core.lazy import numpy as np, pandas as pd, prefetch
prefetch(np, pd)  # a walk starting: the import runs on its own thread ...
with ThreadPoolExecutor(8) as pool:  # ... while page workers may already read pd.DataFrame
    sums = list(pool.map(lambda i: int(pd.DataFrame({"a": [i, 1]})["a"].sum()), range(16)))
deadline = time.monotonic() + 120
while "__file__" not in np.__dict__ and time.monotonic() < deadline:  # numpy: never touched here
    time.sleep(0.01)
print(json.dumps({"sums": sums == [i + 1 for i in range(16)], "numpy_loaded_unused": "__file__" in np.__dict__}))
"""


def test_prefetch_imports_in_the_background_and_a_reader_meanwhile_waits_for_the_same_import() -> None:
    done = subprocess.run([sys.executable, "-c", PREFETCH], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"sums": True, "numpy_loaded_unused": True}


ALLOCATOR = """
import json, time
from sync_assets.core.lazy import SYNC_LIBRARIES, importing, prefetch, pyarrow as pa
import pyarrow  # imported elsewhere first (pandas does): the pool is still chosen on our first use
before = pyarrow.default_memory_pool().backend_name
prefetch(*SYNC_LIBRARIES)
while importing():  # the background import, waited for as the bench's warm-up waits
    time.sleep(0.01)
print(json.dumps({"before": before, "after": pa.default_memory_pool().backend_name}))
"""


def test_arrow_allocates_with_malloc_unless_the_operator_chose_a_pool() -> None:
    """Arrow's default pool (mimalloc) kept freed pages of a walk's eight page workers: ~60 MB more at
    the peak of a 300-page walk (measured in bench). The operator's ARROW_DEFAULT_MEMORY_POOL wins."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    for chosen, expected in ((None, "system"), ("jemalloc", "jemalloc")):
        done = subprocess.run([sys.executable, "-c", ALLOCATOR], capture_output=True, text=True, timeout=300,
                              env={**env, **({"ARROW_DEFAULT_MEMORY_POOL": chosen} if chosen else {})})
        assert done.returncode == 0, done.stderr[-2000:]
        pools = json.loads(done.stdout.strip().splitlines()[-1])
        assert pools["after"] == expected
        assert pools["before"] != "system"  # the test is not vacuous: the wheels' default is another pool
