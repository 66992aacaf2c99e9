"""Fault 4: the snapshot moves while it is walked (Last-Modified and X-Pages change mid-walk, a
page below X-Pages vanishes) and stale caches answer 304 for some pages only.

Invariant 2: a mirror table is replaced only from one complete, consistent snapshot. After each
run the table and its validators are exactly ONE snapshot the API served (the old one or a new
one), never a mix; when no walk is consistent the run fails, naming why, and writes nothing.

Snapshots move through the sandbox (`refresh_after_pages`: the n+1-th page comes from a new
snapshot); X-Pages rewrites, vanished pages and stale 304s come from the fault proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pandas as pd
import pytest

from sync_assets.apis.esi.sandbox.esi import ERROR_PAGE_NOT_FOUND, EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread

from .conftest import FaultReport
from .helpers import (
    FORGE, Observer, Runner, expected_orders, expire, failure_text, frame_diff, materialization_metadata, rng_for, scaled,
    state_row,
)
from .proxy import STALE_304, XPAGES_PLUS_ONE, FaultProxy, Req, Status

PAGES = 16
KEY = ["region_id", "order_id"]


@dataclass
class World:
    sandbox: EsiSandbox
    proxy: FaultProxy
    runner: Runner
    observer: Observer
    choose: list[Callable[[Req], Any]]

    def snapshot(self) -> tuple[pd.DataFrame, Any]:
        return expected_orders(self.sandbox), self.sandbox.snapshot("orders", int(FORGE))

    def which(self, candidates: list[tuple[pd.DataFrame, Any]]) -> int | None:
        """Index of the candidate snapshot the table AND its validators equal, else None."""
        table, state = self.runner.table(), state_row(self.observer.conn)
        for i, (frame, snap) in enumerate(candidates):
            if (frame_diff(table, frame, KEY) is None and list(state["page_etags"]) == list(snap.etags)
                    and state["last_modified"] == snap.last_modified):
                return i
        return None


@pytest.fixture(scope="module")
def world(fault_databases: Any) -> Iterator[World]:
    sandbox = EsiSandbox(regions={int(FORGE): PAGES}, n_price_types=10, corporations={}, orders_per_page=500)
    choose: list[Callable[[Req], Any]] = [lambda req: None]
    with serve_in_thread(sandbox) as upstream:
        proxy = FaultProxy(upstream, lambda req: choose[0](req))
        with serve_in_thread(proxy, log_level="critical") as url:
            db_url = fault_databases("moving")
            runner = Runner(url, db_url)
            assert runner.sync().success
            observer = Observer(db_url)
            try:
                yield World(sandbox, proxy, runner, observer, choose)
            finally:
                observer.close()


def _entry(fault_report: FaultReport, test: str, injection: str):
    entry = fault_report.entry("4", "Snapshots moving mid-walk, partial 304s", invariant="2", main="", injection=injection)
    entry.tests.append(f"test_04_moving_snapshots.py::{test}")
    return entry


def test_a_refresh_anywhere_in_the_walk_leaves_exactly_one_snapshot(world: World, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_a_refresh_anywhere_in_the_walk_leaves_exactly_one_snapshot",
                   "the sandbox refreshes the snapshot after a random number of pages (Last-Modified changes; X-Pages may), "
                   "in conditional and unconditional walks, 1/4/8 pages at once;")
    rng = rng_for("refresh-mid-walk")
    for i in range(scaled(6)):
        conditional = i % 2 == 0
        if not conditional:  # a new snapshot first: stored ETags are stale, page 1 answers 200
            world.sandbox.refresh("orders", int(FORGE))
        before = world.snapshot()
        k = rng.randint(1, PAGES + 1)
        world.sandbox.refresh_after_pages(k, int(FORGE))
        expire(world.observer.conn)
        concurrency = rng.choice([1, 4, 8])
        result = world.runner.sync(max_concurrency=concurrency)
        assert result.success, failure_text(result)
        after = world.snapshot()
        which = world.which([before, after])
        assert which is not None, f"refresh after {k} pages ({'conditional' if conditional else 'full'} walk): mixed table"
        walks = materialization_metadata(result)["page_walks"]
        entry.tally("refresh mid-walk").add(
            f"{'conditional' if conditional else 'unconditional'} walk: "
            + ("new snapshot (walk restarted)" if which == 1 and walks > 1 else
               "new snapshot" if which == 1 else "old snapshot (refresh came after the last page)"))
        world.sandbox.refresh_after_pages(0, int(FORGE))  # nothing pending for the next case
        world.sandbox.refresh("orders", int(FORGE))
        assert world.runner.sync(full_refresh=True).success


def test_x_pages_changing_or_a_page_vanishing_mid_walk_restarts_the_walk(world: World, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_x_pages_changing_or_a_page_vanishing_mid_walk_restarts_the_walk",
                   "the proxy rewrites X-Pages on one page, or answers ESI's 'page does not exist' 404 below X-Pages, once;")
    rng = rng_for("xpages")
    for i in range(scaled(4)):
        world.sandbox.refresh("orders", int(FORGE))
        expire(world.observer.conn)
        target, fired = rng.randint(2, world.sandbox.page_count(int(FORGE))), [0]
        kind = "X-Pages + 1" if i % 2 == 0 else "page vanished (404)"

        def choose(req: Req) -> Any:
            if req.page == target and not fired[0] and "/orders" in req.path:
                fired[0] = 1
                return XPAGES_PLUS_ONE if kind == "X-Pages + 1" else Status(404, f'{{"error": "{ERROR_PAGE_NOT_FOUND}"}}'.encode())
            return None

        world.choose[0] = choose
        result = world.runner.sync()
        world.choose[0] = lambda req: None
        assert result.success, failure_text(result)
        assert fired[0] and materialization_metadata(result)["page_walks"] == 2
        assert world.which([world.snapshot()]) == 0
        entry.tally("X-Pages / vanished page mid-walk").add(f"{kind} on page {target}: walk restarted, exact snapshot")


def test_partial_304s_from_a_stale_cache_never_mix_snapshots(world: World, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_partial_304s_from_a_stale_cache_never_mix_snapshots",
                   "a stale cache (the proxy) answers 304 to some conditional requests although the snapshot changed;")
    rng = rng_for("partial-304")
    result = world.runner.sync(full_refresh=True)
    previous_version = _data_version(result)
    for i in range(scaled(5)):
        old = world.snapshot()
        world.sandbox.refresh("orders", int(FORGE))
        expire(world.observer.conn)
        new = world.snapshot()
        every = i == scaled(5) - 1  # last case: the whole cache is stale
        stale = set(rng.sample(range(1, PAGES + 1), rng.randint(1, PAGES - 1)))
        world.choose[0] = lambda req: STALE_304 if (every or req.page in stale) and "if-none-match" in req.headers else None
        result = world.runner.sync()
        world.choose[0] = lambda req: None
        assert result.success, failure_text(result)
        if every:  # nothing changed as far as the client can know: rows, validators and DataVersion stay
            state = state_row(world.observer.conn)
            kept = frame_diff(world.runner.table(), old[0], KEY) is None
            same_validators = list(state["page_etags"]) == list(old[1].etags) and state["last_modified"] == old[1].last_modified
            same_version = _data_version(result) == previous_version
            entry.tally("partial 304s").add(
                "every page 304 (all stale): " + ("old rows kept" if kept else "ROWS CHANGED") + ", "
                + ("validators and DataVersion kept" if same_validators and same_version else
                   f"BUG: stored Last-Modified became {state['last_modified']}, DataVersion changed: {not same_version}"))
            assert kept and materialization_metadata(result)["outcome"] == "not_modified"
            assert state["last_modified"] == old[1].last_modified, (
                f"all-304 walk whose 304s carry no Last-Modified (RFC 9110 does not require it) replaced the stored "
                f"Last-Modified {old[1].last_modified} with {state['last_modified']}")
            assert same_version, "all-304 walk changed the DataVersion (invariant 7)"
        else:
            which = world.which([old, new])
            assert which is not None, f"stale 304 on pages {sorted(stale)}: mixed table"
            assert which == 1, "a partly stale walk must be refetched in full"
            label = "page 1 304, later pages 200" if 1 in stale else "page 1 200, some later pages 304"
            entry.tally("partial 304s").add(f"{label}: refetched unconditionally, exact new snapshot")
        previous_version = _data_version(result)


def _data_version(result: Any) -> str:
    [event] = result.get_asset_materialization_events()
    return event.materialization.tags["dagster/data_version"]


def test_when_no_walk_is_consistent_the_run_fails_and_writes_nothing(world: World, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_when_no_walk_is_consistent_the_run_fails_and_writes_nothing",
                   "X-Pages rewritten on every walk (never a consistent snapshot).")
    world.sandbox.refresh("orders", int(FORGE))
    expire(world.observer.conn)
    before = world.runner.table(), state_row(world.observer.conn)
    world.choose[0] = lambda req: XPAGES_PLUS_ONE if req.page == 3 and "/orders" in req.path else None
    result = world.runner.sync(max_walks=3)
    world.choose[0] = lambda req: None
    assert not result.success
    message = failure_text(result)
    assert "no consistent snapshot after 3 walks" in message and "nothing was written" in message, message[:2000]
    assert frame_diff(world.runner.table(), before[0], KEY) is None
    assert state_row(world.observer.conn) == before[1]
    entry.tally("never consistent").add("clear failure after 3 walks, table and validators unchanged")
