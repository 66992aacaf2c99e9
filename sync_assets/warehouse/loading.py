"""Load pages while the walk is still fetching them.

A full snapshot used to be fetched, then COPYed, then merged: the COPY waited for the last page,
so on a far-away or rate-limited API the database idled through the walk and the walk through
the load. A PageLoader opens the write transaction at the first page that lands and COPYs each
accepted page at once, from a thread of its own (into the stage, or straight into the table on a
partition's first sync); the IO manager then finishes that same transaction: merge, validators,
commit. Still one transaction per materialization: a crash or a cancelled run leaves nothing.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Iterator, Mapping

from sqlalchemy import Connection, Engine

from ..core.datasets import Dataset
from ..core.rows import concat
from ..db.transaction import Transaction
from .writer import Loaded, begin_load, load_page, reset_load

_RESTART, _DONE = object(), object()
BATCH_ROWS = 50_000  # pages that queued up while a COPY ran go in one COPY, up to this many rows
# rows waiting for their COPY: beyond this the page workers wait for the loader, so the process holds
# a bounded share of the snapshot however slow the database is (the walk ahead of it gains nothing)
MAX_QUEUED_ROWS = 2 * BATCH_ROWS


class PageLoader:
    """A PageSink (see sync_assets.core.snapshot) that loads pages into the data database."""

    def __init__(self, engine: Engine, dataset: Dataset, state_key: str, context: Mapping[str, Any]):
        self._engine, self._dataset, self._state_key, self._context = engine, dataset, state_key, dict(context)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._room = threading.Condition()  # guards _queued_rows; notified as batches are loaded
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._transaction: Transaction | None = None
        self._conn: Connection | None = None
        self._loaded: Loaded | None = None
        self.error: BaseException | None = None
        self._aborting = False
        self._done_taken = False  # the loading thread has taken finish()'s _DONE off the queue
        self.pages = 0  # pages loaded since the last restart
        self.restarts = 0

    # -- PageSink: called by the walk's page workers ---------------------------------------------

    def put(self, page: int, rows: Any) -> None:
        """`rows`: the page's DataFrame or Arrow table (core.rows). Waits while MAX_QUEUED_ROWS
        rows are queued, unless loading stopped (failed, aborted): then nothing waits for room."""
        self._start()
        with self._room:
            while self._queued_rows >= MAX_QUEUED_ROWS and not self._stopped():
                self._room.wait(0.5)
            self._queued_rows += len(rows)
        self._queue.put(rows)

    def restart(self) -> None:
        if self._thread is not None:
            self._queue.put(_RESTART)

    # -- the asset's side ------------------------------------------------------------------------

    def finish(self) -> bool:
        """Wait for every page to be loaded. False when loading failed or never started (the
        writer then loads the assembled frame itself, after `abort()`)."""
        if self._thread is None:
            return False
        self._queue.put(_DONE)
        self._thread.join()
        return self.error is None and self._loaded is not None

    def abort(self) -> None:
        """Roll back whatever was loaded; safe to call more than once."""
        self._aborting = True  # pages still queued are skipped, not loaded
        self._loaded_rows(0)  # and no page worker waits for room any more
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
        transaction, self._transaction = self._transaction, None
        if transaction is not None:
            with contextlib.suppress(Exception):  # a rollback on a lost connection: nothing was committed anyway
                transaction.__exit__(RuntimeError, RuntimeError("aborted"), None)

    # -- the writer's side -----------------------------------------------------------------------

    @contextlib.contextmanager
    def completing(self) -> Iterator[tuple[Connection, Loaded]]:
        """The open transaction with the pages in it; committed when the block ends without error."""
        transaction, self._transaction = self._transaction, None
        if transaction is None or self._conn is None or self._loaded is None:
            raise RuntimeError("PageLoader.completing() without a finished load")
        try:
            yield self._conn, self._loaded
        except BaseException as exc:
            if not transaction.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            transaction.__exit__(None, None, None)

    # -- the loading thread ----------------------------------------------------------------------

    def _stopped(self) -> bool:
        return self._aborting or self.error is not None or (self._thread is not None and not self._thread.is_alive())

    def _loaded_rows(self, rows: int) -> None:
        with self._room:
            self._queued_rows -= rows
            self._room.notify_all()

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=f"load {self._dataset.key}", daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        try:
            self._transaction = Transaction(self._engine)
            self._conn = self._transaction.__enter__()
            loaded = begin_load(self._conn, self._dataset, self._state_key, self._context)
            item = self._queue.get()
            while True:
                if item is _DONE:
                    self._loaded = loaded
                    return
                if item is _RESTART:
                    reset_load(self._conn, self._dataset, loaded, self._context)
                    self.pages, self.restarts = 0, self.restarts + 1
                    item = self._queue.get()
                    continue
                batch, marker = self._batch(item)
                if not self._aborting:
                    load_page(self._conn, self._dataset, loaded, concat(batch, self._dataset.columns), self._context)
                self.pages += len(batch)
                self._loaded_rows(sum(len(rows) for rows in batch))
                item = marker if marker is not None else self._queue.get()
        except BaseException as exc:  # reported by finish(); the writer then loads the frame itself
            self.error = exc
            self._loaded_rows(0)  # wake the page workers waiting for room: they wait no more
            if not self._done_taken:
                self._drain()

    def _batch(self, first: Any) -> tuple[list[Any], object | None]:
        """The pages waiting behind `first` (up to BATCH_ROWS rows): one COPY for them all. A
        marker (restart, done) ends the batch and is returned to be handled after it."""
        batch, rows = [first], len(first)
        while rows < BATCH_ROWS:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _DONE:
                self._done_taken = True
                return batch, item
            if item is _RESTART:
                return batch, item
            batch.append(item)
            rows += len(item)
        return batch, None

    def _drain(self) -> None:
        """Let finish() return: consume until its _DONE."""
        while self._queue.get() is not _DONE:
            pass
