"""Defect 1 of issue 10: declared limits are the starting point of a bucket, headers only correct
them, and their absence never slows a walk below the declared rate.

A tiny API served over real HTTP on 127.0.0.1 answers pages without any rate-limit header (as
ESI routes where limiting "isn't active yet", proxies that strip headers, or limiters that answer
429 bare). No assertion is on time: waits and database round trips are counted.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sync_assets.core.errors import FailureClass
from sync_assets.core.limits import SlidingWindow
from sync_assets.db.engines import engine_for
from sync_assets.fetch.budget import BudgetExhausted, BudgetKey, BudgetPolicy, PostgresBudget
from sync_assets.fetch.http import ApiHttpClient, ErrorLimitGate, RetryPolicy

PAGES = 60


class PagesApi:
    """`GET /items?page=N`: one JSON row per page, and whatever headers `extra(page)` says."""

    def __init__(self, extra: Callable[[int], Mapping[str, str]] = lambda page: {}):
        self.extra = extra
        self.requests = 0
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/items", self.items)])

    async def items(self, request: Request) -> JSONResponse:
        with self._lock:
            self.requests += 1
        page = int(request.query_params.get("page", "1"))
        return JSONResponse([{"page": page}], headers=dict(self.extra(page)))


class Quiet:
    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


class CountingSleep:
    """Records every wait the budget asks for instead of sleeping through long ones."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a free port of 127.0.0.1 in a daemon thread."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, name="limits-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test API did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def engine(database_url: str):
    return engine_for(database_url)


def _client(url: str, budget: PostgresBudget) -> ApiHttpClient:
    return ApiHttpClient(url, {}, httpx.Timeout(10.0), 4, RetryPolicy(max_attempts=1), ErrorLimitGate(10), budget=budget)


@pytest.fixture
def headerless_api() -> Iterator[tuple[PagesApi, str]]:
    api = PagesApi()
    with serve_in_thread(api.app) as url:
        yield api, url


def test_a_declared_route_without_rate_limit_headers_is_served_at_the_declared_rate(engine, headerless_api) -> None:
    """60 pages, a declared window that allows all of them (ESI's market-order group, 12000 tokens
    per 15 minutes): no wait, no one-request-at-a-time probing, and few budget transactions."""
    api, url = headerless_api
    sleep = CountingSleep()
    budget = PostgresBudget(engine, BudgetPolicy(), sleep=sleep)
    http = _client(url, budget)
    key = BudgetKey("esi", "market-order", "public", declared=SlidingWindow(12_000, 900))
    pages = [http.get_page("/items", {}, page, None, log=Quiet(), budget_key=key) for page in range(1, PAGES + 1)]
    assert [p.data for p in pages] == [[{"page": n}] for n in range(1, PAGES + 1)]
    assert api.requests == PAGES
    assert sleep.waits == [] and budget.waited_s == 0, sleep.waits[:5]
    assert budget.round_trips <= PAGES / 4, budget.round_trips  # tokens taken in advance, not per request
    assert budget.remaining(key) == 12_000 - 2 * PAGES  # each 200 cost its declared 2 tokens
    http.close()


def test_the_declared_limit_is_never_exceeded_when_the_server_says_nothing(engine, headerless_api) -> None:
    """Declared: 40 tokens per hour, a 200 costs 2, 5% kept back: exactly 19 requests' worth of tokens
    (38), i.e. 19 requests, then the budget refuses rather than ask."""
    api, url = headerless_api
    budget = PostgresBudget(engine, BudgetPolicy(max_wait_s=60), sleep=CountingSleep())
    http = _client(url, budget)
    key = BudgetKey("esi", "tiny", "public", declared=SlidingWindow(40, 3600))
    served = 0
    with pytest.raises(BudgetExhausted, match="rate-limit bucket tiny") as refused:
        for page in range(1, 100):
            http.get_page("/items", {}, page, None, log=Quiet(), budget_key=key)
            served += 1
    assert served == api.requests == 19
    assert refused.value.failure_class is FailureClass.BUDGET  # one error tree: the failure sensor reads the class
    http.close()


def test_the_servers_limit_overrides_the_declared_one_and_its_absence_changes_nothing(engine) -> None:
    """Declared 40/h, but the server says 100/h on its first answer: the larger bucket is used from
    then on, also by another process, and later answers without headers do not shrink it back."""
    says = {1: {"X-Ratelimit-Limit": "100/60m", "X-Ratelimit-Used": "2"}}
    api = PagesApi(lambda page: says.get(page, {}))
    with serve_in_thread(api.app) as url:
        budget = PostgresBudget(engine, BudgetPolicy(max_wait_s=60), sleep=CountingSleep())
        http = _client(url, budget)
        key = BudgetKey("esi", "tiny", "public", declared=SlidingWindow(40, 3600))
        served = 0
        with pytest.raises(BudgetExhausted):
            for page in range(1, 200):
                http.get_page("/items", {}, page, None, log=Quiet(), budget_key=key)
                served += 1
        assert served == 47  # 95 of 100 tokens usable: 47 requests of 2
        http.close()
        other = PostgresBudget(engine, BudgetPolicy(max_wait_s=60), sleep=CountingSleep())
        assert other.remaining(key) == 100 - 2 * 47


def test_the_error_limit_policy_of_esi_is_kept_for_declared_routes(engine, headerless_api) -> None:
    """ESI's error slots still gate a declared route (ESI's policy declares an error limit)."""
    _, url = headerless_api
    budget = PostgresBudget(engine, BudgetPolicy(), sleep=CountingSleep())
    http = _client(url, budget)
    http.get_page("/items", {}, 1, None, log=Quiet(),
                  budget_key=BudgetKey("esi", "market-order", declared=SlidingWindow(12_000, 900)))
    with engine.connect() as conn:
        from sqlalchemy import text

        held = conn.execute(text("SELECT count(*) FROM sync_assets.api_error_slots WHERE holder = :h"),
                            {"h": budget.holder}).scalar_one()
    assert held == 1
    http.close()


def test_a_budget_table_of_the_previous_version_is_upgraded_and_its_learned_sizes_kept(engine) -> None:
    """Rows written before limits were declared were learned from the server: a declaration does
    not replace them."""
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA sync_assets; CREATE TABLE sync_assets.api_limits (bucket text PRIMARY KEY, "
                          "capacity integer NOT NULL, window_s double precision NOT NULL, "
                          "updated_at timestamptz NOT NULL DEFAULT now())"))
        conn.execute(text("INSERT INTO sync_assets.api_limits (bucket, capacity, window_s) VALUES ('esi/tiny/public', 100, 3600)"))
    budget = PostgresBudget(engine, BudgetPolicy(), sleep=CountingSleep())
    key = BudgetKey("esi", "tiny", "public", declared=SlidingWindow(40, 3600))
    budget.before_request(key, Quiet())
    assert budget.remaining(key) == 98
    budget.close()


def test_an_advance_sized_for_the_declared_limit_goes_back_when_the_server_states_a_smaller_one(engine) -> None:
    """Declared 12000 per 15 minutes: the first request takes 32 requests' worth in advance. The
    server says 16 per minute: the advance goes back at once, and the next request is charged
    against the server's window (otherwise every process would fire its stale advance: 429s)."""
    budget = PostgresBudget(engine, BudgetPolicy(), sleep=CountingSleep())
    key = BudgetKey("esi", "market-order", declared=SlidingWindow(12_000, 900))
    first = budget.before_request(key, Quiet())
    assert budget.remaining(key) == 12_000 - 2  # 64 charged, 62 of them held by this process
    budget.after_response(first, 200, {"X-Ratelimit-Limit": "16/1m", "X-Ratelimit-Used": "2", "X-Ratelimit-Remaining": "14"})
    assert budget.remaining(key) == 14
    budget.before_request(key, Quiet())
    assert budget.advance_hits == 0
    budget.close()
