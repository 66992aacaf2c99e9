"""The loader that COPYs pages while the walk fetches them holds a bounded share of the snapshot:
page workers wait while MAX_QUEUED_ROWS rows are queued (a slow database slows the walk instead of
filling memory), and never wait on a loader that failed or was aborted."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from sync_assets.apis.esi.datasets import MARKET_ORDERS
from sync_assets.warehouse import PostgresWarehouse, loading

from .test_warehouse import orders

PAGE_ROWS = 10


def _page(first_id: int) -> pd.DataFrame:
    frame = orders("10000002", list(range(first_id, first_id + PAGE_ROWS))).frame
    return frame.drop(columns=["region_id"])  # a page holds the payload's columns; the loader adds the scope's


def _put_all(loader: loading.PageLoader, pages: int, done: list[int]) -> threading.Thread:
    def run() -> None:
        for page in range(pages):
            loader.put(page + 1, _page(1 + page * PAGE_ROWS))
            done.append(page + 1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _settle(done: list[int], seconds: float = 1.0) -> int:
    """How many puts returned once they stopped advancing (or after `seconds` at most)."""
    deadline, seen = time.monotonic() + seconds, -1
    while time.monotonic() < deadline and seen != len(done):
        seen = len(done)
        time.sleep(0.2)
    return len(done)


@pytest.fixture
def slow_database(monkeypatch: pytest.MonkeyPatch):
    """COPYs that wait until the test opens the gate; how many rows each COPY got."""
    gate, copied = threading.Event(), []
    real = loading.load_page

    def load_page(conn, dataset, loaded, rows, context):
        gate.wait(60)
        copied.append(len(rows))
        real(conn, dataset, loaded, rows, context)

    monkeypatch.setattr(loading, "load_page", load_page)
    monkeypatch.setattr(loading, "MAX_QUEUED_ROWS", 3 * PAGE_ROWS)
    return gate, copied


def test_page_workers_wait_for_room_and_every_page_is_loaded(database_url: str, slow_database) -> None:
    gate, copied = slow_database
    loader = PostgresWarehouse(database_url=database_url).page_loader(MARKET_ORDERS, "10000002", {"region_id": 10000002})
    done: list[int] = []
    worker = _put_all(loader, 20, done)
    waiting = _settle(done)
    assert waiting <= 4  # 3 pages of room (a 4th only while the first is out of the queue, in its COPY)
    assert worker.is_alive()
    gate.set()
    worker.join(60)
    assert done == list(range(1, 21))
    assert loader.finish()
    assert sum(copied) == 20 * PAGE_ROWS and max(copied) <= 3 * PAGE_ROWS + PAGE_ROWS
    loader.abort()  # nothing is committed in this test: roll the transaction back


def test_an_abort_releases_waiting_page_workers(database_url: str, slow_database) -> None:
    gate, _ = slow_database
    loader = PostgresWarehouse(database_url=database_url).page_loader(MARKET_ORDERS, "10000002", {"region_id": 10000002})
    done: list[int] = []
    worker = _put_all(loader, 20, done)
    _settle(done)
    assert worker.is_alive()
    aborting = threading.Thread(target=loader.abort, daemon=True)
    aborting.start()
    worker.join(10)  # released by the abort, before the held COPY returns
    assert not worker.is_alive() and done == list(range(1, 21))
    gate.set()
    aborting.join(60)
    assert not aborting.is_alive()


def test_a_failed_load_never_leaves_a_page_worker_waiting(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "MAX_QUEUED_ROWS", 2 * PAGE_ROWS)

    def broken(conn, dataset, loaded, rows, context):
        time.sleep(0.3)  # the queue fills up meanwhile
        raise RuntimeError("the database went away")

    monkeypatch.setattr(loading, "load_page", broken)
    loader = PostgresWarehouse(database_url=database_url).page_loader(MARKET_ORDERS, "10000002", {"region_id": 10000002})
    done: list[int] = []
    worker = _put_all(loader, 30, done)
    worker.join(30)
    assert not worker.is_alive() and done == list(range(1, 31))
    assert not loader.finish() and isinstance(loader.error, RuntimeError)
    loader.abort()
