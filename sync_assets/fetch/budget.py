"""API budgets shared by every process, kept in Postgres.

With the multiprocess executor every step is a process, and with a Docker/K8s run launcher every
run is a machine: an in-memory limiter would only limit itself. So the budgets live in the data
database, next to the sync state:

- rate-limit buckets, one per (api, group, principal), of the kind the API declares
  (`core/limits.py`): a *sliding window* (ESI groups, IRIS: tokens spent come back `window_s`
  after the request, plus a little slack for the server's clock; table `api_spend`; a small window
  whose requests are each charged exactly is spent whole, each token held until its request was
  answered, others keep a 5% margin back: see `BudgetPolicy.window_tokens`) or a *token bucket with burst* (SP-API: GCRA, one row per
  bucket holding its theoretical arrival time; table `api_token_buckets`). The declared limit is
  the starting point; the API's header dialect (`fetch/limits.py`) corrects it (the server's word
  wins), and headers that are absent change nothing. What a request costs comes from the policy's
  declarative cost model (ESI: 2xx 2, 3xx 1, 4xx 5, 5xx 0; others one per request), charged before
  the request and corrected by the status or the server's own figure;
- the error limit, for APIs whose policy declares one (ESI answers 420 to every route once
  `X-ESI-Error-Limit-Remain` reaches 0): each process holds a lease of *error slots* (requests it
  may have in flight); the leases of every process together never exceed the errors left above
  the floor, so even if every request in flight fails at once the limit is not exhausted;
- latches: a 429 blocks its bucket for its `Retry-After`, or, without one (SP-API's QuotaExceeded),
  for an exponential backoff that grows with consecutive bare 429s; a 420 (or the floor) blocks the
  API until `X-ESI-Error-Limit-Reset`;
- a circuit breaker per API: consecutive 5xx/timeouts open it for a cooldown.

Requests must not each pay database round trips (a 300-page walk would spend more time in the
budget than on the wire), so each process works from small local advances that it renews in one
transaction: a stash of bucket tokens (a few requests' worth, refunded if unused), a lease of
error slots (renewed every ~20 s), and the list of active latches (re-read every half second,
updated at once by what this process learns itself). Errors and 429s, being rare, are written
through immediately. A token bucket's advance is used only while the bucket, without it, would
not be full again (give or take the safety margin): so requests admitted from a stash keep GCRA's
bound (burst + rate x t) at the moment they are sent, not only when their tokens were charged.
A token bucket that is spent hands out turns instead of refusals (GCRA knows the next free
moment): the request is charged at once and sent at its turn, so waiting workers of all processes
queue in order at one transaction each rather than waking together to be refused again.

Own SQL rather than pyrate-limiter (v4.4, its `PostgresBucket`): that bucket needs psycopg 3 and
psycopg_pool beside the psycopg2 that dagster-postgres requires; it is a sliding-window log only
(one row per token; GCRA is "planned for v5"), so no token bucket with burst; it locks its table
with NOWAIT and *refuses* under contention instead of waiting; and it has no way to correct a
bucket from response headers, charge a cost known only after the response, refund an advance,
latch on Retry-After or share an error budget. All of that is what this store is for.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Mapping

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from ..core.errors import BudgetExhausted, CircuitOpen
from ..db import ddl
from ..core.limits import ESI_COSTS, CostModel, RateLimit, SlidingWindow, TokenBucket
from .log import Log
from .limits import EsiHeaders, HeaderDialect, Learned

SCHEMA = "sync_assets"
BUDGET_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.api_limits (
    bucket     text PRIMARY KEY,
    capacity   integer NOT NULL,
    window_s   double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
DO $$ BEGIN  -- 'declared' or 'server'; rows of older versions were all learned from headers
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{SCHEMA}'
                   AND table_name = 'api_limits' AND column_name = 'source') THEN
        ALTER TABLE {SCHEMA}.api_limits ADD COLUMN source text NOT NULL DEFAULT 'server';
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS {SCHEMA}.api_spend (
    bucket text NOT NULL,
    at     timestamptz NOT NULL,
    cost   integer NOT NULL
);
CREATE INDEX IF NOT EXISTS api_spend_bucket_at ON {SCHEMA}.api_spend (bucket, at);
CREATE TABLE IF NOT EXISTS {SCHEMA}.api_token_buckets (
    bucket     text PRIMARY KEY,
    rate       double precision NOT NULL,
    burst      integer NOT NULL,
    tat        timestamptz NOT NULL,
    source     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
DO $$ BEGIN  -- the arrival gate's own theoretical arrival time (see `_TokenBuckets.pass_gate`)
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{SCHEMA}'
                   AND table_name = 'api_token_buckets' AND column_name = 'sent_tat') THEN
        ALTER TABLE {SCHEMA}.api_token_buckets ADD COLUMN sent_tat timestamptz;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS {SCHEMA}.api_latches (
    latch         text PRIMARY KEY,
    blocked_until timestamptz NOT NULL,
    reason        text NOT NULL,
    failures      integer NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.api_error_budget (
    api        text PRIMARY KEY,
    remain     integer NOT NULL,
    window_max integer NOT NULL,
    reset_at   timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.api_error_slots (
    api        text NOT NULL,
    holder     text NOT NULL,
    slots      integer NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (api, holder)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.api_error_events (
    api text NOT NULL,
    at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS api_error_events_api_at ON {SCHEMA}.api_error_events (api, at);
"""
_DDL_LOCK = 7_349_002
_EPS = 1e-9

__all__ = ["BudgetExhausted", "BudgetKey", "BudgetPolicy", "CircuitOpen", "PostgresBudget", "Reservation"]


@dataclass(frozen=True)
class BudgetKey:
    api: str
    group: str | None  # rate-limit group; None (and nothing declared) for routes under the error limit only
    principal: str = "public"  # whose bucket: a character id, a selling partner, an API key's user
    declared: RateLimit | None = None  # the limit the API's spec declares; None: learned from headers only

    @property
    def bucket(self) -> str | None:
        if not self.group and self.declared is None:
            return None
        return f"{self.api}/{self.group or '*'}/{self.principal}"


@dataclass
class Reservation:
    key: BudgetKey
    cost: int  # tokens charged before the request (0 when the bucket's size is not known yet)
    slot: bool = True  # holds one of this process's error slots until the response is in
    # an exact window's own charge (its row's database time, and our clock just before it was
    # written): held until the answer is in when that came later than the window's slack allows
    dated: tuple[datetime, float] | None = None
    sent_at: datetime | None = None  # a token bucket's: when the arrival gate let it go (database time)
    admitted: float | None = None  # our clock when it was admitted: the server counted it after that


@dataclass(frozen=True)
class BudgetPolicy:
    """How one API is budgeted. The defaults are ESI's."""

    error_limit: bool = True  # the API has ESI's error limit (error slots, 420 latch); False: none at all
    headers: HeaderDialect = EsiHeaders()  # how its responses state limits (fetch/limits.py)
    cost: CostModel = ESI_COSTS  # tokens a request costs by status
    error_limit_floor: int = 10  # never plan to spend ESI's last errors of a window
    # ESI's documented error limit (100 errors per 60 s window): the starting point when no response
    # has stated the errors left in this window. Bucket-limited routes never state it (their headers
    # are X-Ratelimit-*), so without this a walk of one would run one request at a time. Our own
    # errors are then counted in a sliding window of that length, which no fixed window of the
    # server's (wherever it starts) can see more of.
    error_window_max: int = 100
    error_window_s: float = 60.0
    # never plan to spend the last 5% of a bucket: of a token bucket's burst, and of a window whose
    # accounting is inexact (see `window_tokens`: an exact window keeps its margin as time only)
    safety_margin: float = 0.05
    # requests reach the server out of step with the moment they were sent by up to this much (the
    # first ones open connections, a loaded machine stalls a sender): a token bucket keeps that much
    # refill in reserve, as GCRA's cell delay variation tolerance (ATM's CDVT); it costs once, not
    # per request. Lateness before the send (a worker woken late for its turn) the arrival gate
    # measures and makes up for (`_TokenBuckets.pass_gate`), whatever its size.
    arrival_jitter_s: float = 0.25
    clock_slack_s: float = 0.25  # our clock and the server's differ a little: keep tokens a bit longer...
    clock_slack_share: float = 0.02  # ...but never more than 2% of the window (1 s windows exist)
    circuit_threshold: int = 8  # consecutive 5xx/timeouts that open the circuit
    circuit_cooldown_s: float = 60.0
    backoff_initial_s: float = 10.0  # a 429 without Retry-After blocks its bucket this long...
    backoff_factor: float = 2.0  # ...times this for each further bare 429 in a row...
    backoff_max_s: float = 300.0  # ...up to this
    # Longer waits are not slept on: the run defers its remaining work to when the budget refills
    # (BudgetExhausted.retry_at) and frees its slots. 75 s covers ESI's 60 s error window.
    max_wait_s: float = 75.0
    latch_refresh_s: float = 0.5  # how stale this process's copy of other processes' latches may be
    slot_lease_s: float = 30.0  # error slots of a process that died come back after this
    stash_share: float = 0.05  # a process takes at most this share of a bucket in advance...
    stash_requests: int = 32  # ...and at most this many requests' worth
    stash_age_share: float = 0.1  # unused advance tokens of a window go back after this share of it

    def slack(self, window_s: float) -> float:
        return min(self.clock_slack_s, self.clock_slack_share * window_s)

    def usable_burst(self, limit: TokenBucket, need: int = 1) -> float:
        """Tokens of a bucket's burst the budget plans to spend: less the safety margin (advance
        tokens sent a little late) and less the refill of `arrival_jitter_s`. Without that reserve,
        a bucket paced to its last token answers 429 as soon as two requests reach it closer
        together than their turns were (the first of them sent late). A debt larger than the
        burst: a full bucket pays it."""
        return max(limit.burst - limit.burst * self.safety_margin - limit.rate * self.arrival_jitter_s, need)

    def exact_window(self, capacity: int) -> bool:
        """Whether a sliding window of `capacity` tokens is accounted exactly: every request is
        charged in its own transaction, dated at its admission (the window is too small to lend a
        process an advance worth another request even under the margin: below 43 requests at the
        defaults), and charged before it is sent the most any answer can cost (IRIS/Laravel: one
        per counted request; not ESI, whose 4xx costs 5 against the 2 charged)."""
        cost = self.cost
        dearest = max(cost.not_modified, cost.client_error, cost.throttled, cost.server_error, cost.no_response)
        lendable = min(capacity * (1 - self.safety_margin) * self.stash_share, cost.ok * self.stash_requests)
        return dearest <= cost.ok and math.floor(lendable) < 2 * cost.ok

    def window_tokens(self, capacity: int) -> float:
        """Tokens of a sliding window of `capacity` the budget plans to spend in any `window_s + slack`.

        The count margin covers what the window's accounting cannot date or size: advance tokens
        (charged at one moment, sent up to `stash_age_share` of the window later, so they come back
        early) and costs known only after the answer. An exact window has neither: each token is
        dated at its request's admission and held the window plus `slack` (the server's clock), and
        longer when the answer came later than that slack (`_hold_until_answered`): a fixed or
        sliding window counts arrivals, which come after our admissions and before our answers.
        Each token is then held at least until the server lets it go, so a count kept back
        protects against nothing, and in a small window it is a whole request of every window:
        100 pages at 20 per 5 s took 6 windows instead of 5 (26.8 s against 20 s). So an exact
        window is spent whole; a larger or inexactly charged one keeps the margin."""
        return float(capacity) if self.exact_window(capacity) else capacity * (1 - self.safety_margin)


@dataclass
class _Stash:
    """Tokens this process charged in advance (negative: owed, charged with the next request)."""

    tokens: int = 0
    token_bucket: bool = False  # the bucket's kind, for refunds
    charged_at: datetime | None = None  # a window's refund is dated then, so it leaves the window with the charge
    refund_by: datetime | None = None  # a token bucket's refund after this would return refilled tokens
    valid_until: float = 0.0  # monotonic: advance tokens are not used after this


@dataclass
class _Slots:
    granted: int = 0
    in_flight: int = 0
    renew_at: float = 0.0  # monotonic; re-claim (and re-read the error budget) after this
    remain_seen: int | None = None  # X-ESI-Error-Limit-Remain as last written by this process


@dataclass
class _Latch:
    until: float  # monotonic
    reason: str


@dataclass
class _ApiView:
    """This process's copy of an API's latches (its own, and other processes' as last read)."""

    latches: dict[str, _Latch] = field(default_factory=dict)
    read_at: float = float("-inf")
    changes: int = 0  # latches this process set or cleared itself: a read begun before them is stale
    reading: threading.Lock = field(default_factory=threading.Lock)  # one re-read at a time


@dataclass(frozen=True)
class _Grant:
    """What a bucket kind decided: tokens charged (0 and a wait when refused) and how long an
    advance stays usable (seconds from the transaction's start)."""

    wait_s: float = 0.0
    charged: int = 0
    send_in_s: float = 0.0  # the request's turn, already charged: send it no earlier than this
    usable_s: float = 0.0
    at: datetime | None = None
    refund_by: datetime | None = None
    exact: bool = False  # an exact window's charge of this one request (see BudgetPolicy.exact_window)


# `_SlidingWindows.charge` as one round trip: the bucket's lock, the spend that left the window,
# and one statement that charges (`at`, `charged`) or says when enough tokens come back (`back_in`);
# the deletion and the charge only while the stored size is still the caller's (`cap`, `win`)
_CHARGE_KNOWN_WINDOW = f"""
SELECT pg_advisory_xact_lock(hashtext(:b));
DELETE FROM {SCHEMA}.api_spend WHERE bucket = :b AND at <= clock_timestamp() - make_interval(secs => :w)
  AND EXISTS (SELECT 1 FROM {SCHEMA}.api_limits WHERE bucket = :b AND capacity = :cap AND window_s = :win);
WITH lim AS (SELECT capacity, window_s FROM {SCHEMA}.api_limits WHERE bucket = :b),
used AS (SELECT coalesce(sum(cost), 0) AS used FROM {SCHEMA}.api_spend WHERE bucket = :b),
ins AS (
  INSERT INTO {SCHEMA}.api_spend (bucket, at, cost)
  SELECT :b, clock_timestamp(), GREATEST(:need, LEAST(:advance, floor(:allowed - used.used)))::integer
  FROM used, lim WHERE lim.capacity = :cap AND lim.window_s = :win AND used.used + :need <= :allowed
  RETURNING at, cost
)
SELECT (SELECT capacity FROM lim) AS capacity, (SELECT window_s FROM lim) AS window_s,
  (SELECT at FROM ins) AS at, (SELECT cost FROM ins) AS charged,
  (SELECT EXTRACT(EPOCH FROM e.at + make_interval(secs => :w) - clock_timestamp())
   FROM (SELECT at, sum(cost) OVER (ORDER BY at ROWS UNBOUNDED PRECEDING) AS freed
         FROM {SCHEMA}.api_spend WHERE bucket = :b) e, used
   WHERE used.used - e.freed + :need <= :allowed ORDER BY e.at LIMIT 1) AS back_in
"""


class _SlidingWindows:
    """The sliding-window kind: a bucket's size in `api_limits`, its spending in `api_spend`."""

    def __init__(self, policy: BudgetPolicy):
        self.policy = policy

    def limit(self, conn: Connection, key: BudgetKey, write_declared: bool) -> SlidingWindow | None:
        bucket, declared = key.bucket, key.declared
        if write_declared and isinstance(declared, SlidingWindow):
            # the declared size is the starting point; a size the server stated is never replaced by it
            conn.execute(
                text(f"INSERT INTO {SCHEMA}.api_limits AS l (bucket, capacity, window_s, source) "
                     "VALUES (:b, :c, :w, 'declared') ON CONFLICT (bucket) DO UPDATE SET capacity = EXCLUDED.capacity, "
                     "window_s = EXCLUDED.window_s, updated_at = now() WHERE l.source = 'declared'"),
                {"b": bucket, "c": declared.capacity, "w": declared.window_s},
            )
        row = conn.execute(text(f"SELECT capacity, window_s FROM {SCHEMA}.api_limits WHERE bucket = :b"), {"b": bucket}).first()
        return SlidingWindow(row.capacity, row.window_s) if row else None

    def charge(self, conn: Connection, bucket: str, limit: SlidingWindow, need: int) -> _Grant:
        policy = self.policy
        window = limit.window_s + policy.slack(limit.window_s)
        conn.execute(
            text(f"DELETE FROM {SCHEMA}.api_spend WHERE bucket = :b AND at <= clock_timestamp() - make_interval(secs => :w)"),
            {"b": bucket, "w": window},
        )
        used = conn.execute(text(f"SELECT coalesce(sum(cost), 0) FROM {SCHEMA}.api_spend WHERE bucket = :b"), {"b": bucket}).scalar_one()
        allowed = policy.window_tokens(limit.capacity)
        # a debt larger than the bucket (4xx charged 5 against a tiny window) could never be paid:
        # pay what a whole bucket can (the server's Remaining corrects the rest)
        need = min(need, max(policy.cost.ok, math.floor(allowed)))
        if used + need <= allowed:
            # an exact window lends no advance: each of its tokens is dated at its own request
            advance = 0 if policy.exact_window(limit.capacity) else int(
                min(allowed * policy.stash_share, policy.cost.ok * policy.stash_requests, allowed - used))
            charge = max(need, advance)
            at = conn.execute(
                text(f"INSERT INTO {SCHEMA}.api_spend (bucket, at, cost) VALUES (:b, clock_timestamp(), :c) RETURNING at"),
                {"b": bucket, "c": charge},
            ).scalar_one()
            return _Grant(charged=charge, usable_s=limit.window_s * policy.stash_age_share, at=at,
                          exact=policy.exact_window(limit.capacity))
        events = conn.execute(  # the earliest moment enough spent tokens have come back
            text(f"SELECT EXTRACT(EPOCH FROM at + make_interval(secs => :w) - clock_timestamp()) AS back_in, cost "
                 f"FROM {SCHEMA}.api_spend WHERE bucket = :b ORDER BY at"),
            {"b": bucket, "w": window},
        ).all()
        for event in events:
            used -= event.cost
            if used + need <= allowed:
                return _Grant(wait_s=max(float(event.back_in), 0.01))
        return _Grant(wait_s=policy.max_wait_s + 1)  # more than the whole bucket: never

    def charge_known(self, conn: Connection, bucket: str, limit: SlidingWindow, need: int) -> _Grant | None:
        """`charge`, for a window whose size this process has read, in one round trip: the same
        statements sent together, run by the server as one transaction under the bucket's lock.
        None when the stored size is no longer `limit` (then nothing was deleted or charged).

        An admission is on the critical path of every request of a paced walk; as separate
        statements it took 6-8 round trips, each a wait for the database process and then for the
        GIL while page workers parse: 40-70 ms on a loaded machine, which spread a window's
        requests over a second instead of sending them together."""
        policy = self.policy
        allowed = policy.window_tokens(limit.capacity)
        exact = policy.exact_window(limit.capacity)
        row = conn.execute(text(_CHARGE_KNOWN_WINDOW), {
            "b": bucket, "cap": limit.capacity, "win": limit.window_s, "w": limit.window_s + policy.slack(limit.window_s),
            "allowed": allowed, "need": min(need, max(policy.cost.ok, math.floor(allowed))),
            "advance": 0 if exact else math.floor(min(allowed * policy.stash_share, policy.cost.ok * policy.stash_requests)),
        }).one()
        if row.capacity != limit.capacity or row.window_s != limit.window_s:
            return None
        if row.at is not None:
            return _Grant(charged=row.charged, usable_s=limit.window_s * policy.stash_age_share, at=row.at, exact=exact)
        if row.back_in is None:
            return _Grant(wait_s=policy.max_wait_s + 1)  # more than the whole bucket: never
        return _Grant(wait_s=max(float(row.back_in), 0.01))

    def refund(self, conn: Connection, bucket: str, stash: _Stash) -> None:
        """Unused advance tokens go back dated when they were charged (they leave the window with it)."""
        conn.execute(text(f"INSERT INTO {SCHEMA}.api_spend (bucket, at, cost) VALUES (:b, :at, :c)"),
                     {"b": bucket, "at": stash.charged_at, "c": -stash.tokens})

    def hold_longer(self, conn: Connection, bucket: str, at: datetime, tokens: int, seconds: float) -> None:
        """Tokens charged at `at` are held `seconds` longer: moved, as a refund at `at` and the same
        charge later (the rows stay append-only, like a refund's)."""
        conn.execute(text(f"INSERT INTO {SCHEMA}.api_spend (bucket, at, cost) VALUES "
                          "(:b, :at, :neg), (:b, :at + make_interval(secs => :s), :c)"),
                     {"b": bucket, "at": at, "neg": -tokens, "c": tokens, "s": seconds})

    def spend(self, conn: Connection, bucket: str, tokens: int, back_in_s: float | None = None) -> None:
        """Book tokens spent now, or dated so that they come back in `back_in_s` (a fixed window's reset)."""
        earlier = 0.0
        if back_in_s is not None:
            known = conn.execute(text(f"SELECT window_s FROM {SCHEMA}.api_limits WHERE bucket = :b"), {"b": bucket}).scalar()
            earlier = max(float(known) - back_in_s, 0.0) if known is not None else 0.0
        conn.execute(
            text(f"INSERT INTO {SCHEMA}.api_spend (bucket, at, cost) "
                 "VALUES (:b, clock_timestamp() - make_interval(secs => :e), :c)"),
            {"b": bucket, "c": tokens, "e": earlier},
        )

    def learn_limit(self, conn: Connection, bucket: str, limit: SlidingWindow) -> None:
        conn.execute(
            text(f"INSERT INTO {SCHEMA}.api_limits (bucket, capacity, window_s, source) VALUES (:b, :c, :w, 'server') "
                 "ON CONFLICT (bucket) DO UPDATE SET capacity = EXCLUDED.capacity, window_s = EXCLUDED.window_s, "
                 "source = 'server', updated_at = now()"),
            {"b": bucket, "c": limit.capacity, "w": limit.window_s},
        )

    def left(self, conn: Connection, bucket: str, limit: SlidingWindow, earlier_s: float = 0.0) -> int:
        """Tokens of the window not spent in the database's accounts (advances count as spent);
        `earlier_s`: the window reaches that much further back."""
        spent = conn.execute(
            text(f"SELECT coalesce(sum(cost), 0) FROM {SCHEMA}.api_spend WHERE bucket = :b "
                 "AND at > clock_timestamp() - make_interval(secs => :w)"),
            {"b": bucket, "w": limit.window_s + self.policy.slack(limit.window_s) + earlier_s},
        ).scalar_one()
        return int(limit.capacity - spent)


class _TokenBuckets:
    """The token-bucket kind, as GCRA: one row per bucket holding its theoretical arrival time
    (`tat`): the bucket is full when `tat` <= now, and `tat - now` is the tokens owed, in seconds
    of refill. Charging n tokens moves `tat` to max(tat, now) + n/rate; a charge is allowed while
    `tat` stays within burst/rate of now. Exact, and serialised by the bucket's advisory lock."""

    def __init__(self, policy: BudgetPolicy):
        self.policy = policy

    def limit(self, conn: Connection, key: BudgetKey, write_declared: bool) -> tuple[TokenBucket, float]:
        """The bucket and how far ahead of now its `tat` is (seconds; <= 0: full)."""
        declared = key.declared
        assert isinstance(declared, TokenBucket)
        if write_declared:
            conn.execute(
                text(f"INSERT INTO {SCHEMA}.api_token_buckets AS t (bucket, rate, burst, tat, source) "
                     "VALUES (:b, :r, :n, clock_timestamp(), 'declared') ON CONFLICT (bucket) DO UPDATE SET "
                     "rate = EXCLUDED.rate, burst = EXCLUDED.burst, updated_at = now() WHERE t.source = 'declared'"),
                {"b": key.bucket, "r": declared.rate, "n": declared.burst},
            )
        row = conn.execute(
            text(f"SELECT rate, burst, EXTRACT(EPOCH FROM tat - clock_timestamp()) AS ahead "
                 f"FROM {SCHEMA}.api_token_buckets WHERE bucket = :b"), {"b": key.bucket},
        ).first()
        if row is None:  # removed by hand since this process wrote it: the declaration again
            return self.limit(conn, key, True)
        return TokenBucket(row.rate, row.burst), float(row.ahead)

    def charge(self, conn: Connection, bucket: str, limit: TokenBucket, ahead: float, need: int) -> _Grant:
        policy, interval = self.policy, limit.interval_s
        owed = max(ahead, 0.0)
        usable_burst = policy.usable_burst(limit, need)
        if owed + need * interval > usable_burst * interval + _EPS:
            return self._turn(conn, bucket, owed + need * interval - usable_burst * interval, need)
        room = math.floor((usable_burst * interval - owed) / interval + _EPS)
        share = max(need, math.floor(limit.burst * policy.stash_share))
        charge = max(need, min(room, share, policy.cost.ok * policy.stash_requests))
        # Tokens charged now and sent later are exact while the bucket, without them, would not be
        # full yet (`owed` from now); after that its refill would be lost to the cap, i.e. counted
        # twice. The safety margin admissions keep back absorbs what a little longer costs (the
        # jitter reserve is not lent to advances: it is for requests that arrive out of step).
        usable_s = owed + min(limit.burst * policy.safety_margin, max(limit.burst - usable_burst, 0.0)) * interval
        row = conn.execute(
            text(f"UPDATE {SCHEMA}.api_token_buckets SET tat = GREATEST(tat, clock_timestamp()) + "
                 "make_interval(secs => :c / rate) WHERE bucket = :b RETURNING tat, clock_timestamp() AS at"),
            {"b": bucket, "c": charge},
        ).one()
        return _Grant(charged=charge, usable_s=usable_s, at=row.at, refund_by=row.tat)

    def _turn(self, conn: Connection, bucket: str, wait_s: float, need: int) -> _Grant:
        """GCRA can hand out the next free moment instead of a refusal: charge the request now and
        send it then. Waiting workers of every process queue in order, one transaction each,
        instead of all waking together to be refused again. Turns beyond a run's patience are
        refused (the caller gives up without holding tokens)."""
        if wait_s > self.policy.max_wait_s:
            return _Grant(wait_s=wait_s)
        row = conn.execute(
            text(f"UPDATE {SCHEMA}.api_token_buckets SET tat = GREATEST(tat, clock_timestamp()) + "
                 "make_interval(secs => :c / rate) WHERE bucket = :b RETURNING tat, clock_timestamp() AS at"),
            {"b": bucket, "c": need},
        ).one()
        return _Grant(charged=need, send_in_s=wait_s, at=row.at, refund_by=row.tat)

    def pass_gate(self, conn: Connection, bucket: str, tokens: int) -> tuple[float, datetime | None]:
        """The arrival gate: (0, now) once a request may go out now, or (seconds to wait, None).

        `tat` plans turns at admission; a request reaches the server when it is actually sent. A
        worker that wakes late (a loaded machine) sends its request after its turn, and the server's
        bucket, full by then, loses the refill of the delay to its cap: the requests whose turns
        follow would arrive at an emptier bucket than planned, and turns already handed out cannot
        be moved. So each request also passes a second GCRA, `sent_tat`, dated when it is sent: the
        server's own view of arrivals. It lets a request go while the bucket, by that count, still
        holds the usable burst; on time it passes at once (one statement), after a late request the
        next ones wait for the refill the server lost."""
        p = self.policy
        row = conn.execute(
            text(f"UPDATE {SCHEMA}.api_token_buckets SET sent_tat = GREATEST(sent_tat, clock_timestamp()) + "
                 "make_interval(secs => :c / rate) WHERE bucket = :b AND (sent_tat IS NULL OR sent_tat - clock_timestamp() "
                 "<= make_interval(secs => (GREATEST(burst * (1 - :m) - rate * :j, :c) - :c) / rate)) "
                 "RETURNING clock_timestamp() AS at"),
            {"b": bucket, "c": tokens, "m": p.safety_margin, "j": p.arrival_jitter_s},
        ).first()
        if row is not None:
            return 0.0, row.at
        wait = conn.execute(
            text(f"SELECT EXTRACT(EPOCH FROM sent_tat - clock_timestamp()) - (GREATEST(burst * (1 - :m) - rate * :j, :c) - :c) / rate "
                 f"FROM {SCHEMA}.api_token_buckets WHERE bucket = :b"),
            {"b": bucket, "c": tokens, "m": p.safety_margin, "j": p.arrival_jitter_s},
        ).scalar()
        return (0.0, None) if wait is None else (max(float(wait), 0.001), None)  # no row: removed by hand

    def refund(self, conn: Connection, bucket: str, stash: _Stash) -> None:
        """Give back unused advance tokens, but only while the bucket still owes them: once `tat`
        could have reached now (the bucket full), GCRA has forgotten the charge already."""
        conn.execute(
            text(f"UPDATE {SCHEMA}.api_token_buckets SET tat = tat - make_interval(secs => :n / rate) "
                 "WHERE bucket = :b AND clock_timestamp() < :by"),
            {"b": bucket, "n": stash.tokens, "by": stash.refund_by},
        )

    def spend(self, conn: Connection, bucket: str, tokens: int) -> None:
        conn.execute(
            text(f"UPDATE {SCHEMA}.api_token_buckets SET tat = GREATEST(tat, clock_timestamp()) + "
                 "make_interval(secs => :c / rate) WHERE bucket = :b"), {"b": bucket, "c": tokens},
        )

    def learn_rate(self, conn: Connection, bucket: str, rate: float) -> None:
        """The server's rate replaces ours; what is owed stays the same number of tokens."""
        conn.execute(
            text(f"UPDATE {SCHEMA}.api_token_buckets SET tat = clock_timestamp() + "
                 "GREATEST(tat - clock_timestamp(), interval '0') * (rate / :r), sent_tat = clock_timestamp() + "
                 "GREATEST(sent_tat - clock_timestamp(), interval '0') * (rate / :r), rate = :r, source = 'server', "
                 "updated_at = now() WHERE bucket = :b"),
            {"b": bucket, "r": rate},
        )

    def at_most(self, conn: Connection, bucket: str, tokens: float) -> None:
        """The server says at most `tokens` are left (0 after a 429): owe at least the rest."""
        conn.execute(
            text(f"UPDATE {SCHEMA}.api_token_buckets SET tat = GREATEST(tat, clock_timestamp() + "
                 "make_interval(secs => GREATEST(burst - :n, 0) / rate)), sent_tat = GREATEST(sent_tat, clock_timestamp() + "
                 "make_interval(secs => GREATEST(burst - :n, 0) / rate)) WHERE bucket = :b"),
            {"b": bucket, "n": max(tokens, 0.0)},
        )


class PostgresBudget:
    """One per HTTP client (a run's resource); thread-safe for the walk's page workers."""

    def __init__(
        self,
        engine: Engine,
        policy: BudgetPolicy = BudgetPolicy(),
        sleep: Callable[[float], None] = time.sleep,
        want_slots: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.engine, self.policy, self._sleep, self._clock = engine, policy, sleep, clock
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.want_slots = max(1, want_slots)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.RLock()
        self._ready = False
        self._windows, self._tokens = _SlidingWindows(policy), _TokenBuckets(policy)
        self._circuit_dirty = False  # this process recorded a failure: the next success clears the count
        self._streak_paths: set[str] = set()  # paths that failed since this process's last success
        self._backoff_dirty: set[str] = set()  # buckets this process backed off: the next success resets them
        self._known_limits: dict[str, RateLimit] = {}
        self._declared_written: set[str] = set()
        self._stashes: dict[str, _Stash] = {}
        self._slots: dict[str, _Slots] = {}
        self._views: dict[str, _ApiView] = {}
        self._reconciled_at: dict[str, float] = {}
        self._refused_until: dict[str, float] = {}  # monotonic: a bucket the database just refused
        self.waited_s = 0.0
        self.round_trips = 0  # database transactions, for benchmarks and tests
        self.advance_hits = 0  # requests admitted from a local advance, without a transaction

    # -- before ---------------------------------------------------------------------------------

    def before_request(self, key: BudgetKey, log: Log, sleep: Callable[[float], None] | None = None,
                       max_wait_s: float | None = None) -> Reservation:
        """Wait until every shared budget allows one more request, then charge it. `sleep`: how
        to wait (the caller's, when it must be able to give up while waiting); `max_wait_s`: a
        shorter limit than the policy's (a walk retrying pages gives up rather than wait long)."""
        self._ensure()
        sleep = sleep or self._sleep
        while True:
            self._refresh_latches(key.api)
            with self._lock:
                wait, reason, cost, send_in, dated = self._try_admit(key)
            if wait <= 0:
                reservation = Reservation(key, cost, slot=self.policy.error_limit, dated=dated, admitted=self._clock())
                # a request from this process's advance is not gated: advances exist only in buckets
                # whose margin (5% of a burst of 40 or more) already covers late sends of a few
                if send_in is None:
                    return reservation
                if (send_in <= 0 or self._await_turn(reservation, send_in, log, sleep)) and \
                        self._await_arrival(reservation, sleep):
                    return reservation
                continue
            limit = self.policy.max_wait_s if max_wait_s is None else min(max_wait_s, self.policy.max_wait_s)
            if wait > limit:
                who = "a run waits" if max_wait_s is None else "a walk retrying failed pages waits"
                raise BudgetExhausted(f"{key.api}: {reason}; the next request would be {wait:.0f}s away, "
                                      f"longer than {who} ({limit:.0f}s)", retry_at=time.time() + wait)
            if wait >= 0.25:  # the pacing of a tight bucket is a stream of tiny waits: not worth a line each
                log.warning(f"{key.api}: waiting {wait:.1f}s: {reason}")
            self.waited_s += wait
            sleep(wait)

    def _await_turn(self, reservation: Reservation, seconds: float, log: Log, sleep: Callable[[float], None]) -> bool:
        """Sleep until a charged request's turn. False (its tokens are given up) when a latch set
        meanwhile holds the bucket now: the caller waits for that like any other request."""
        key = reservation.key
        if seconds >= 0.25:  # pacing at the declared rate is the plan, not a problem: info, not a warning
            log.info(f"{key.api}: waiting {seconds:.1f}s for this request's turn in rate-limit bucket {key.group or key.api}")
        self.waited_s += seconds
        try:
            sleep(seconds)
            self._refresh_latches(key.api)
            with self._lock:
                latched, _ = self._latched(key)
        except BaseException:  # the walk gave up (or the circuit opened) while waiting
            self.release(reservation)
            raise
        if latched > 0:
            self.release(reservation)
            return False
        return True

    def _await_arrival(self, reservation: Reservation, sleep: Callable[[float], None]) -> bool:
        """A token bucket's request passes the arrival gate (`_TokenBuckets.pass_gate`) right before
        it is sent. False (its tokens are given up) when a latch set meanwhile holds the bucket."""
        key = reservation.key
        if not isinstance(key.declared, TokenBucket) or not key.bucket:
            return True
        try:
            while True:
                self.round_trips += 1
                with self._autocommit.connect() as conn:
                    wait, reservation.sent_at = self._tokens.pass_gate(conn, key.bucket, self.policy.cost.ok)
                if wait <= 0:
                    return True
                self.waited_s += wait
                sleep(wait)
                self._refresh_latches(key.api)
                with self._lock:
                    latched, _ = self._latched(key)
                if latched > 0:
                    self.release(reservation)
                    return False
        except BaseException:  # the walk gave up (or the database failed) while waiting
            self.release(reservation)
            raise

    def _try_admit(self, key: BudgetKey) -> tuple[float, str, int, float | None, tuple[datetime, float] | None]:
        """(0, "", tokens charged, seconds until its turn (None: taken from this process's advance),
        an exact window's dating) once admitted;
        (seconds to wait, why, 0, 0, None) otherwise. Holds self._lock."""
        wait, reason = self._latched(key)
        if wait <= 0 and self.policy.error_limit:
            wait, reason = self._take_slot(key.api)
        if wait > 0 or not key.bucket:
            return wait, reason, 0, 0.0, None
        wait, cost, send_in, dated = self._take_tokens(key)
        if wait > 0:
            if self.policy.error_limit:
                self._slots[key.api].in_flight -= 1
            return wait, f"rate-limit bucket {key.group or key.api} is spent", 0, 0.0, None
        return 0.0, "", cost, send_in, dated

    def _refresh_latches(self, api: str) -> None:
        """Re-read other processes' latches once this process's copy is `latch_refresh_s` old.

        Read outside `self._lock`: a database round trip under it would stop every page worker of
        the process from being admitted meanwhile, and under a busy GIL that round trip takes tens
        of milliseconds. While one thread reads, the others go on with the copy, as they would
        have a moment earlier; only a copy never read, or twice the refresh interval old, is
        waited for."""
        with self._lock:
            view = self._views.setdefault(api, _ApiView())
        refresh = self.policy.latch_refresh_s
        if self._clock() - view.read_at < refresh:
            return
        if not view.reading.acquire(blocking=self._clock() - view.read_at >= 2 * refresh):
            return  # another thread is reading: this copy will do meanwhile
        try:
            now = self._clock()
            if now - view.read_at < refresh:
                return  # read by the thread this one waited for
            with self._lock:
                changes = view.changes
            latches = self._read_latches(api, now)
            with self._lock:
                if view.changes == changes:  # else this process changed a latch meanwhile: read again next time
                    view.latches, view.read_at = latches, now
        finally:
            view.reading.release()

    def _latched(self, key: BudgetKey) -> tuple[float, str]:
        """Seconds the key's latches (this process's copy) still hold it, and why. Holds self._lock."""
        view = self._views.setdefault(key.api, _ApiView())
        now = self._clock()
        circuit = view.latches.get(f"{key.api}/circuit")
        if circuit and circuit.until > now:
            raise CircuitOpen(f"{key.api} circuit is open for {circuit.until - now:.0f}s more: {circuit.reason}")
        blocking = [latch for name, latch in view.latches.items()
                    if latch.until > now and name in (f"{key.api}/error-limit", key.bucket)]
        if not blocking:
            return 0.0, ""
        longest = max(blocking, key=lambda latch: latch.until)
        return longest.until - now + 0.05, longest.reason

    def _read_latches(self, api: str, now: float) -> dict[str, _Latch]:
        with self._begin() as conn:
            rows = conn.execute(
                text(f"SELECT latch, reason, EXTRACT(EPOCH FROM blocked_until - clock_timestamp()) AS left_s "
                     f"FROM {SCHEMA}.api_latches WHERE latch LIKE :prefix AND latch NOT LIKE '%/probe' "
                     "AND blocked_until > clock_timestamp()"),
                {"prefix": f"{api}/%"},
            ).all()
        return {row.latch: _Latch(now + float(row.left_s), row.reason) for row in rows}

    def _note_latch(self, api: str, latch: str, seconds: float, reason: str) -> None:
        """What this process latched itself holds here at once, not after the next re-read."""
        view = self._views.setdefault(api, _ApiView())
        until = self._clock() + seconds
        if latch not in view.latches or view.latches[latch].until < until:
            view.latches[latch] = _Latch(until, reason)
            view.changes += 1

    # -- error slots (APIs with an error limit) -------------------------------------------------

    def _take_slot(self, api: str) -> tuple[float, str]:
        slots = self._slots.setdefault(api, _Slots())
        if slots.in_flight >= slots.granted or self._clock() >= slots.renew_at:
            with self._begin() as conn:
                reset_in, left = self._claim_slots(conn, api, slots)
            if slots.in_flight >= slots.granted:
                if slots.in_flight or left is None or left > 0:
                    # requests in flight (here or elsewhere) will hand their slots back soon
                    return 0.2, f"{api} error budget: {slots.in_flight} requests of this run in flight hold the errors left"
                return reset_in + 0.5, (f"{api} error budget low ({slots.remain_seen} errors left, floor "
                                        f"{self.policy.error_limit_floor}), waiting for the window reset")
        slots.in_flight += 1
        return 0.0, ""

    def _claim_slots(self, conn: Connection, api: str, slots: _Slots) -> tuple[float, int | None]:
        """Lease as many slots as this process wants and the error budget allows. Returns (seconds
        to the window reset, slots other processes hold (None when the error budget is unknown))."""
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"{api}/error-slots"})
        conn.execute(text(f"DELETE FROM {SCHEMA}.api_error_slots WHERE api = :a AND expires_at < clock_timestamp()"), {"a": api})
        budget = conn.execute(
            text(f"SELECT remain, window_max, EXTRACT(EPOCH FROM reset_at - clock_timestamp()) AS reset_in "
                 f"FROM {SCHEMA}.api_error_budget WHERE api = :a"), {"a": api},
        ).first()
        others = conn.execute(
            text(f"SELECT coalesce(sum(slots), 0) FROM {SCHEMA}.api_error_slots WHERE api = :a AND holder <> :h"),
            {"a": api, "h": self.holder},
        ).scalar_one()
        if budget is None or budget.reset_in <= 0:
            # no response has stated the errors left in this window: the declared limit minus the
            # errors every process counted in the last window's length (a stated figure overrides it)
            remain, reset_in = self._counted_error_budget(conn, api)
            left = int(others)
            slots.remain_seen = None  # the next stated figure is news
            granted = max(0, min(self.want_slots, remain - self.policy.error_limit_floor - int(others)))
        else:
            reset_in = float(budget.reset_in)
            slots.remain_seen = budget.remain
            granted = max(0, min(self.want_slots, budget.remain - self.policy.error_limit_floor - int(others)))
            left = int(others)
        slots.granted = granted
        slots.renew_at = self._clock() + self.policy.slot_lease_s * 2 / 3
        self._write_slots(conn, api, max(granted, slots.in_flight))
        return reset_in, left

    def _counted_error_budget(self, conn: Connection, api: str) -> tuple[int, float]:
        """(errors left by our own count, seconds until the oldest counted error leaves the window)."""
        window = self.policy.error_window_s
        conn.execute(text(f"DELETE FROM {SCHEMA}.api_error_events WHERE api = :a AND at <= clock_timestamp() - make_interval(secs => :w)"),
                     {"a": api, "w": window})
        counted, oldest_in = conn.execute(
            text(f"SELECT count(*), EXTRACT(EPOCH FROM min(at) + make_interval(secs => :w) - clock_timestamp()) "
                 f"FROM {SCHEMA}.api_error_events WHERE api = :a"), {"a": api, "w": window},
        ).one()
        return self.policy.error_window_max - int(counted), max(float(oldest_in or 0.0), 0.0)

    def _write_slots(self, conn: Connection, api: str, count: int) -> None:
        conn.execute(
            text(f"INSERT INTO {SCHEMA}.api_error_slots (api, holder, slots, expires_at) "
                 "VALUES (:a, :h, :s, clock_timestamp() + make_interval(secs => :t)) ON CONFLICT (api, holder) "
                 "DO UPDATE SET slots = EXCLUDED.slots, expires_at = EXCLUDED.expires_at"),
            {"a": api, "h": self.holder, "s": count, "t": self.policy.slot_lease_s},
        )

    # -- rate-limit tokens -----------------------------------------------------------------------

    def _take_tokens(self, key: BudgetKey) -> tuple[float, int, float | None, tuple[datetime, float] | None]:
        """(0, cost, seconds until its turn (None: from this process's advance), an exact window's
        dating) once the request's tokens are taken, or (seconds to wait, 0, 0, None)."""
        reserve = self.policy.cost.ok
        stash = self._stashes.setdefault(key.bucket, _Stash())
        if stash.tokens >= reserve and self._clock() < stash.valid_until:
            stash.tokens -= reserve
            self.advance_hits += 1
            return 0.0, reserve, None, None
        started = self._clock()  # before the database's clock is read: advances expire early, never late
        if started < self._refused_until.get(key.bucket, 0.0):
            # another page worker of this process was just told to wait: asking again before then
            # would only be refused again (a herd of workers must not cost a transaction each)
            return self._refused_until[key.bucket] - started, 0, 0.0, None
        grant = self._charge_known_window(key, stash, reserve - stash.tokens)
        if grant is None:
            with self._begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:b))"), {"b": key.bucket})
                self._refund(conn, key.bucket, stash)
                need = reserve - stash.tokens  # more than one request's worth when the stash is in debt
                grant = self._charge(conn, key, need)
        if grant is None:  # size unknown and nothing declared: a probe (its cost is charged when known)
            return 0.0, 0, 0.0, None
        if grant.wait_s > 0:
            self._refused_until[key.bucket] = started + grant.wait_s
            return grant.wait_s, 0, 0.0, None
        stash.tokens = max(stash.tokens + grant.charged - reserve, 0)  # below 0 only if a debt was capped: forgiven
        stash.charged_at, stash.refund_by = grant.at, grant.refund_by
        stash.token_bucket = isinstance(key.declared, TokenBucket)
        stash.valid_until = started + grant.usable_s
        dated = (grant.at, started) if grant.exact and grant.at is not None else None
        return 0.0, reserve, grant.send_in_s, dated

    def _charge_known_window(self, key: BudgetKey, stash: _Stash, need: int) -> _Grant | None:
        """A sliding window this process has sized (and declared), no advance to give back: charged
        in one round trip (`_SlidingWindows.charge_known`). None: the full transaction decides."""
        bucket = key.bucket or ""
        limit = self._known_limits.get(bucket)
        if (not isinstance(limit, SlidingWindow) or (stash.tokens > 0 and stash.charged_at is not None)
                or (key.declared is not None and bucket not in self._declared_written)):
            return None
        self.round_trips += 1
        with self._autocommit.connect() as conn:  # the statements' own transaction, no BEGIN/COMMIT trips
            return self._windows.charge_known(conn, bucket, limit, need)

    def _charge(self, conn: Connection, key: BudgetKey, need: int) -> _Grant | None:
        bucket = key.bucket
        write_declared = key.declared is not None and bucket not in self._declared_written
        if isinstance(key.declared, TokenBucket):
            limit, ahead = self._tokens.limit(conn, key, write_declared)
            self._declared_written.add(bucket)
            self._known_limits[bucket] = limit
            return self._tokens.charge(conn, bucket, limit, ahead, need)
        window = self._windows.limit(conn, key, write_declared)
        if write_declared:
            self._declared_written.add(bucket)
        if window is None:
            return self._probe(conn, bucket)
        self._known_limits[bucket] = window
        return self._windows.charge(conn, bucket, window, need)

    def _probe(self, conn: Connection, bucket: str) -> _Grant | None:
        """A bucket nobody declared and no response has sized yet: one request every 5 s per bucket
        until a response states its size (declare the limit to avoid this)."""
        probe = conn.execute(
            text(
                f"INSERT INTO {SCHEMA}.api_latches AS l (latch, blocked_until, reason) "
                "VALUES (:l, clock_timestamp() + interval '5 seconds', 'sizing the bucket') ON CONFLICT (latch) "
                "DO UPDATE SET blocked_until = EXCLUDED.blocked_until WHERE l.blocked_until < clock_timestamp() RETURNING 1"
            ),
            {"l": f"{bucket}/probe"},
        ).first()
        return None if probe else _Grant(wait_s=0.05)

    def _refund(self, conn: Connection, bucket: str, stash: _Stash) -> None:
        if stash.tokens <= 0 or stash.charged_at is None:
            return
        (self._tokens if stash.token_bucket else self._windows).refund(conn, bucket, stash)
        stash.tokens = 0

    # -- after ----------------------------------------------------------------------------------

    def after_response(self, reservation: Reservation, status: int | None, headers: Mapping[str, str],
                       path: str | None = None) -> None:
        """Learn from the server: bucket size and spend, 429/420 latches, error budget, circuit.
        Most responses teach nothing new and cost no database round trip. `path`: the circuit counts
        failing paths, not attempts: one resource failing on every retry (a merchant whose
        transactions always fail) is that item's failure, not an outage of the API."""
        self._hold_until_answered(reservation)
        key, bucket = reservation.key, reservation.key.bucket
        learned = self.policy.headers.read(headers, self._known_limits.get(bucket) if bucket else None)
        failed = status is None or status >= 500
        errors = self.policy.error_limit
        with self._lock:
            repeat = failed and path is not None and path in self._streak_paths
            if failed and path is not None:
                self._streak_paths.add(path)
            elif not failed:
                self._streak_paths.clear()
        remain = learned.error_remain if errors else None
        # an error the response did not account for (no error-limit headers): count it ourselves
        uncounted = errors and remain is None and (status is None or status >= 400)
        error_budget_low = errors and (status == 420 or (remain is not None and remain <= self.policy.error_limit_floor))
        with self._lock:
            slots = self._slots.setdefault(key.api, _Slots()) if errors else _Slots()
            if reservation.slot:
                slots.in_flight -= 1
            budget_news = errors and ((remain is not None and remain != slots.remain_seen) or status == 420)
            news = bucket is not None and self._bucket_news(reservation, status, learned)
            if not (failed or error_budget_low or budget_news or self._circuit_dirty or news or uncounted):
                return
            with self._begin() as conn:
                if failed and not repeat:
                    self._circuit_failure(conn, key, f"HTTP {status}" if status else "no response (timeout or connection error)")
                elif not failed and self._circuit_dirty:  # a repeat of a failed path is no success
                    conn.execute(text(f"DELETE FROM {SCHEMA}.api_latches WHERE latch = :l"), {"l": f"{key.api}/circuit"})
                    view = self._views.setdefault(key.api, _ApiView())
                    view.latches.pop(f"{key.api}/circuit", None)
                    view.changes += 1
                    self._circuit_dirty = False
                if budget_news:
                    self._learn_error_budget(conn, key.api, 0 if status == 420 else remain, learned.error_reset_s, slots)
                elif uncounted:  # counted against the stated figure, if any, and in our own window
                    conn.execute(text(f"UPDATE {SCHEMA}.api_error_budget SET remain = GREATEST(remain - 1, 0) "
                                      "WHERE api = :a AND reset_at > clock_timestamp()"), {"a": key.api})
                    conn.execute(text(f"INSERT INTO {SCHEMA}.api_error_events (api, at) VALUES (:a, clock_timestamp())"),
                                 {"a": key.api})
                    self._claim_slots(conn, key.api, slots)  # the lease shrinks with the errors left
                if error_budget_low:
                    left = remain if remain is not None and status != 420 else 0
                    reset = learned.error_reset_s
                    self._latch(conn, key.api, f"{key.api}/error-limit", (reset or 60.0) + 0.5,
                                f"{key.api} error budget low ({left} left), waiting for the window reset")
                if news:
                    self._learn_bucket(conn, reservation, status, learned)

    def release(self, reservation: Reservation) -> None:
        """The request was abandoned before any response (cancelled, interrupted). The caller's own
        exception is on its way: a database failure here must not replace it, nor keep the error
        slot (the next admission meets that failure anyway)."""
        try:
            self._hold_until_answered(reservation)
        except SQLAlchemyError:
            pass
        finally:
            with self._lock:
                if reservation.slot:
                    self._slots.setdefault(reservation.key.api, _Slots()).in_flight -= 1

    def _hold_until_answered(self, reservation: Reservation) -> None:
        """An exact window is spent to its last token, so none may come back before the server lets
        it go. The server counts a request when it arrives, which is no later than its answer;
        dated at its admission, a token is held the window plus `slack`. A request answered later
        than that slack after its admission (a loaded machine that sent it late, a slow network)
        has its token held as much longer: one transaction, and only then."""
        if reservation.dated is None:
            return
        at, admitted = reservation.dated
        limit = self._known_limits.get(reservation.key.bucket or "")
        if not isinstance(limit, SlidingWindow):
            return
        late = self._clock() - admitted - self.policy.slack(limit.window_s)
        if late > 0:
            with self._begin() as conn:
                self._windows.hold_longer(conn, reservation.key.bucket, at, reservation.cost, late)
        reservation.dated = None  # held once

    def _learn_error_budget(self, conn: Connection, api: str, remain: int | None, reset: float | None, slots: _Slots) -> None:
        """Write the errors left (the server's figure) and shrink this process's lease to fit."""
        if remain is None:
            return
        conn.execute(
            text(f"INSERT INTO {SCHEMA}.api_error_budget AS b (api, remain, window_max, reset_at) "
                 "VALUES (:a, :r, :r, clock_timestamp() + make_interval(secs => :s)) ON CONFLICT (api) DO UPDATE SET "
                 "remain = EXCLUDED.remain, reset_at = EXCLUDED.reset_at, "
                 "window_max = CASE WHEN b.reset_at < clock_timestamp() THEN EXCLUDED.remain "
                 "ELSE GREATEST(b.window_max, EXCLUDED.remain) END"),
            {"a": api, "r": remain, "s": reset if reset is not None else 60.0},
        )
        self._claim_slots(conn, api, slots)
        slots.remain_seen = remain

    def _bucket_news(self, reservation: Reservation, status: int | None, learned: Learned) -> bool:
        """Settle what can be settled locally; True when the database must hear about it."""
        bucket = reservation.key.bucket
        stash = self._stashes.setdefault(bucket, _Stash())
        used = learned.used if learned.used is not None else self.policy.cost.of(status)
        if reservation.cost and used != reservation.cost:
            stash.tokens += reservation.cost - used  # may go into debt, paid with the next charge
        ok = status is not None and status < 400
        if status == 429 or reservation.cost == 0 or (bucket in self._backoff_dirty and ok):
            return True  # a latch, a probe's cost, a backoff to reset: the database must know
        known = self._known_limits.get(bucket)
        if learned.limit is not None and learned.limit != known and _same_kind(learned.limit, reservation.key.declared):
            return True  # the server states another size than ours
        limit = learned.limit or known
        if learned.remaining is None or limit is None or learned.remaining >= _size(limit) * 0.5:
            return False
        # near the edge, reconcile with the server's count (other clients may share the bucket)
        now = self._clock()
        if now - self._reconciled_at.get(bucket, float("-inf")) < max(0.05, _horizon(limit) * self.policy.stash_age_share):
            return False
        self._reconciled_at[bucket] = now
        return True

    def _learn_bucket(self, conn: Connection, reservation: Reservation, status: int | None, learned: Learned) -> None:
        key, bucket = reservation.key, reservation.key.bucket
        if status == 429:
            self._latch_429(conn, key, learned.retry_after_s)
        elif bucket in self._backoff_dirty and status is not None and status < 400:
            conn.execute(text(f"UPDATE {SCHEMA}.api_latches SET failures = 0 WHERE latch = :l"), {"l": bucket})
            self._backoff_dirty.discard(bucket)
        if isinstance(key.declared, TokenBucket):
            self._learn_token_bucket(conn, reservation, status, learned)
        else:
            self._learn_window(conn, reservation, status, learned)

    def _learn_token_bucket(self, conn: Connection, reservation: Reservation, status: int | None, learned: Learned) -> None:
        bucket = reservation.key.bucket
        stash = self._stashes.setdefault(bucket, _Stash())
        known = self._known_limits.get(bucket)
        if isinstance(learned.limit, TokenBucket) and learned.limit != known:
            self._drop_advance(conn, bucket, stash)  # (refunded at the rate it was charged at)
            self._tokens.learn_rate(conn, bucket, learned.limit.rate)
            self._known_limits[bucket] = learned.limit
        if status == 429:
            # the server's bucket is empty: so is ours, and this process's advance was not real
            self._tokens.at_most(conn, bucket, 0)
            stash.tokens, stash.valid_until = min(stash.tokens, 0), 0.0
        elif learned.remaining is not None:
            # the server counts this process's unused advance as left; the database does not
            self._tokens.at_most(conn, bucket, learned.remaining - max(stash.tokens, 0))

    def _learn_window(self, conn: Connection, reservation: Reservation, status: int | None, learned: Learned) -> None:
        bucket = reservation.key.bucket
        limit = learned.limit if isinstance(learned.limit, SlidingWindow) else None
        if limit is not None and limit != self._known_limits.get(bucket):
            self._drop_advance(conn, bucket, self._stashes.setdefault(bucket, _Stash()))
            self._windows.learn_limit(conn, bucket, limit)
            self._known_limits[bucket] = limit
        known = self._known_limits.get(bucket)
        if reservation.cost == 0:  # a probe: charge what the server says it cost
            probe_cost = learned.used if learned.used is not None else self.policy.cost.of(status)
            if probe_cost:
                self._windows.spend(conn, bucket, probe_cost)
        if learned.remaining is not None and isinstance(known, SlidingWindow):
            # The server counted its Remaining when this request arrived, after its admission; our
            # charges that left the window since still weighed on that figure. Compared with the
            # window as of now, they looked like someone else's spending and were booked again as a
            # phantom, dated now: the next window lost as many requests (a walk paced at 28
            # requests a window got 22 in some). So our side counts everything charged in the
            # window before the admission too.
            since = self._clock() - reservation.admitted if reservation.admitted is not None else 0.0
            stash = self._stashes.get(bucket)
            local_left = self._windows.left(conn, bucket, known, earlier_s=max(since, 0.0)) + (stash.tokens if stash else 0)
            if learned.remaining < local_left:  # others (another app, a restarted worker) spent more: believe the server
                self._windows.spend(conn, bucket, local_left - learned.remaining, learned.window_reset_s)

    def _drop_advance(self, conn: Connection, bucket: str, stash: _Stash) -> None:
        """An advance sized for a limit the server has just contradicted goes back: the declared
        12000 per 15 minutes must not leave 32 requests in a stash when the server allows 16 a second."""
        self._refund(conn, bucket, stash)
        stash.valid_until = 0.0

    def _latch_429(self, conn: Connection, key: BudgetKey, retry_after_s: float | None) -> None:
        bucket, group = key.bucket, key.group or key.api
        if retry_after_s is not None:
            self._latch(conn, key.api, bucket, retry_after_s + 0.5, f"429 Too Many Requests on {group}: Retry-After {retry_after_s:.0f}s")
            return
        # no Retry-After: back off, longer for each bare 429 in a row (429s of requests that were
        # already in flight when the latch was set do not count as another in a row)
        policy = self.policy
        row = conn.execute(
            text(
                f"INSERT INTO {SCHEMA}.api_latches AS l (latch, blocked_until, reason, failures) "
                "VALUES (:l, clock_timestamp() + make_interval(secs => :first), :r, 1) ON CONFLICT (latch) DO UPDATE SET "
                "failures = CASE WHEN l.blocked_until > clock_timestamp() THEN l.failures ELSE l.failures + 1 END, "
                "blocked_until = GREATEST(l.blocked_until, clock_timestamp() + make_interval(secs => "
                "LEAST(:most, :first * power(:f, CASE WHEN l.blocked_until > clock_timestamp() THEN l.failures - 1 "
                "ELSE l.failures END)))), reason = :r "
                "RETURNING EXTRACT(EPOCH FROM blocked_until - clock_timestamp()) AS left_s, failures"
            ),
            {"l": bucket, "first": policy.backoff_initial_s, "most": policy.backoff_max_s, "f": policy.backoff_factor,
             "r": f"429 Too Many Requests on {group} without Retry-After: backing off"},
        ).one()
        self._backoff_dirty.add(bucket)
        self._note_latch(key.api, bucket, float(row.left_s),
                         f"429 Too Many Requests on {group} without Retry-After ({row.failures} in a row): backing off")

    def _circuit_failure(self, conn: Connection, key: BudgetKey, what: str) -> None:
        self._circuit_dirty = True
        latch = f"{key.api}/circuit"
        failures = conn.execute(
            text(
                f"INSERT INTO {SCHEMA}.api_latches AS l (latch, blocked_until, reason, failures) "
                "VALUES (:l, '-infinity', :r, 1) ON CONFLICT (latch) DO UPDATE SET failures = l.failures + 1, reason = :r "
                "RETURNING failures"
            ),
            {"l": latch, "r": what},
        ).scalar_one()
        if failures >= self.policy.circuit_threshold:
            self._latch(conn, key.api, latch, self.policy.circuit_cooldown_s,
                        f"{failures} consecutive failures, last: {what}", reset_failures=True)

    def _latch(self, conn: Connection, api: str, latch: str, seconds: float, reason: str, reset_failures: bool = False) -> None:
        conn.execute(
            text(
                f"INSERT INTO {SCHEMA}.api_latches AS l (latch, blocked_until, reason) "
                "VALUES (:l, clock_timestamp() + make_interval(secs => :s), :r) "
                "ON CONFLICT (latch) DO UPDATE SET reason = EXCLUDED.reason, "
                "blocked_until = GREATEST(l.blocked_until, EXCLUDED.blocked_until)"
                + (", failures = 0" if reset_failures else "")
            ),
            {"l": latch, "s": seconds, "r": reason},
        )
        self._note_latch(api, latch, seconds, reason)

    # -- end of a run ----------------------------------------------------------------------------

    def close(self) -> None:
        """Hand back what this process took in advance: unused tokens and its error slots."""
        with self._lock:
            if not self._ready or not (any(s.tokens > 0 for s in self._stashes.values()) or self._slots):
                return
            with self._begin() as conn:
                for bucket, stash in self._stashes.items():
                    self._refund(conn, bucket, stash)
                conn.execute(text(f"DELETE FROM {SCHEMA}.api_error_slots WHERE holder = :h"), {"h": self.holder})
            self._slots.clear()

    # -- state for schedules/sensors and metadata ------------------------------------------------

    def open_circuit(self, api: str) -> str | None:
        """The reason the API's circuit is open, or None."""
        self._ensure()
        with self.engine.connect() as conn:
            return conn.execute(
                text(f"SELECT reason FROM {SCHEMA}.api_latches WHERE latch = :l AND blocked_until > clock_timestamp()"),
                {"l": f"{api}/circuit"},
            ).scalar()

    def remaining(self, key: BudgetKey) -> int | None:
        """Tokens left in the key's bucket as we account them (for metadata)."""
        if not key.bucket:
            return None
        self._ensure()
        stash = self._stashes.get(key.bucket)
        unused = stash.tokens if stash else 0
        with self.engine.connect() as conn:
            if isinstance(key.declared, TokenBucket):
                row = conn.execute(
                    text(f"SELECT rate, burst, EXTRACT(EPOCH FROM tat - clock_timestamp()) AS ahead "
                         f"FROM {SCHEMA}.api_token_buckets WHERE bucket = :b"), {"b": key.bucket},
                ).first()
                return None if row is None else int(row.burst - max(float(row.ahead), 0.0) * row.rate + _EPS) + unused
            row = conn.execute(text(f"SELECT capacity, window_s FROM {SCHEMA}.api_limits WHERE bucket = :b"), {"b": key.bucket}).first()
            if row is None:
                return None
            spent = conn.execute(
                text(f"SELECT coalesce(sum(cost), 0) FROM {SCHEMA}.api_spend WHERE bucket = :b "
                     "AND at > clock_timestamp() - make_interval(secs => :w)"),
                {"b": key.bucket, "w": row.window_s},
            ).scalar_one()
        return int(row.capacity - spent + unused)

    def _begin(self):
        self.round_trips += 1
        return self.engine.begin()

    def _ensure(self) -> None:
        if self._ready:
            return
        with self.engine.begin() as conn:
            ddl.apply(conn, BUDGET_DDL, _DDL_LOCK)
        self._ready = True


def _same_kind(limit: RateLimit, declared: RateLimit | None) -> bool:
    """Headers may only correct a bucket of their own kind (undeclared buckets are windows)."""
    return isinstance(limit, TokenBucket) == isinstance(declared, TokenBucket)


def _size(limit: RateLimit) -> int:
    return limit.capacity if isinstance(limit, SlidingWindow) else limit.burst


def _horizon(limit: RateLimit) -> float:
    """Seconds a full bucket takes to come back."""
    return limit.window_s if isinstance(limit, SlidingWindow) else limit.burst / limit.rate
