"""SP-API's kind of limit: a token bucket with burst (GCRA in Postgres), shared by processes.

Bounds are checked on counts: every admission is stamped with the interval in which it happened
([after the last wait, after the call returned]); in any interval, admissions that surely fell in
it never exceed burst + rate x length. Nothing asserts how fast the machine is.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from sqlalchemy import text

from sync_assets.core.limits import PER_REQUEST, TokenBucket
from sync_assets.fetch.budget import BudgetExhausted, BudgetKey, BudgetPolicy, PostgresBudget
from sync_assets.fetch.limits import AmznHeaders

from .test_limits_declared import Quiet, engine  # noqa: F401  (fixture)

SPAPI = BudgetPolicy(error_limit=False, headers=AmznHeaders(), cost=PER_REQUEST, backoff_initial_s=0.3, backoff_factor=2.0)


def _admissions_over_bound(stamps: list[tuple[float, float]], bucket: TokenBucket) -> list[str]:
    """Intervals [s, e] holding more admissions than burst + rate x (e - s)."""
    starts = sorted({pre for pre, _ in stamps})
    ends = sorted({post for _, post in stamps})
    over = []
    for s in starts:
        for e in ends:
            if e < s:
                continue
            inside = sum(1 for pre, post in stamps if pre >= s and post <= e)
            allowed = bucket.burst + bucket.rate * (e - s)
            if inside > allowed + 1e-9:
                over.append(f"{inside} admissions in {e - s:.3f}s (at most {allowed:.2f})")
    return over


def test_processes_sharing_a_token_bucket_never_exceed_burst_plus_rate_times_t(engine) -> None:  # noqa: F811
    bucket = TokenBucket(rate=20.0, burst=12)
    key = BudgetKey("spapi", "getInventorySummaries", "seller-1", declared=bucket)
    policy = replace(SPAPI, stash_share=0.25)  # advances of 3 tokens: a quarter of the burst held locally
    processes = [PostgresBudget(engine, policy) for _ in range(3)]  # three processes: three stashes
    stamps: list[tuple[float, float]] = []
    lock = threading.Lock()

    def worker(budget: PostgresBudget, n: int) -> None:
        woke = [0.0]

        def sleep(seconds: float) -> None:
            time.sleep(seconds)
            woke[0] = time.monotonic()

        for _ in range(n):
            woke[0] = time.monotonic()
            reservation = budget.before_request(key, Quiet(), sleep)
            admitted = time.monotonic()
            budget.after_response(reservation, 200, {})
            with lock:
                stamps.append((woke[0], admitted))

    threads = [threading.Thread(target=worker, args=(processes[i % 3], 14)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(stamps) == 84
    assert _admissions_over_bound(stamps, bucket) == []
    # the bound held with admissions from local advances among them (not a transaction each)
    assert sum(p.advance_hits for p in processes) > 0
    for budget in processes:
        budget.close()


def test_an_advance_held_while_the_bucket_refills_is_not_spent_on_top_of_a_full_burst(engine) -> None:  # noqa: F811
    """Process A takes an advance (3 tokens) with its first request, then idles while the bucket
    refills; process B spends the full burst; then A asks again. A's two unused tokens were charged
    before the refill: spending them now would put 2 requests on top of B's burst."""
    bucket = TokenBucket(rate=20.0, burst=12)
    key = BudgetKey("spapi", "getInventorySummaries", "seller-9", declared=bucket)
    policy = replace(SPAPI, stash_share=0.25)
    a, b = PostgresBudget(engine, policy), PostgresBudget(engine, policy)
    stamps: list[tuple[float, float]] = []

    def admit(budget: PostgresBudget) -> None:
        woke = [time.monotonic()]

        def sleep(seconds: float) -> None:
            time.sleep(seconds)
            woke[0] = time.monotonic()

        budget.after_response(budget.before_request(key, Quiet(), sleep), 200, {})
        stamps.append((woke[0], time.monotonic()))

    admit(a)
    time.sleep(bucket.burst / bucket.rate + 0.1)  # the bucket is full again
    for _ in range(11):  # the burst, less the 5% safety margin
        admit(b)
    for _ in range(2):
        admit(a)
    assert _admissions_over_bound(stamps, bucket) == []
    a.close()
    b.close()


def test_a_walk_on_a_roomy_token_bucket_pays_few_transactions(engine) -> None:  # noqa: F811
    key = BudgetKey("spapi", "getReport", "seller-1", declared=TokenBucket(rate=200.0, burst=200))
    budget = PostgresBudget(engine, SPAPI)
    for _ in range(100):
        budget.after_response(budget.before_request(key, Quiet()), 200, {})
    assert budget.round_trips <= 100 / 4, budget.round_trips
    assert budget.waited_s == 0
    budget.close()


def _failures(engine, latch: str) -> int:  # noqa: F811
    with engine.connect() as conn:
        return conn.execute(text("SELECT failures FROM sync_assets.api_latches WHERE latch = :l"), {"l": latch}).scalar_one()


def test_a_429_without_retry_after_latches_the_bucket_with_a_growing_backoff(engine) -> None:  # noqa: F811
    """SP-API's QuotaExceeded carries neither a rate header nor Retry-After: the bucket is blocked
    for 0.3 s, then 0.6 s after the next bare 429 in a row; 429s of requests already in flight do
    not make it longer; a success resets it. Another process honours the latch too."""
    key = BudgetKey("spapi", "getOrders", "seller-1", declared=TokenBucket(rate=100.0, burst=50))
    budget = PostgresBudget(engine, SPAPI)
    first, in_flight = budget.before_request(key, Quiet()), budget.before_request(key, Quiet())
    budget.after_response(first, 429, {"x-amzn-RequestId": "r1"})
    budget.after_response(in_flight, 429, {})
    assert _failures(engine, key.bucket) == 1
    other = PostgresBudget(engine, SPAPI)
    other.before_request(key, Quiet())
    assert other.waited_s >= 0.3 - 0.05  # it read the latch (its own clock started a little later)
    second = budget.before_request(key, Quiet())  # the latch has ended meanwhile
    budget.after_response(second, 429, {})  # the latch had ended: the next in a row
    assert _failures(engine, key.bucket) == 2
    before = budget.waited_s
    third = budget.before_request(key, Quiet())
    assert budget.waited_s - before >= 0.6
    budget.after_response(third, 200, {})
    assert _failures(engine, key.bucket) == 0
    budget.close()
    other.close()


def test_a_429_with_retry_after_latches_for_that_long(engine) -> None:  # noqa: F811
    key = BudgetKey("spapi", "getOrders", "seller-2", declared=TokenBucket(rate=100.0, burst=50))
    budget = PostgresBudget(engine, replace(SPAPI, backoff_initial_s=30.0))
    budget.after_response(budget.before_request(key, Quiet()), 429, {"Retry-After": "1"})
    budget.before_request(key, Quiet())
    assert 1.0 <= budget.waited_s < 30.0  # Retry-After (+0.5 s), not the 30 s backoff
    budget.close()


def test_a_429_empties_the_bucket(engine) -> None:  # noqa: F811
    key = BudgetKey("spapi", "getOrders", "seller-3", declared=TokenBucket(rate=0.01, burst=20))
    budget = PostgresBudget(engine, SPAPI)
    assert budget.remaining(key) is None  # not charged yet: nothing known
    reservation = budget.before_request(key, Quiet())
    assert budget.remaining(key) == 19
    budget.after_response(reservation, 429, {})
    assert budget.remaining(key) == 0  # the server's bucket is empty: so is ours
    budget.close()


def test_x_amzn_ratelimit_limit_lowers_the_rate_and_its_absence_changes_nothing(engine) -> None:  # noqa: F811
    """Declared 10 requests/s with a burst of 1: the second request would wait 0.1 s. The server
    says 0.5/s: the token owed now takes 2 s, longer than this run waits (1 s)."""
    key = BudgetKey("spapi", "listFinancialEvents", "seller-1", declared=TokenBucket(rate=10.0, burst=1))
    policy = replace(SPAPI, max_wait_s=1.0)
    declared_only = PostgresBudget(engine, policy)
    declared_only.after_response(declared_only.before_request(key, Quiet()), 200, {})
    declared_only.before_request(key, Quiet())  # admitted after a wait of about 0.1 s
    assert declared_only.waited_s > 0

    key = replace(key, principal="seller-2")
    budget = PostgresBudget(engine, policy)
    reservation = budget.before_request(key, Quiet())
    budget.after_response(reservation, 200, {"x-amzn-RateLimit-Limit": "0.5", "x-amzn-RequestId": "r1"})
    with pytest.raises(BudgetExhausted, match=r"rate-limit bucket listFinancialEvents is spent; the next request would be 2s away"):
        budget.before_request(key, Quiet())
    budget.after_response(reservation, 429, {})  # never sent on a 429: nothing changes
    budget.after_response(reservation, 403, {})
    with engine.connect() as conn:
        row = conn.execute(text("SELECT rate, burst, source FROM sync_assets.api_token_buckets WHERE bucket = :b"),
                           {"b": key.bucket}).one()
    assert (row.rate, row.burst, row.source) == (0.5, 1, "server")
    budget.close()
    declared_only.close()


def test_requests_sent_late_after_their_turn_do_not_empty_the_servers_bucket(engine) -> None:  # noqa: F811
    """The first requests of a walk open connections and a loaded machine wakes a worker late: they
    reach the server later than their turns while the next ones arrive on time, closer together
    than the budget paced them. Against the sandbox's token bucket (Amazon's 2/s, burst 2), the two
    first requests sent 0.2 s after their turns and the rest on time: no 429, because the budget
    keeps `arrival_jitter_s` of refill in reserve (with 5% of the burst alone the third one is
    refused)."""
    from sync_assets.apis.amazon.sandbox.limits import Plan, RateLimiter

    bucket = TokenBucket(rate=2.0, burst=2)
    server = RateLimiter(time.monotonic, lambda op: Plan(bucket.rate, bucket.burst))
    key = BudgetKey("spapi", "getInventorySummaries", "seller-late", declared=bucket)
    budget = PostgresBudget(engine, SPAPI)
    for i in range(5):
        reservation = budget.before_request(key, Quiet())
        if i < 2:
            time.sleep(0.2)  # its turn came; the request goes out late
        admitted = server.admit("seller-late", "getInventorySummaries")
        budget.after_response(reservation, 200 if admitted else 429, {})
    assert server.counters[("seller-late", "getInventorySummaries")].throttled == 0
    budget.close()


def test_a_worker_woken_late_for_its_turn_holds_back_the_requests_after_it(engine) -> None:  # noqa: F811
    """A worker that wakes 0.7 s after its turn (a loaded machine) sends into a full server bucket,
    which loses that refill to its cap; the turns after it were handed out already. Measured in CI:
    one such late wake-up, then two requests 10 ms apart and a 429 on the next. Each request passes
    the arrival gate when it is sent: replayed at the database's send times through Amazon's exact
    bucket (2/s, burst 2), none is refused, and the request after the late one waited for the gate.
    (Without the gate, these turns sent at once give a 429 on the fourth request.)"""
    from sync_assets.apis.amazon.sandbox.limits import Plan, RateLimiter

    bucket = TokenBucket(rate=2.0, burst=2)
    key = BudgetKey("spapi", "getInventorySummaries", "seller-woken-late", declared=bucket)
    budget = PostgresBudget(engine, SPAPI)
    late = [0.7]  # the first turn's sleep oversleeps this much

    def sleep(seconds: float) -> None:
        time.sleep(seconds + (late.pop() if late else 0.0))

    sent = []
    for _ in range(6):
        reservation = budget.before_request(key, Quiet(), sleep)
        assert reservation.sent_at is not None
        sent.append(reservation.sent_at.timestamp())
        budget.after_response(reservation, 200, {})
    assert not late, "no request waited for its turn: the scenario did not happen"
    now = [0.0]
    server = RateLimiter(lambda: now[0], lambda op: Plan(bucket.rate, bucket.burst))
    refused = []
    for at in sent:
        now[0] = at
        if not server.admit("seller-woken-late", "getInventorySummaries"):
            refused.append(round(at - sent[0], 2))
    assert refused == [], [round(at - sent[0], 2) for at in sent]
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert min(gaps) >= 0.3 - 1e-3, gaps  # never two requests closer than the usable burst allows after a late one
    budget.close()
