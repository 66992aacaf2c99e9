"""Heavy libraries imported when first used, not when the code location loads.

Dagster's code server imports every definition to serve the UI and the daemon, but only runs build
DataFrames; pandas (and numpy behind it) is most of what loading would otherwise import. The
stdlib's `importlib.util.LazyLoader` defers a module's execution to its first attribute access, so
`pd.DataFrame` in a run imports pandas then, and a process that never touches it never does.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy(name: str) -> ModuleType:
    """`name`, imported on first attribute access (or the module itself when already imported)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


numpy = lazy("numpy")
pandas = lazy("pandas")
pyarrow = lazy("pyarrow")
