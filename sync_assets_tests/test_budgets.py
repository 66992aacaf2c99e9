"""Budgets shared by every process, through Postgres, against the sandbox's real limiters."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterator

import dagster as dg
import pytest
from sqlalchemy import text

from sync_assets.apis.esi import EsiResource
from sync_assets.core.requests import SliceRequest, plan_requests
from sync_assets.fetch.budget import BudgetKey, BudgetPolicy, CircuitOpen, PostgresBudget
from sync_assets.apis.esi.datasets import MARKET_ORDERS
from sync_assets.orchestration.assets import IO_MANAGER_KEY, build_sync_asset
from sync_assets.apis.esi.spec import ESI
from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.warehouse import PostgresWarehouse, SnapshotIOManager

REGIONS = ["10000002", "10000043", "10000032", "10000030"]
R = 8  # requests per second the sandbox allows on the market-order route


def _sync_region(url: str, database_url: str, region: str) -> bool:
    """One run in its own process, as the multiprocess executor or a run launcher would do."""
    warehouse = PostgresWarehouse(database_url=database_url)
    esi = EsiResource(base_url=url, budget_database_url=database_url, expiry_guard_s=0, max_concurrency=8)
    result = dg.materialize(
        [build_sync_asset(MARKET_ORDERS, ESI)], partition_key=region,
        resources={"esi": esi, "warehouse": warehouse, IO_MANAGER_KEY: SnapshotIOManager(warehouse=warehouse)},
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
    )
    return result.success


@pytest.fixture
def limited_sandbox() -> Iterator[tuple[EsiSandbox, str]]:
    sandbox = EsiSandbox(regions={int(r): 6 for r in REGIONS}, n_price_types=10, request_log=True,
                         rate_limit_window=1, rate_limit_tokens={"market-order": 2 * R})  # a 200 costs 2 tokens
    with serve_in_thread(sandbox) as url:
        yield sandbox, url


def test_four_concurrent_runs_share_one_bucket_without_a_429(limited_sandbox, database_url: str) -> None:
    sandbox, url = limited_sandbox
    # a worker process that dies fails the test (BrokenProcessPool); multiprocessing.Pool would wait forever
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_sync_region, [url] * 4, [database_url] * 4, REGIONS))
    assert results == [True] * 4
    orders = sandbox.counters()["orders"]
    assert orders["status_429"] == 0 and orders["status_200"] == 4 * 6
    times = sorted(entry["time"] for entry in sandbox.request_log() if entry["route"] == "orders")
    peak = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert peak <= R, f"{peak} requests within one second, the limit is {R}"


def test_a_403_storm_stops_before_the_error_limit_and_never_earns_a_420(database_url: str) -> None:
    sandbox = EsiSandbox(regions={10000002: 1}, n_price_types=10, corporations={98000001: "small"},
                         error_limit=20, error_limit_window=3)
    with serve_in_thread(sandbox) as url:
        esi = EsiResource(base_url=url, budget_database_url=database_url, error_limit_floor=5, max_attempts=1)
        http = esi._client()
        key = BudgetKey("esi", None)
        rejected = 0
        for _ in range(45):  # no token at all: every call is a 401/403 error
            with pytest.raises(Exception):
                http.get_page("/corporations/98000001/assets", {}, 1, None, budget_key=key)
            rejected += 1
        counters = sandbox.counters()["total"]
        assert counters["status_4xx"] == rejected and counters["status_420"] == 0
        assert http.budget is not None and http.budget.waited_s > 0  # it waited for window resets instead
        esi.close()


def test_repeated_server_errors_open_the_circuit_for_every_process(database_url: str) -> None:
    """Failures of 8 different requests in a row open it (one request failing on every retry does not:
    that is the item's failure, recorded as such; see test_iris_e2e and faults/test_11_iris)."""
    sandbox = EsiSandbox(regions={10000002: 1}, n_price_types=10, error_rate=1.0)
    with serve_in_thread(sandbox) as url:
        esi = EsiResource(base_url=url, budget_database_url=database_url, max_attempts=1)
        for _ in range(8):  # the same path again and again: one failing item, not an outage
            with pytest.raises(Exception):
                esi._client().get_page("/markets/prices", {}, None, None, budget_key=BudgetKey("esi", None))
        assert not PostgresBudget(esi._client().budget.engine, BudgetPolicy()).open_circuit("esi")
        for region in range(10000001, 10000008):  # seven more paths fail: eight in all
            with pytest.raises(Exception):
                esi._client().get_page(f"/markets/{region}/orders", {}, None, None, budget_key=BudgetKey("esi", None))
        other_process = PostgresBudget(esi._client().budget.engine, BudgetPolicy())
        assert other_process.open_circuit("esi")
        before = sandbox.counters()["total"]["requests"]
        with pytest.raises(CircuitOpen, match="circuit is open"):
            other_process.before_request(BudgetKey("esi", None), log=_quiet())
        assert sandbox.counters()["total"]["requests"] == before  # refused without asking
        esi.close()


class _quiet:
    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


def test_a_walk_pays_few_budget_transactions_and_hands_its_advances_back(database_url: str) -> None:
    """Per-request database round trips would cost more than the requests: tokens are taken in
    advance (a few requests' worth), error slots are leased, and both go back when the run ends."""
    sandbox = EsiSandbox(regions={10000002: 60}, n_price_types=10, orders_per_page=50, corporations={},
                         rate_limit_tokens={"market-order": 100_000})
    with serve_in_thread(sandbox) as url:
        esi = EsiResource(base_url=url, budget_database_url=database_url, expiry_guard_s=0, max_concurrency=8)
        snapshot = esi.fetch_snapshot(MARKET_ORDERS, _forge_request(), log=_quiet())
        budget = esi._client().budget
        assert snapshot.frame is not None and len(snapshot.frame) > 59 * 50  # the last page is a partial one
        requests = sandbox.counters()["orders"]["requests"]
        assert requests == 60 and budget.round_trips <= requests / 4, (budget.round_trips, requests)
        with budget.engine.connect() as conn:
            held = conn.execute(text("SELECT count(*) FROM sync_assets.api_error_slots WHERE holder = :h"),
                                {"h": budget.holder}).scalar_one()
            spent = conn.execute(text("SELECT sum(cost) FROM sync_assets.api_spend")).scalar_one()
        assert held == 1 and spent > 2 * requests  # a lease, and tokens charged ahead of use
        esi.close()
        with budget.engine.connect() as conn:
            held = conn.execute(text("SELECT count(*) FROM sync_assets.api_error_slots WHERE holder = :h"),
                                {"h": budget.holder}).scalar_one()
            spent = conn.execute(text("SELECT sum(cost) FROM sync_assets.api_spend")).scalar_one()
        assert held == 0 and spent == 2 * requests  # exactly what the 200s cost, per the server


def _forge_request() -> SliceRequest:
    return plan_requests(MARKET_ORDERS, "10000002")[0]


def test_after_an_error_window_ends_the_budget_admits_a_probe_instead_of_waiting_forever(database_url: str) -> None:
    """The only figure of a window was 'no errors left' (a 420): once the window has reset, what is
    left is unknown, not zero; one request finds out."""
    from sync_assets.warehouse import PostgresWarehouse

    budget = PostgresBudget(PostgresWarehouse(database_url=database_url).engine(), BudgetPolicy(error_limit_floor=10))
    key = BudgetKey("esi", None)
    first = budget.before_request(key, log=_quiet())
    budget.after_response(first, 420, {"x-esi-error-limit-remain": "0", "x-esi-error-limit-reset": "1"})
    second = budget.before_request(key, log=_quiet())  # waits out the latch, then probes
    assert budget.waited_s >= 1.0
    budget.after_response(second, 200, {"x-esi-error-limit-remain": "100", "x-esi-error-limit-reset": "60"})
    assert budget._slots["esi"].granted > 1  # the answer restored the full lease
    budget.close()


def test_a_latch_re_read_holds_up_no_other_request_of_the_process(database_url: str) -> None:
    """Other processes' latches are re-read every `latch_refresh_s`, outside the process's lock: while
    one page worker waits on that read, the others are admitted on the copy read a moment earlier,
    and the read, once back, holds the next requests to what another process latched meanwhile."""
    from sync_assets.core.errors import BudgetExhausted
    from sync_assets.warehouse import PostgresWarehouse

    engine = PostgresWarehouse(database_url=database_url).engine()
    now = [0.0]  # this process's monotonic clock, moved by hand
    budget = PostgresBudget(engine, BudgetPolicy(), clock=lambda: now[0])
    other_process = PostgresBudget(engine, BudgetPolicy())
    key = BudgetKey("esi", None)
    budget.after_response(budget.before_request(key, log=_quiet()), 200, {})  # the copy is read
    reading, resume = threading.Event(), threading.Event()
    read_latches = budget._read_latches

    def slow_read(api: str, at: float) -> Any:
        reading.set()
        assert resume.wait(30)
        return read_latches(api, at)

    budget._read_latches = slow_read  # type: ignore[method-assign]
    now[0] += budget.policy.latch_refresh_s  # the copy is due for a re-read
    outcome: list[BaseException | None] = []

    def first_worker() -> None:
        try:
            budget.after_response(budget.before_request(key, log=_quiet(), max_wait_s=1), 200, {})
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=first_worker)
    worker.start()
    try:
        assert reading.wait(30)  # the first worker is reading the latches
        # meanwhile another process answers a 420: the error limit latches the API for 30 s
        latched = other_process.before_request(key, log=_quiet())
        other_process.after_response(latched, 420, {"x-esi-error-limit-remain": "0", "x-esi-error-limit-reset": "30"})
        admitted = budget.before_request(key, log=_quiet(), max_wait_s=1)  # not held up by the read
        budget.after_response(admitted, 200, {})
    finally:
        resume.set()
        worker.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], BudgetExhausted), outcome  # the read found the latch
    with pytest.raises(BudgetExhausted, match="error budget low"):
        budget.before_request(key, log=_quiet(), max_wait_s=1)
    budget.close()
    other_process.close()
