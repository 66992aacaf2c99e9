"""Loading the code location (what Dagster's code server and every `dg` command do) imports no
DataFrame machinery: pandas, numpy and pyarrow load when a run first uses them
(`sync_assets/core/lazy.py`). Checked in a fresh interpreter, the way the code server loads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, sys
import sync_assets.definitions
from importlib.util import _LazyModule
heavy = ("pandas", "numpy", "pyarrow")
print(json.dumps({name: (name in sys.modules and not isinstance(sys.modules[name], _LazyModule)) for name in heavy}))
"""


def test_loading_the_code_location_imports_no_dataframe_library() -> None:
    every_api = {"SYNC_ASSETS_APIS": "esi,iris,amazon"}  # every API's declarations and resources
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **every_api})
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {"pandas": False, "numpy": False, "pyarrow": False}


def test_a_lazy_module_works_once_used() -> None:
    done = subprocess.run([sys.executable, "-c", "from sync_assets.core.lazy import pandas as pd; "
                           "print(pd.DataFrame({'a': [1, 2]})['a'].sum())"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "3", done.stderr[-2000:]
