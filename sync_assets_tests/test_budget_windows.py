"""How much of a sliding window the shared budget plans to spend.

A window whose every request is charged exactly at its own admission (no advance lent to a
process, no cost known only after the answer: IRIS, Laravel's throttle) is spent whole, its
margin kept as time only (each token comes back `slack` after the window); a window that lends
advances or whose answers may cost more than charged (ESI) keeps its 5% back. Against the IRIS
sandbox's limiter (Laravel's fixed window, opened by its first request) over real HTTP: the whole
window is used and nothing is refused. Counts and the sandbox's own counters are asserted, never
durations.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sync_assets.apis.iris.sandbox.app import IrisSandbox
from sync_assets.apis.sandbox_serving import serve_in_thread
from sync_assets.core.limits import ESI_COSTS, PER_REQUEST, CostModel, SlidingWindow
from sqlalchemy import text
from sync_assets.fetch.budget import BudgetExhausted, BudgetKey, BudgetPolicy, PostgresBudget
from sync_assets.fetch.http import ApiHttpClient, RetryPolicy
from sync_assets.fetch.limits import IrisHeaders

from .test_limits_declared import CountingSleep, Quiet, engine  # noqa: F401  (fixture)

IRIS = BudgetPolicy(error_limit=False, headers=IrisHeaders(), cost=PER_REQUEST, max_wait_s=60)
KEY = "w" * 32


@pytest.mark.parametrize("capacity", [1, 10, 20, 42])
def test_a_small_exactly_charged_window_is_spent_whole(capacity: int) -> None:
    assert IRIS.exact_window(capacity)
    assert IRIS.window_tokens(capacity) == capacity


def test_a_window_keeps_its_margin_where_the_accounting_is_not_exact() -> None:
    assert not IRIS.exact_window(43)  # it lends advances: 40.85 planned, 2 lent at a time
    assert IRIS.window_tokens(43) == pytest.approx(43 * 0.95)
    assert IRIS.window_tokens(500) == pytest.approx(475)  # IRIS's declared 500 per minute
    esi = BudgetPolicy()  # a 4xx costs 5 where 2 were charged
    assert not esi.exact_window(40) and esi.window_tokens(40) == pytest.approx(38)
    dearer_timeouts = BudgetPolicy(cost=CostModel(no_response=2))
    assert not dearer_timeouts.exact_window(20)


@pytest.mark.parametrize(
    ("cost", "capacity", "requests"),
    [
        (PER_REQUEST, 10, 10),  # was 9: one request of every window kept back
        (PER_REQUEST, 20, 20),  # was 19 (the IRIS benchmark's plan)
        (PER_REQUEST, 42, 42),
        (PER_REQUEST, 43, 40),  # lends advances: the margin stays (floor of 40.85)
        (ESI_COSTS, 40, 19),  # 2 a request, a 4xx 5: 38 tokens planned
    ],
)
def test_requests_admitted_before_the_window_is_spent(engine, cost: CostModel, capacity: int, requests: int) -> None:  # noqa: F811
    """An hour's window, so nothing comes back during the test: the budget admits exactly its
    planned share, then refuses (the next token is an hour away) rather than ask."""
    policy = BudgetPolicy(error_limit=False, headers=IrisHeaders(), cost=cost, max_wait_s=60)
    budget = PostgresBudget(engine, policy, sleep=CountingSleep())
    key = BudgetKey("iris", "api", f"key-{cost.ok}-{capacity}", declared=SlidingWindow(capacity, 3600))
    admitted = 0
    with pytest.raises(BudgetExhausted, match="rate-limit bucket api is spent"):
        for _ in range(capacity + 1):
            reservation = budget.before_request(key, Quiet())
            budget.after_response(reservation, 200, {})
            admitted += 1
    assert admitted == requests
    if policy.exact_window(capacity):
        assert budget.advance_hits == 0  # each request charged in its own transaction, dated at its admission
    budget.close()


def test_the_iris_sandbox_window_is_used_whole_without_a_429(engine) -> None:  # noqa: F811
    """10 requests per 5 s, Laravel's fixed window opened by its first request, the budget's plan
    the same; 20 pages fetched by 4 threads. The sandbox admits 10 in a window (all of it, not 9),
    never more than 10 in any 5 s, and refuses none: the token guard (each token back 0.1 s after
    the window) keeps the second window's requests after the sandbox's window has reset."""
    capacity, window, pages = 10, 5.0, 20
    sandbox = IrisSandbox(api_keys={"t": KEY}, merchants=pages * 10, rate_limit=capacity, rate_limit_window=window)
    budget = PostgresBudget(engine, IRIS)
    key = BudgetKey("iris", "api", "key-sandbox", declared=SlidingWindow(capacity, window))
    with serve_in_thread(sandbox) as url:
        http = ApiHttpClient(f"{url}/api/v1", {"X-API-KEY": KEY, "Accept": "application/json"}, httpx.Timeout(10.0), 4,
                             RetryPolicy(max_attempts=1), None, budget=budget)
        try:
            with ThreadPoolExecutor(4) as pool:
                got = list(pool.map(lambda page: http.get_page("/merchants", {"per_page": 10}, page, None, log=Quiet(),
                                                               budget_key=key), range(1, pages + 1)))
        finally:
            http.close()
    assert [len(p.data["data"]) for p in got] == [10] * pages
    counted = sandbox.counters()["t"]
    assert counted["requests"] == pages and counted["rate_limited"] == 0, counted
    assert counted["max_in_window"] == capacity, counted  # the window spent whole (9 before: one kept back)
    assert counted["max_in_sliding_window"] <= capacity, counted
    assert budget.advance_hits == 0
    budget.close()


def test_a_token_is_held_until_its_late_request_was_answered(engine) -> None:  # noqa: F811
    """A loaded machine sends an admitted request late, and the server's window opens when the
    request arrives, not when we admitted it. Held only the window plus slack from its admission,
    the token would let the next request in while the server still counts the late one (a 429);
    held until the late request was answered, the next one waits for the server's reset."""
    capacity, window = 1, 1.0
    sandbox = IrisSandbox(api_keys={"t": KEY}, merchants=20, rate_limit=capacity, rate_limit_window=window)
    budget = PostgresBudget(engine, IRIS)
    key = BudgetKey("iris", "api", "key-late", declared=SlidingWindow(capacity, window))
    headers = {"X-API-KEY": KEY, "Accept": "application/json"}
    with serve_in_thread(sandbox) as url:
        http = ApiHttpClient(f"{url}/api/v1", headers, httpx.Timeout(10.0), 1, RetryPolicy(max_attempts=1), None, budget=budget)
        try:
            late = budget.before_request(key, Quiet())
            time.sleep(window / 2)  # admitted, sent half a window later
            answer = httpx.get(f"{url}/api/v1/merchants", params={"per_page": 10, "page": 1}, headers=headers)
            budget.after_response(late, answer.status_code, answer.headers)
            assert answer.status_code == 200
            second = http.get_page("/merchants", {"per_page": 10}, 2, None, log=Quiet(), budget_key=key)
        finally:
            http.close()
    assert len(second.data["data"]) == 10
    counted = sandbox.counters()["t"]
    assert counted["requests"] == 2 and counted["rate_limited"] == 0, counted
    budget.close()


def test_an_abandoned_request_keeps_the_callers_error_when_the_database_is_gone(engine) -> None:  # noqa: F811
    """A walk interrupted while its request was in flight releases the reservation on its way out;
    with the database gone by then, the interruption is what the caller sees, and the error slot
    is given back."""
    from sqlalchemy.exc import OperationalError

    policy = BudgetPolicy(error_limit=True, headers=IrisHeaders(), cost=PER_REQUEST, max_wait_s=60, clock_slack_s=0.0)
    budget = PostgresBudget(engine, policy)
    key = BudgetKey("iris", "api", "key-gone", declared=SlidingWindow(1, 60.0))
    reservation = budget.before_request(key, Quiet())
    assert reservation.dated is not None and reservation.slot  # an exact window's token, dated; an error slot taken
    in_flight = budget._slots["iris"].in_flight
    time.sleep(0.05)  # answered "late": releasing it must move the token (a database write)

    def gone(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    budget._begin = gone  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        try:
            raise KeyboardInterrupt()
        finally:
            budget.release(reservation)
    assert budget._slots["iris"].in_flight == in_flight - 1


@pytest.mark.parametrize("cost, capacity", [(PER_REQUEST, 20), (ESI_COSTS, 300)])
def test_a_sized_window_is_charged_in_one_round_trip_exactly_as_in_a_full_transaction(engine, cost, capacity) -> None:  # noqa: F811
    """Once a process has read a window's size, an admission is one statement batch, not a
    transaction of separate statements; both decide the same: the same requests admitted (an exact
    window's whole capacity, ESI's 95% taken as advances) and the same charges written."""

    def admit_all(one_round_trip: bool) -> tuple[list[int], list[int], int]:
        budget = PostgresBudget(engine, BudgetPolicy(error_limit=False, headers=IrisHeaders(), cost=cost, max_wait_s=60))
        budget._ensure()
        batches = []
        if one_round_trip:
            charge_known = budget._windows.charge_known
            budget._windows.charge_known = lambda *args: batches.append(1) or charge_known(*args)  # type: ignore[method-assign]
        else:
            budget._charge_known_window = lambda *args: None  # type: ignore[method-assign]
        key = BudgetKey("t", "api", f"sized-{one_round_trip}-{capacity}-{time.time_ns()}", declared=SlidingWindow(capacity, 60.0))
        admitted = []
        for _ in range(capacity // cost.ok + 5):  # more requests than the window holds
            wait, charged, _, _ = budget._take_tokens(key)
            admitted.append(charged if wait <= 0 else -1)
        with engine.connect() as conn:
            charges = list(conn.execute(text("SELECT cost FROM sync_assets.api_spend WHERE bucket = :b ORDER BY at"),
                                        {"b": key.bucket}).scalars())
        budget.close()
        return admitted, charges, len(batches)

    full_admitted, full_charges, _ = admit_all(one_round_trip=False)
    admitted, charges, batches = admit_all(one_round_trip=True)
    assert (admitted, charges) == (full_admitted, full_charges)
    assert batches >= 1 and -1 in admitted and admitted[0] == cost.ok
    usable = BudgetPolicy(cost=cost).window_tokens(capacity)
    assert admitted.count(cost.ok) == int(usable // cost.ok) and sum(charges) <= usable


def test_a_window_resized_meanwhile_is_charged_by_its_new_size(engine) -> None:  # noqa: F811
    """Another process (or a response) changed the stored size: the one-trip charge writes nothing
    and the full transaction reads the new size."""
    budget = PostgresBudget(engine, IRIS)
    budget._ensure()
    key = BudgetKey("iris", "api", f"resized-{time.time_ns()}", declared=SlidingWindow(2, 60.0))
    assert budget._take_tokens(key)[0] <= 0 and budget._take_tokens(key)[0] <= 0
    assert budget._take_tokens(key)[0] > 0  # the window of 2 is spent
    with engine.begin() as conn:
        conn.execute(text("UPDATE sync_assets.api_limits SET capacity = 3, source = 'server' WHERE bucket = :b"),
                     {"b": key.bucket})
    budget._refused_until.clear()
    wait, charged, _, _ = budget._take_tokens(key)
    assert wait <= 0 and charged == 1 and budget._known_limits[key.bucket] == SlidingWindow(3, 60.0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sum(cost) FROM sync_assets.api_spend WHERE bucket = :b"),
                            {"b": key.bucket}).scalar_one() == 3
    budget.close()


def test_tokens_that_left_the_window_after_the_admission_are_not_taken_for_another_clients(engine) -> None:  # noqa: F811
    """ESI counts a request's `X-Ratelimit-Remaining` when the request arrives. A request answered
    half a second after its admission still has the tokens charged just before it weighing on
    that figure, though by the time the answer is read they have left our window. Taken for
    another client's spending, they were booked again, dated now: the next window lost as many
    requests. A Remaining lower than anything we could have spent is still believed and booked."""
    budget = PostgresBudget(engine, BudgetPolicy())
    key = BudgetKey("esi", "market-order", "phantom", declared=SlidingWindow(60, 1.0))
    limit = {"X-Ratelimit-Limit": "60/1s", "X-Ratelimit-Used": "2"}

    def spent(seconds: float | None = None) -> int:
        where = "" if seconds is None else f" AND at > clock_timestamp() - interval '{seconds} seconds'"
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT coalesce(sum(cost), 0) FROM sync_assets.api_spend WHERE bucket = :b{where}"),
                                    {"b": key.bucket}).scalar_one())

    for i in range(1, 17):  # 32 tokens, each answered at once with the server's true count
        early = budget.before_request(key, Quiet())
        budget.after_response(early, 200, {**limit, "X-Ratelimit-Remaining": str(60 - 2 * i)})
    time.sleep(0.6)
    late = budget.before_request(key, Quiet())
    remaining_on_arrival = 60 - spent(1.0)  # what the server counts as the request arrives
    time.sleep(0.5)  # answered late: the 32 early tokens have left the window (1 s + slack) meanwhile
    assert spent(1.0 + budget.policy.slack(1.0)) == 2
    budget.after_response(late, 200, {**limit, "X-Ratelimit-Remaining": str(remaining_on_arrival)})
    assert spent() == 34  # our own charges only: nothing booked as someone else's

    time.sleep(0.15)  # past the reconciliation interval (a tenth of the window)
    third = budget.before_request(key, Quiet())  # (its charge dropped the early rows: out of the window)
    budget.after_response(third, 200, {**limit, "X-Ratelimit-Remaining": "10"})  # another client spent the rest
    assert spent() == 60 - 10  # late's and third's 4 tokens, and 46 booked for the other client
    budget.close()
