"""API budgets shared by every process, kept in Postgres.

With the multiprocess executor every step is a process, and with a Docker/K8s run launcher every
run is a machine: an in-memory limiter would only limit itself. So the budgets live in the data
database, next to the sync state:

- rate-limit buckets: ESI's sliding window per (group, character) or (group, public), sized from
  the server's `X-Ratelimit-Limit`, charged before requests and corrected from `X-Ratelimit-Used`
  / `X-Ratelimit-Remaining` (the server's word wins);
- the error limit: ESI answers 420 to every route once `X-ESI-Error-Limit-Remain` reaches 0. Each
  process holds a lease of *error slots* (requests it may have in flight); the leases of every
  process together never exceed the errors left above the floor, so even if every request in
  flight fails at once the limit is not exhausted;
- latches: a 429's `Retry-After` blocks that bucket, a 420 (or the floor) blocks the API until
  `X-ESI-Error-Limit-Reset`;
- a circuit breaker per API: consecutive 5xx/timeouts open it for a cooldown.

Requests must not each pay database round trips (a 300-page walk would spend more time in the
budget than on the wire), so each process works from small local advances that it renews in one
transaction: a stash of bucket tokens (a few requests' worth, refunded if unused), a lease of
error slots (renewed every ~20 s), and the list of active latches (re-read every half second,
updated at once by what this process learns itself). Errors and 429s, being rare, are written
through immediately.

A small SQL sliding-window limiter rather than a library: the bucket must follow ESI's exact
window semantics and be corrected by response headers in the same store, and pyrate-limiter's
Postgres bucket needs psycopg 3 next to the psycopg2 that dagster-postgres requires.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Mapping

from sqlalchemy import Connection, Engine, text

from ..core.errors import ApiError
from .http import Log
from .http import float_or_none as _float
from .http import int_or_none as _int

SCHEMA = "sync_assets"
BUDGET_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.api_limits (
    bucket     text PRIMARY KEY,
    capacity   integer NOT NULL,
    window_s   double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.api_spend (
    bucket text NOT NULL,
    at     timestamptz NOT NULL,
    cost   integer NOT NULL
);
CREATE INDEX IF NOT EXISTS api_spend_bucket_at ON {SCHEMA}.api_spend (bucket, at);
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
"""
_DDL_LOCK = 7_349_002
RESERVED_COST = 2  # what a 200 costs (ESI: 2xx 2, 3xx 1, 4xx 5, 5xx 0); corrected after the response
_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*([smh])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600}


class CircuitOpen(ApiError):
    """The API failed repeatedly; requests are refused until the cooldown ends."""


class BudgetExhausted(ApiError):
    """A budget would only allow the next request after longer than a run is willing to wait."""


@dataclass(frozen=True)
class BudgetKey:
    api: str
    group: str | None  # rate-limit group; None for routes under the error limit only
    principal: str = "public"  # character id for authenticated routes

    @property
    def bucket(self) -> str | None:
        return f"{self.api}/{self.group}/{self.principal}" if self.group else None


@dataclass
class Reservation:
    key: BudgetKey
    cost: int  # tokens charged before the request (0 when the bucket's size is not known yet)
    slot: bool = True  # holds one of this process's error slots until the response is in


@dataclass(frozen=True)
class BudgetPolicy:
    error_limit_floor: int = 10  # never plan to spend ESI's last errors of a window
    safety_margin: float = 0.05  # never plan to spend the last 5% of a bucket
    clock_slack_s: float = 0.25  # our clock and the server's differ a little: keep tokens a bit longer...
    clock_slack_share: float = 0.02  # ...but never more than 2% of the window (1 s windows exist)
    circuit_threshold: int = 8  # consecutive 5xx/timeouts that open the circuit
    circuit_cooldown_s: float = 60.0
    max_wait_s: float = 960.0  # longer waits fail the run instead (ESI windows are 15 minutes)
    latch_refresh_s: float = 0.5  # how stale this process's copy of other processes' latches may be
    slot_lease_s: float = 30.0  # error slots of a process that died come back after this
    stash_share: float = 0.05  # a process takes at most this share of a bucket in advance...
    stash_requests: int = 32  # ...and at most this many requests' worth
    stash_age_share: float = 0.1  # unused advance tokens go back after this share of the window

    def slack(self, window_s: float) -> float:
        return min(self.clock_slack_s, self.clock_slack_share * window_s)


@dataclass
class _Stash:
    """Tokens this process charged in advance: spent in the database at `charged_at`."""

    tokens: int = 0
    charged_at: datetime | None = None
    stale_at: float = 0.0  # monotonic


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
    latches: dict[str, _Latch] = field(default_factory=dict)
    read_at: float = float("-inf")


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
        self.want_slots = max(1, want_slots)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.RLock()
        self._ready = False
        self._circuit_dirty = False  # this process recorded a failure: the next success clears the count
        self._known_limits: dict[str, tuple[int, float]] = {}
        self._stashes: dict[str, _Stash] = {}
        self._slots: dict[str, _Slots] = {}
        self._views: dict[str, _ApiView] = {}
        self._reconciled_at: dict[str, float] = {}
        self.waited_s = 0.0
        self.round_trips = 0  # database transactions, for benchmarks and tests

    # -- before ---------------------------------------------------------------------------------

    def before_request(self, key: BudgetKey, log: Log, sleep: Callable[[float], None] | None = None) -> Reservation:
        """Wait until every shared budget allows one more request, then charge it. `sleep`: how
        to wait (the caller's, when it must be able to give up while waiting)."""
        self._ensure()
        while True:
            with self._lock:
                wait, reason, cost = self._try_admit(key)
            if wait <= 0:
                return Reservation(key, cost)
            if wait > self.policy.max_wait_s:
                raise BudgetExhausted(f"{key.api}: {reason}; the next request would be {wait:.0f}s away, "
                                      f"longer than a run waits ({self.policy.max_wait_s:.0f}s)")
            if wait >= 0.25:  # the pacing of a tight bucket is a stream of tiny waits: not worth a line each
                log.warning(f"{key.api}: waiting {wait:.1f}s: {reason}")
            self.waited_s += wait
            (sleep or self._sleep)(wait)

    def _try_admit(self, key: BudgetKey) -> tuple[float, str, int]:
        """(0, "", tokens charged) once admitted; (seconds to wait, why, 0) otherwise. Holds self._lock."""
        wait, reason = self._latched(key)
        if wait <= 0:
            wait, reason = self._take_slot(key.api)
        if wait > 0 or not key.bucket:
            return wait, reason, 0
        wait, cost = self._take_tokens(key.bucket)
        if wait > 0:
            self._slots[key.api].in_flight -= 1
            return wait, f"rate-limit bucket {key.group} is spent", 0
        return 0.0, "", cost

    def _latched(self, key: BudgetKey) -> tuple[float, str]:
        view = self._views.setdefault(key.api, _ApiView())
        now = self._clock()
        if now - view.read_at >= self.policy.latch_refresh_s:
            view.latches = self._read_latches(key.api, now)
            view.read_at = now
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

    # -- error slots ----------------------------------------------------------------------------

    def _take_slot(self, api: str) -> tuple[float, str]:
        slots = self._slots.setdefault(api, _Slots())
        if slots.in_flight >= slots.granted or self._clock() >= slots.renew_at:
            with self._begin() as conn:
                reset_in, left = self._claim_slots(conn, api, slots)
            if slots.in_flight >= slots.granted:
                if slots.in_flight or left is None or left > 0:
                    # requests in flight (here or elsewhere) will hand their slots back soon
                    return 0.2, f"ESI error budget: {slots.in_flight} requests of this run in flight hold the errors left"
                return reset_in + 0.5, (f"ESI error budget low ({slots.remain_seen} errors left, floor "
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
            # nobody has heard from the API in this error window yet (or ever): one request at a
            # time until a response tells the errors left (it is news: remain_seen is forgotten)
            # (a probe per process: a few requests in flight while unknown stay far above the floor)
            granted, reset_in, left = 1, 0.0, None
            slots.remain_seen = None
        else:
            reset_in = float(budget.reset_in)
            slots.remain_seen = budget.remain
            granted = max(0, min(self.want_slots, budget.remain - self.policy.error_limit_floor - int(others)))
            left = int(others)
        slots.granted = granted
        slots.renew_at = self._clock() + self.policy.slot_lease_s * 2 / 3
        self._write_slots(conn, api, max(granted, slots.in_flight))
        return reset_in, left

    def _write_slots(self, conn: Connection, api: str, count: int) -> None:
        conn.execute(
            text(f"INSERT INTO {SCHEMA}.api_error_slots (api, holder, slots, expires_at) "
                 "VALUES (:a, :h, :s, clock_timestamp() + make_interval(secs => :t)) ON CONFLICT (api, holder) "
                 "DO UPDATE SET slots = EXCLUDED.slots, expires_at = EXCLUDED.expires_at"),
            {"a": api, "h": self.holder, "s": count, "t": self.policy.slot_lease_s},
        )

    # -- rate-limit tokens -----------------------------------------------------------------------

    def _take_tokens(self, bucket: str) -> tuple[float, int]:
        """(0, cost) once the request's tokens are taken, or (seconds to wait, 0)."""
        stash = self._stashes.setdefault(bucket, _Stash())
        if stash.tokens >= RESERVED_COST and self._clock() < stash.stale_at:
            stash.tokens -= RESERVED_COST
            return 0.0, RESERVED_COST
        with self._begin() as conn:
            return self._charge(conn, bucket, stash)

    def _charge(self, conn: Connection, bucket: str, stash: _Stash) -> tuple[float, int]:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:b))"), {"b": bucket})
        self._refund(conn, bucket, stash)
        limit = conn.execute(text(f"SELECT capacity, window_s FROM {SCHEMA}.api_limits WHERE bucket = :b"), {"b": bucket}).first()
        if limit is None:  # size unknown: one probe request at a time until a response tells it
            probe = conn.execute(
                text(
                    f"INSERT INTO {SCHEMA}.api_latches AS l (latch, blocked_until, reason) "
                    "VALUES (:l, clock_timestamp() + interval '5 seconds', 'sizing the bucket') ON CONFLICT (latch) "
                    "DO UPDATE SET blocked_until = EXCLUDED.blocked_until WHERE l.blocked_until < clock_timestamp() RETURNING 1"
                ),
                {"l": f"{bucket}/probe"},
            ).first()
            return (0.0, 0) if probe else (0.05, 0)
        window = limit.window_s + self.policy.slack(limit.window_s)
        conn.execute(
            text(f"DELETE FROM {SCHEMA}.api_spend WHERE bucket = :b AND at <= clock_timestamp() - make_interval(secs => :w)"),
            {"b": bucket, "w": window},
        )
        used = conn.execute(text(f"SELECT coalesce(sum(cost), 0) FROM {SCHEMA}.api_spend WHERE bucket = :b"), {"b": bucket}).scalar_one()
        allowed = limit.capacity * (1 - self.policy.safety_margin)
        need = RESERVED_COST - stash.tokens  # more than one request's worth when the stash is in debt
        if used + need <= allowed:
            advance = int(min(allowed * self.policy.stash_share, RESERVED_COST * self.policy.stash_requests, allowed - used))
            charge = max(need, advance)
            stash.charged_at = conn.execute(
                text(f"INSERT INTO {SCHEMA}.api_spend (bucket, at, cost) VALUES (:b, clock_timestamp(), :c) RETURNING at"),
                {"b": bucket, "c": charge},
            ).scalar_one()
            stash.tokens += charge - RESERVED_COST
            stash.stale_at = self._clock() + limit.window_s * self.policy.stash_age_share
            return 0.0, RESERVED_COST
        events = conn.execute(  # the earliest moment enough spent tokens have come back
            text(f"SELECT EXTRACT(EPOCH FROM at + make_interval(secs => :w) - clock_timestamp()) AS back_in, cost "
                 f"FROM {SCHEMA}.api_spend WHERE bucket = :b ORDER BY at"),
            {"b": bucket, "w": window},
        ).all()
        for event in events:
            used -= event.cost
            if used + need <= allowed:
                return max(float(event.back_in), 0.01), 0
        return self.policy.max_wait_s, 0

    def _refund(self, conn: Connection, bucket: str, stash: _Stash) -> None:
        """Give unused advance tokens back, dated when they were charged (so they leave the window
        when the charge does)."""
        if stash.tokens > 0 and stash.charged_at is not None:
            conn.execute(text(f"INSERT INTO {SCHEMA}.api_spend (bucket, at, cost) VALUES (:b, :at, :c)"),
                         {"b": bucket, "at": stash.charged_at, "c": -stash.tokens})
            stash.tokens = 0

    # -- after ----------------------------------------------------------------------------------

    def after_response(self, reservation: Reservation, status: int | None, headers: Mapping[str, str]) -> None:
        """Learn from the server: bucket size and spend, 429/420 latches, error budget, circuit.
        Most responses teach nothing new and cost no database round trip."""
        key, bucket = reservation.key, reservation.key.bucket
        failed = status is None or status >= 500
        remain, reset = _int(headers.get("x-esi-error-limit-remain")), _float(headers.get("x-esi-error-limit-reset"))
        error_budget_low = status == 420 or (remain is not None and remain <= self.policy.error_limit_floor)
        with self._lock:
            slots = self._slots.setdefault(key.api, _Slots())
            if reservation.slot:
                slots.in_flight -= 1
            budget_news = (remain is not None and remain != slots.remain_seen) or status == 420
            news = bucket is not None and self._bucket_news(reservation, status, headers)
            if not (failed or error_budget_low or budget_news or self._circuit_dirty or news):
                return
            with self._begin() as conn:
                if failed:
                    self._circuit_failure(conn, key, f"HTTP {status}" if status else "no response (timeout or connection error)")
                elif self._circuit_dirty:
                    conn.execute(text(f"DELETE FROM {SCHEMA}.api_latches WHERE latch = :l"), {"l": f"{key.api}/circuit"})
                    self._views.setdefault(key.api, _ApiView()).latches.pop(f"{key.api}/circuit", None)
                    self._circuit_dirty = False
                if budget_news:
                    self._learn_error_budget(conn, key.api, 0 if status == 420 else remain, reset, slots)
                if error_budget_low:
                    left = remain if remain is not None and status != 420 else 0
                    self._latch(conn, key.api, f"{key.api}/error-limit", (reset or 60.0) + 0.5,
                                f"ESI error budget low ({left} left), waiting for the window reset")
                if bucket is None:
                    return
                if status == 429:
                    retry_after = _float(headers.get("retry-after")) or 10.0
                    self._latch(conn, key.api, bucket, retry_after + 0.5,
                                f"429 Too Many Requests on {key.group}: Retry-After {retry_after:.0f}s")
                if news:
                    self._learn_bucket(conn, reservation, status, headers)

    def release(self, reservation: Reservation) -> None:
        """The request was abandoned before any response (cancelled, interrupted)."""
        with self._lock:
            if reservation.slot:
                self._slots.setdefault(reservation.key.api, _Slots()).in_flight -= 1

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

    def _bucket_news(self, reservation: Reservation, status: int | None, headers: Mapping[str, str]) -> bool:
        """Settle what can be settled locally; True when the database must hear about it."""
        bucket = reservation.key.bucket
        parsed = _parse_limit(headers.get("x-ratelimit-limit"))
        used = _int(headers.get("x-ratelimit-used"))
        if used is None and (status is None or status >= 500):
            used = 0
        if reservation.cost and used is not None and used != reservation.cost:
            self._stashes.setdefault(bucket, _Stash()).tokens += reservation.cost - used  # may go into debt
        if status == 429 or reservation.cost == 0 or (parsed and self._known_limits.get(bucket) != parsed):
            return True  # a latch, a probe's cost, or the bucket's size: the database must know
        remaining = _int(headers.get("x-ratelimit-remaining"))
        if not (parsed and remaining is not None and remaining < parsed[0] * 0.5):
            return False
        # near the edge, reconcile with the server's count (other clients may share the bucket)
        now = self._clock()
        if now - self._reconciled_at.get(bucket, float("-inf")) < max(0.05, parsed[1] * self.policy.stash_age_share):
            return False
        self._reconciled_at[bucket] = now
        return True

    def _learn_bucket(self, conn: Connection, reservation: Reservation, status: int | None, headers: Mapping[str, str]) -> None:
        bucket = reservation.key.bucket
        parsed = _parse_limit(headers.get("x-ratelimit-limit"))
        if parsed:
            self._known_limits[bucket] = parsed
            conn.execute(
                text(
                    f"INSERT INTO {SCHEMA}.api_limits (bucket, capacity, window_s) VALUES (:b, :c, :w) "
                    "ON CONFLICT (bucket) DO UPDATE SET capacity = EXCLUDED.capacity, window_s = EXCLUDED.window_s, updated_at = now()"
                ),
                {"b": bucket, "c": parsed[0], "w": parsed[1]},
            )
        correction = 0
        if reservation.cost == 0:  # a probe: charge what the server says it cost
            used = _int(headers.get("x-ratelimit-used"))
            correction = used if used is not None else (0 if status is None or status >= 500 or status == 429 else RESERVED_COST)
        remaining = _int(headers.get("x-ratelimit-remaining"))
        if remaining is not None and parsed:
            window = parsed[1] + self.policy.slack(parsed[1])
            spent = conn.execute(
                text(f"SELECT coalesce(sum(cost), 0) FROM {SCHEMA}.api_spend WHERE bucket = :b "
                     "AND at > clock_timestamp() - make_interval(secs => :w)"), {"b": bucket, "w": window},
            ).scalar_one()
            stash = self._stashes.get(bucket)
            local_left = parsed[0] - (spent + correction) + (stash.tokens if stash else 0)
            if remaining < local_left:  # others (another app, a restarted worker) spent more: believe the server
                correction += local_left - remaining
        if correction:
            conn.execute(
                text(f"INSERT INTO {SCHEMA}.api_spend (bucket, at, cost) VALUES (:b, clock_timestamp(), :c)"),
                {"b": bucket, "c": correction},
            )

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
        with self.engine.connect() as conn:
            limit = conn.execute(text(f"SELECT capacity, window_s FROM {SCHEMA}.api_limits WHERE bucket = :b"), {"b": key.bucket}).first()
            if limit is None:
                return None
            spent = conn.execute(
                text(f"SELECT coalesce(sum(cost), 0) FROM {SCHEMA}.api_spend WHERE bucket = :b "
                     "AND at > clock_timestamp() - make_interval(secs => :w)"),
                {"b": key.bucket, "w": limit.window_s},
            ).scalar_one()
        stash = self._stashes.get(key.bucket)
        return int(limit.capacity - spent + (stash.tokens if stash else 0))

    def _begin(self):
        self.round_trips += 1
        return self.engine.begin()

    def _ensure(self) -> None:
        if self._ready:
            return
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DDL_LOCK})
            conn.execute(text(BUDGET_DDL))
        self._ready = True


def _parse_limit(value: str | None) -> tuple[int, float] | None:
    """'12000/15m' -> (12000, 900.0)."""
    match = _LIMIT.match(value or "")
    return (int(match.group(1)), float(int(match.group(2)) * _UNITS[match.group(3)])) if match else None
