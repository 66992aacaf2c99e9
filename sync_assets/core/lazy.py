"""Heavy libraries imported when first used, not when the code location loads.

Dagster's code server imports every definition to serve the UI and the daemon, but only runs build
DataFrames; pandas (and numpy and pyarrow behind it) is most of what loading would otherwise
import. `pandas` here is a stand-in module: the first attribute read (`pd.DataFrame`) imports the
real one, under a lock, and every later read is the real module's. (The stdlib's
`importlib.util.LazyLoader` does the same but is not thread-safe on Python 3.11: two page workers
reading `pd.DataFrame` at once could see a half-initialised module.)
"""

from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType
from typing import Any, Callable


class _Deferred(ModuleType):
    """A module imported on first attribute access; not registered in `sys.modules`, so `import
    pandas` elsewhere is untouched and the real module is there only once someone used it."""

    def __init__(self, name: str, on_load: Callable[[ModuleType], None] | None = None):
        super().__init__(name)
        self.__dict__["_lock"] = threading.Lock()
        self.__dict__["_on_load"] = on_load

    def __getattr__(self, attr: str) -> Any:  # only for names not copied in yet
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)  # introspection (copy, pickle, doctest) does not import the module
        _load(self)
        return self.__dict__[attr] if attr in self.__dict__ else getattr(importlib.import_module(self.__name__), attr)


def _load(module: _Deferred) -> None:
    with module.__dict__["_lock"]:
        if "__file__" not in module.__dict__:
            real = importlib.import_module(module.__name__)
            if module.__dict__["_on_load"] is not None:
                module.__dict__["_on_load"](real)
            module.__dict__.update(real.__dict__)


def lazy(name: str, on_load: Callable[[ModuleType], None] | None = None) -> ModuleType:
    """`name`, imported on first attribute access; `on_load(module)` runs once, before any caller
    gets an attribute."""
    return _Deferred(name, on_load)


def _arrow_allocates_with_malloc(pyarrow: ModuleType) -> None:
    """Arrow's default allocator in the wheels (mimalloc) keeps freed pages in per-thread heaps:
    with eight page workers each reading pages, a 300-page walk peaked ~60 MB higher, a 1000-page
    one ~40 MB, than with the C library's malloc, which hands large blocks back at once, and was no
    faster. An explicit ARROW_DEFAULT_MEMORY_POOL is the operator's choice and stays."""
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pyarrow.set_memory_pool(pyarrow.system_memory_pool())


def prefetch(*modules: ModuleType) -> None:
    """Import deferred modules on a background thread, now: for a run that will certainly use them.

    pandas, numpy and pyarrow take 0.4 s to import alone, 0.8-1.2 s beside Dagster, seconds when cold.
    Imported where first used, that time lands on the critical path (the first page's parse held
    up the rest of the walk); started when the walk starts, it overlaps its first requests. A
    caller that reads an attribute meanwhile waits for the same import under the module's lock.
    """
    waiting = [m for m in modules if isinstance(m, _Deferred) and "__file__" not in m.__dict__]
    if waiting:
        thread = threading.Thread(target=lambda: [_load(m) for m in waiting], name="prefetch-imports", daemon=True)
        with _prefetches_lock:
            _prefetches.append(thread)
        thread.start()


def importing() -> bool:
    """Whether a `prefetch` is still importing (a caller may do other work than wait for it)."""
    with _prefetches_lock:
        _prefetches[:] = [t for t in _prefetches if t.is_alive() or not t.ident]  # not started yet: still to import
        return bool(_prefetches)


_prefetches: list[threading.Thread] = []
_prefetches_lock = threading.Lock()


numpy = lazy("numpy")
pandas = lazy("pandas")
pyarrow = lazy("pyarrow", on_load=_arrow_allocates_with_malloc)
pyarrow_json = lazy("pyarrow.json")  # page bodies read in C++ (fetch.frames)
pyarrow_compute = lazy("pyarrow.compute")
pyarrow_csv = lazy("pyarrow.csv")  # COPY's input as CSV, encoded in C++ (warehouse.writer)
# COPY's input in PostgreSQL's binary format, encoded in Rust (warehouse.writer)
pgpq, pgpq_encoders, pgpq_schema = lazy("pgpq"), lazy("pgpq.encoders"), lazy("pgpq.schema")
# what a walk of pages Arrow reads imports (their rows go to the COPY as Arrow tables: no pandas) ...
ARROW_LIBRARIES = (numpy, pyarrow, pyarrow_json, pyarrow_csv, pgpq, pgpq_encoders, pgpq_schema)
# ... and a walk whose pages are parsed into DataFrames (pandas: 0.17 s and 43 MB of every run worker)
SYNC_LIBRARIES = (*ARROW_LIBRARIES, pandas)
