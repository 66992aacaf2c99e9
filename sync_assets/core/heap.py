"""The process's long-lived heap, frozen while a sync runs, so garbage collection scans only the sync's objects.

A walk allocates millions of short-lived objects (every page's JSON, frames, batches). CPython
3.11 counts them towards its full collections, and each full collection traverses every tracked
object of the process, Dagster's and the imported libraries' included: measured in a run process,
150-170 ms with every thread stopped, twice in a 300-page walk, and 60-130 ms during the first
page's import of pandas. Frozen (`gc.freeze`), the objects alive when the sync starts are left out
of collections until it ends; a full collection then takes 10-40 ms. Nothing is leaked: the sync's
own garbage is collected as before, and `gc.unfreeze` at the end hands the long-lived objects back
to the oldest generation. A host that froze objects itself (a pre-fork server) is left alone.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_holders = 0  # syncs of this process inside `frozen_heap`
_ours = False  # whether the frozen generation is ours to thaw


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze what is alive now for the duration; thaw when the process's last sync leaves."""
    global _holders, _ours
    with _lock:
        if _holders == 0:
            _ours = gc.get_freeze_count() == 0  # someone else's frozen objects are not ours to thaw
        if _ours:
            gc.freeze()  # O(1): the lists of the generations are spliced; each sync freezes its own start too
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _ours:
                gc.unfreeze()
                _ours = False
