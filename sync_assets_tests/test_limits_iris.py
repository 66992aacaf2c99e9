"""IRIS CRM's kind of limit: 500 requests per minute per key (Laravel's throttle), stated by
`X-RateLimit-Limit` / `X-RateLimit-Remaining`, `Retry-After` on a 429; no error limit at all.
Served over real HTTP on 127.0.0.1 by a tiny throttled API."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sync_assets.core.limits import PER_REQUEST, SlidingWindow
from sync_assets.fetch.budget import BudgetExhausted, BudgetKey, BudgetPolicy, PostgresBudget
from sync_assets.fetch.limits import IrisHeaders

from .test_limits_declared import Quiet, _client, engine, serve_in_thread  # noqa: F401  (fixture)

IRIS = BudgetPolicy(error_limit=False, headers=IrisHeaders(), cost=PER_REQUEST, max_wait_s=30)
DECLARED = SlidingWindow(500, 60)


class ThrottledApi:
    """500 per minute, `spent` of which another client of the same key has used already."""

    def __init__(self, spent: int = 0, limit: int = 500, retry_after: str = "1"):
        self.spent, self.limit, self.retry_after = spent, limit, retry_after
        self.served = self.throttled = 0
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/api/v1/leads", self.leads)])

    async def leads(self, request: Request) -> JSONResponse:
        with self._lock:
            if self.spent >= self.limit:
                self.throttled += 1
                return JSONResponse({"message": "Too Many Attempts."}, status_code=429, headers={
                    "X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": "0", "Retry-After": self.retry_after})
            self.spent += 1
            self.served += 1
            left = self.limit - self.spent
        page = int(request.query_params.get("page", "1"))
        return JSONResponse({"data": [{"id": page}], "meta": {"current_page": page, "last_page": 1000}},
                            headers={"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(left)})


def test_remaining_from_the_server_corrects_the_declared_window_before_any_429(engine) -> None:  # noqa: F811
    """Another client of the same key spent 400 of the 500: the first answer says 99 are left, the
    budget books the 400 it did not know about, and stops at what it may spend: 475 (500 less the
    5% safety margin) - 400 = 75 requests, with no 429 from the server."""
    api = ThrottledApi(spent=400)
    with serve_in_thread(api.app) as url:
        budget = PostgresBudget(engine, IRIS)
        http = _client(url, budget)
        key = BudgetKey("iris", "api", "key-1", declared=DECLARED)
        served = 0
        with pytest.raises(BudgetExhausted, match="rate-limit bucket api is spent"):
            for page in range(1, 500):
                http.get_page("/api/v1/leads", {}, page, None, log=Quiet(), budget_key=key)
                served += 1
        http.close()
    assert (served, api.served, api.throttled) == (75, 75, 0)


def test_an_api_without_an_error_limit_leases_no_error_slots(engine) -> None:  # noqa: F811
    """IRIS has no error limit: no error slots, no error budget, no error-limit latch, whatever
    the answers (a 420 is just a 4xx there)."""
    budget = PostgresBudget(engine, IRIS)
    key = BudgetKey("iris", "api", "key-2", declared=DECLARED)
    for status in (200, 404, 420, 200):
        reservation = budget.before_request(key, Quiet())
        assert not reservation.slot
        budget.after_response(reservation, status, {"X-ESI-Error-Limit-Remain": "0", "X-ESI-Error-Limit-Reset": "60"})
    assert budget.waited_s == 0
    with engine.connect() as conn:
        slots = conn.execute(text("SELECT count(*) FROM sync_assets.api_error_slots")).scalar_one()
        budgets = conn.execute(text("SELECT count(*) FROM sync_assets.api_error_budget")).scalar_one()
        latches = conn.execute(text("SELECT count(*) FROM sync_assets.api_latches")).scalar_one()
    assert (slots, budgets, latches) == (0, 0, 0)
    budget.close()


def test_a_429_with_retry_after_blocks_the_key_for_every_process(engine) -> None:  # noqa: F811
    api = ThrottledApi(spent=500, retry_after="1")
    with serve_in_thread(api.app) as url:
        budget = PostgresBudget(engine, replace(IRIS, backoff_initial_s=30.0))
        http = _client(url, budget)
        key = BudgetKey("iris", "api", "key-3", declared=DECLARED)
        with pytest.raises(Exception, match="429"):
            http.get_page("/api/v1/leads", {}, 1, None, log=Quiet(), budget_key=key)
        http.close()
    other = PostgresBudget(engine, IRIS)
    other.before_request(key, Quiet())
    assert 0.9 <= other.waited_s < 30  # Retry-After (1 s + 0.5 s), read by a process that never saw the 429
    other.close()
