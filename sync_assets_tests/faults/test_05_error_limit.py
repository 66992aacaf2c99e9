"""Fault 5: 420/429 storms and Retry-After.

Invariant 5: budgets are shared by every process using the same API principal, server headers
(Retry-After, X-Ratelimit-*, X-ESI-Error-Limit-Remain/Reset) override local estimates, and the ESI
error limit is never exhausted by this program: the sandbox's `status_420` counter stays 0, except
for the one 420 a test forces by spending the error budget itself.

The sandbox's limits are the knobs `error_limit` / `error_limit_window` (errors per window per
client address) and `rate_limit_tokens` / `rate_limit_window` (ESI's token buckets). Windows are
shortened to seconds so the waits the program must do stay short; no assertion is on time.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import dagster as dg
import httpx

from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread

from .conftest import FaultReport
from .helpers import FORGE, Runner, expected_orders, failure_text, frame_diff, scaled
from .proxy import COUNTED_503, Barrier, FaultProxy

DOMAIN = "10000043"
KEY = ["region_id", "order_id"]


def _entry(fault_report: FaultReport, test: str, injection: str):
    entry = fault_report.entry("5", "420 / 429 storms and Retry-After", invariant="5", main="run", injection=injection)
    entry.tests.append(f"test_05_error_limit.py::{test}")
    return entry


def _run_all(runners: list[tuple[Runner, str]]) -> list[dg.ExecuteInProcessResult]:
    """Runs at the same time (threads; each run has its own resources, so only Postgres is shared)."""
    results: list[Any] = [None] * len(runners)

    def go(i: int, runner: Runner, partition: str) -> None:
        results[i] = runner.sync(partition=partition)

    threads = [threading.Thread(target=go, args=(i, r, p)) for i, (r, p) in enumerate(runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return results


STORMS = [  # (5xx rate, errors allowed per window, runs at once)
    (0.5, 100, 2), (0.8, 100, 3), (0.4, 100, 2), (0.6, 100, 3),
]
REGIONS = [FORGE, DOMAIN, "10000032"]


def test_5xx_storms_from_concurrent_runs_never_exhaust_the_error_limit(fault_databases: Any, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_5xx_storms_from_concurrent_runs_never_exhaust_the_error_limit",
                   "5xx storms (50-80%) under ESI's error limit of 100 errors per (shortened) window, 2-3 runs at once "
                   "(one region each, 8 pages in flight each, budgets shared through Postgres);")
    storms = [STORMS[i % len(STORMS)] for i in range(scaled(2))]
    for i, (rate, limit, runs) in enumerate(storms):
        regions = REGIONS[:runs]
        sandbox = EsiSandbox(regions={int(r): 30 for r in regions}, n_price_types=10, corporations={}, error_rate=rate,
                             error_seed=i + 3, error_limit=limit, error_limit_window=5)
        with serve_in_thread(sandbox) as url:
            db_url = fault_databases("limit")
            runners = [(Runner(url, db_url, max_attempts=8), region) for region in regions]
            results = _run_all(runners)
            total = sandbox.counter("total")
            label = f"{int(rate * 100)}% 5xx, limit {limit}, {runs} runs at once"
            for (runner, partition), result in zip(runners, results):
                if result.success:
                    frame = expected_orders(sandbox, partition)
                    assert frame_diff(runner.table(partition=partition), frame, KEY) is None
                else:
                    message = failure_text(result)
                    assert "HTTP 50" in message or "circuit is open" in message, message[:2000]
                    assert runner.table(partition=partition).empty, "a failed first sync wrote rows"
                    cause = _cause(message)
                    if not any(cause[:40] in n for n in entry.notes):
                        entry.notes.append(f"{label}: `{cause}`")
                entry.tally(f"runs in a 5xx storm ({label})").add(
                    "exact snapshot" if result.success else "clear failure, nothing written")
            entry.tally("served by the sandbox in those storms").add(f"{label}: {total['status_5xx']} x 5xx, {total['status_420']} x 420")
            assert total["status_420"] == 0, f"the program exhausted the error limit: {total['status_420']} x 420 ({total})"


def test_requests_in_flight_are_counted_against_the_error_budget(fault_db: str, fault_report: FaultReport) -> None:
    """Two runs at once (the default `esi` pool limit is 2), ESI's limit of 100 errors per window, 86 of
    them spent by someone else (the test): 14 left, above the floor of 10. Page 1 of each run succeeds;
    then ESI fails: the 8 + 8 requests both runs have in flight at that moment all fail. The
    shared budget must not have let more requests fly than errors it can afford."""
    entry = _entry(fault_report, "test_requests_in_flight_are_counted_against_the_error_budget",
                   "86 of 100 errors spent by the test, then two runs whose 16 requests in flight all fail with a 503 "
                   "(the sandbox counts each; a barrier makes them fly together);")
    # 9 pages: page 1, then 8 at once (max_concurrency); nothing queued behind them
    sandbox = EsiSandbox(regions={int(FORGE): 9, int(DOMAIN): 9}, n_price_types=10, corporations={},
                         error_limit=100, error_limit_window=3600)
    with serve_in_thread(sandbox) as upstream:
        proxy = FaultProxy(upstream, lambda req: COUNTED_503 if req.page >= 2 else None)
        barrier = Barrier(proxy, lambda scope: "page=1&" not in f"{scope['query_string'].decode()}&", size=16)
        with serve_in_thread(barrier, log_level="critical") as url:
            with httpx.Client(base_url=upstream) as client:
                for _ in range(86):
                    assert client.get("/markets/not-a-region/orders", params={"order_type": "all"}).status_code == 400
            # no retries: the overshoot is in the first wave, and a 420 would make a retry sleep to the window's end
            runners = [(Runner(url, fault_db, max_attempts=1), FORGE), (Runner(url, fault_db, max_attempts=1), DOMAIN)]
            results = _run_all(runners)
    served_420 = sandbox.counter("total")["status_420"]
    # neither run completes: each fails, or defers its walk to the error window's reset (no materialization)
    assert not any(r.get_asset_materialization_events() for r in results)
    for (runner, partition), result in zip(runners, results):
        assert runner.table(partition=partition).empty
    entry.tally("run pair with 16 requests in flight, 14 errors left").add(
        f"{served_420} x 420 served" + (" (BUG: the program exhausted the error limit)" if served_420 else ""))
    assert served_420 == 0, (
        f"{served_420} x 420: both runs were admitted 8 requests each while the shared budget knew only 14 errors "
        f"were left (floor 10); in-flight requests are not counted against X-ESI-Error-Limit-Remain")
    # page workers of the failed walks that were waiting for the budget give up with their walk
    # (a worker asleep until the error window resets would keep the process from exiting)
    deadline = time.monotonic() + 30
    while _page_workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _page_workers(), f"page workers outlive their failed walks: {_page_workers()}"


def _page_workers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("page")]


def test_a_420_forced_by_the_test_is_waited_out_and_never_repeated(fault_db: str, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_a_420_forced_by_the_test_is_waited_out_and_never_repeated",
                   "the test spends the whole error budget itself (bad requests) so the run's first request gets a 420;")
    # a window long enough that the run's first request lands in it however slowly the run starts
    # (with 4 s, a loaded machine started the run after the reset and no 420 was ever served)
    sandbox = EsiSandbox(regions={int(FORGE): 12}, n_price_types=10, corporations={}, error_limit=20, error_limit_window=20)
    with serve_in_thread(sandbox) as url:
        runner = Runner(url, fault_db)
        with httpx.Client(base_url=url) as client:
            for _ in range(20):  # 20 errors: the window is spent, the next request from this address is a 420
                assert client.get("/markets/not-a-region/orders", params={"order_type": "all"}).status_code == 400
        result = runner.sync()
        assert result.success, failure_text(result)
        assert frame_diff(runner.table(), expected_orders(sandbox), KEY) is None
        forced = sandbox.counter("total")["status_420"]
        messages = runner.messages(result)
        entry.tally("run after a 420 forced by the test").add(f"{forced} x 420 served in total; run waited for the reset and synced the exact snapshot")
        assert forced == 1, f"after the forced 420 the program asked again before the reset: {forced} x 420"
        assert any("error" in m.lower() and ("wait" in m.lower() or "retry" in m.lower()) for m in messages), messages[-20:]


def test_a_429_storm_is_paced_by_retry_after_and_the_bucket_headers(fault_db: str, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_a_429_storm_is_paced_by_retry_after_and_the_bucket_headers",
                   "a rate-limit bucket of 40 tokens per 3 s (a 200 costs 2) for 24 pages, part of it spent by the test first "
                   "(so the run starts with 429s and Retry-After).")
    sandbox = EsiSandbox(regions={int(FORGE): 24}, n_price_types=10, corporations={}, orders_per_page=200,
                         rate_limit_tokens={"market-order": 40}, rate_limit_window=3, request_log=True)
    with serve_in_thread(sandbox) as url:
        runner = Runner(url, fault_db, max_attempts=8)
        with httpx.Client(base_url=url) as client:
            spent = 0
            while client.get(f"/markets/{FORGE}/orders", params={"order_type": "all", "page": 1}).status_code == 200:
                spent += 1
        sandbox.reset_counters()
        result = runner.sync()
        assert result.success, failure_text(result)
        assert frame_diff(runner.table(), expected_orders(sandbox), KEY) is None
        counter = sandbox.counter("total")
        messages = runner.messages(result)
        waits = [m for m in messages if "Retry-After" in m or "rate-limit bucket" in m]
        entry.tally("run in a 429 storm, 24 pages").add(
            f"exact snapshot; {counter['status_429']} x 429, {len(waits)} waits logged, {counter['status_420']} x 420")
        assert counter["status_420"] == 0
        assert waits, "no wait on Retry-After / the bucket is visible in the run log"
        # after a 429 the bucket is latched for its Retry-After: 429s come at most once per request in flight
        assert counter["status_429"] <= 8 + len(waits), counter


def _cause(message: str) -> str:
    lines = [line for line in message.splitlines() if line.strip() and not line.startswith(("\t", " ", "dagster._core"))]
    return lines[-1][:240] if lines else ""
