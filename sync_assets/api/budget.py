"""API budgets shared by every process, kept in Postgres.

With the multiprocess executor every step is a process, and with a Docker/K8s run launcher every
run is a machine: an in-memory limiter would only limit itself. So the three budgets live in
the data database, next to the sync state:

- rate-limit buckets: ESI's sliding window per (group, character) or (group, public), sized from
  the server's `X-Ratelimit-Limit`, charged before each request and corrected from
  `X-Ratelimit-Used` / `X-Ratelimit-Remaining` after it (the server's word wins);
- latches: a 429's `Retry-After` blocks that bucket, a low `X-ESI-Error-Limit-Remain` (or a 420)
  blocks every request to the API until `X-ESI-Error-Limit-Reset`;
- a circuit breaker per API: consecutive 5xx/timeouts open it for a cooldown.

A small SQL sliding-window limiter rather than a library: the bucket must follow ESI's exact
window semantics and be corrected by response headers in the same store, and pyrate-limiter's
Postgres bucket needs psycopg 3 next to the psycopg2 that dagster-postgres requires.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from sqlalchemy import Connection, Engine, text

from .errors import ApiError
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
"""
_DDL_LOCK = 7_349_002
RESERVED_COST = 2  # what a 200 costs (ESI: 2xx 2, 3xx 1, 4xx 5, 5xx 0); corrected after the response
_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*([smh])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600}


class CircuitOpen(ApiError):
    """The API failed repeatedly; requests are refused until the cooldown ends."""


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


@dataclass(frozen=True)
class BudgetPolicy:
    error_limit_floor: int = 10  # stop asking when this few errors are left in ESI's window
    safety_margin: float = 0.05  # never plan to spend the last 5% of a bucket
    clock_slack_s: float = 0.25  # our clock and the server's differ a little: keep tokens a bit longer
    circuit_threshold: int = 8  # consecutive 5xx/timeouts that open the circuit
    circuit_cooldown_s: float = 60.0
    max_wait_s: float = 900.0  # longest single wait (ESI windows are 15 minutes)


class PostgresBudget:
    def __init__(self, engine: Engine, policy: BudgetPolicy = BudgetPolicy(), sleep: Callable[[float], None] = time.sleep):
        self.engine, self.policy, self._sleep = engine, policy, sleep
        self._ready = False
        self._circuit_dirty = False  # this process recorded a failure: the next success clears the count
        self._known_limits: dict[str, tuple[int, float]] = {}
        self.waited_s = 0.0

    # -- before ---------------------------------------------------------------------------------

    def before_request(self, key: BudgetKey, log: Log) -> Reservation:
        """Wait until every shared budget allows one more request, then charge it."""
        self._ensure()
        while True:
            with self.engine.begin() as conn:
                wait, reason = self._blocked(conn, key)
                if wait <= 0 and key.bucket:
                    wait, cost = self._charge(conn, key.bucket)
                    if wait <= 0:
                        return Reservation(key, cost)
                    reason = f"rate-limit bucket {key.group} is spent"
                elif wait <= 0:
                    return Reservation(key, 0)
            wait = min(wait, self.policy.max_wait_s)
            log.warning(f"{key.api}: waiting {wait:.1f}s: {reason}")
            self.waited_s += wait
            self._sleep(wait)

    def _blocked(self, conn: Connection, key: BudgetKey) -> tuple[float, str]:
        latches = [f"{key.api}/error-limit", f"{key.api}/circuit"] + ([key.bucket] if key.bucket else [])
        rows = conn.execute(
            text(
                f"SELECT latch, reason, EXTRACT(EPOCH FROM blocked_until - clock_timestamp()) AS left_s "
                f"FROM {SCHEMA}.api_latches WHERE latch = ANY(:l) AND blocked_until > clock_timestamp()"
            ),
            {"l": latches},
        ).all()
        for row in rows:
            if row.latch.endswith("/circuit"):
                raise CircuitOpen(f"{key.api} circuit is open for {row.left_s:.0f}s more: {row.reason}")
        if not rows:
            return 0.0, ""
        longest = max(rows, key=lambda r: r.left_s)
        return float(longest.left_s) + 0.05, longest.reason

    def _charge(self, conn: Connection, bucket: str) -> tuple[float, int]:
        """(0, cost) after charging, or (seconds until enough tokens come back, 0)."""
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:b))"), {"b": bucket})
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
        window = limit.window_s + self.policy.clock_slack_s
        conn.execute(
            text(f"DELETE FROM {SCHEMA}.api_spend WHERE bucket = :b AND at <= clock_timestamp() - make_interval(secs => :w)"),
            {"b": bucket, "w": window},
        )
        events = conn.execute(
            text(
                f"SELECT EXTRACT(EPOCH FROM at + make_interval(secs => :w) - clock_timestamp()) AS back_in, cost "
                f"FROM {SCHEMA}.api_spend WHERE bucket = :b ORDER BY at"
            ),
            {"b": bucket, "w": window},
        ).all()
        allowed = limit.capacity * (1 - self.policy.safety_margin)
        used = sum(e.cost for e in events)
        if used + RESERVED_COST <= allowed:
            conn.execute(
                text(f"INSERT INTO {SCHEMA}.api_spend (bucket, at, cost) VALUES (:b, clock_timestamp(), :c)"),
                {"b": bucket, "c": RESERVED_COST},
            )
            return 0.0, RESERVED_COST
        for event in events:  # the earliest moment enough spent tokens have come back
            used -= event.cost
            if used + RESERVED_COST <= allowed:
                return max(float(event.back_in), 0.01), 0
        return self.policy.max_wait_s, 0

    # -- after ----------------------------------------------------------------------------------

    def after_response(self, reservation: Reservation, status: int | None, headers: Mapping[str, str]) -> None:
        """Learn from the server: bucket size and spend, 429/420 latches, error budget, circuit.
        Most responses teach nothing new and cost no database round trip."""
        key, bucket = reservation.key, reservation.key.bucket
        failed = status is None or status >= 500
        remain, reset = _int(headers.get("x-esi-error-limit-remain")), _float(headers.get("x-esi-error-limit-reset"))
        error_budget_low = status == 420 or (remain is not None and remain <= self.policy.error_limit_floor)
        if not (failed or error_budget_low or self._circuit_dirty or (bucket and self._bucket_news(reservation, status, headers))):
            return
        with self.engine.begin() as conn:
            if failed:
                self._circuit_failure(conn, key, f"HTTP {status}" if status else "no response (timeout or connection error)")
            elif self._circuit_dirty:
                conn.execute(text(f"DELETE FROM {SCHEMA}.api_latches WHERE latch = :l"), {"l": f"{key.api}/circuit"})
                self._circuit_dirty = False
            if error_budget_low:
                self._latch(conn, f"{key.api}/error-limit", (reset or 60.0) + 0.5,
                            f"ESI error budget low ({remain if remain is not None else 0} left), waiting for the window reset")
            if bucket is None:
                return
            if status == 429:
                retry_after = _float(headers.get("retry-after")) or 10.0
                self._latch(conn, bucket, retry_after + 0.5, f"429 Too Many Requests on {key.group}: Retry-After {retry_after:.0f}s")
            self._learn_bucket(conn, reservation, status, headers)

    def _bucket_news(self, reservation: Reservation, status: int | None, headers: Mapping[str, str]) -> bool:
        parsed = _parse_limit(headers.get("x-ratelimit-limit"))
        if status == 429 or (parsed and self._known_limits.get(reservation.key.bucket) != parsed):
            return True
        used, remaining = _int(headers.get("x-ratelimit-used")), _int(headers.get("x-ratelimit-remaining"))
        if used is not None and used != reservation.cost:
            return True
        # near the edge, reconcile with the server's count (other clients may share the bucket)
        return bool(parsed and remaining is not None and remaining < parsed[0] * 0.5)

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
        used = _int(headers.get("x-ratelimit-used"))
        actual = used if used is not None else (0 if status is None or status >= 500 or status == 429 else None)
        correction = (actual - reservation.cost) if actual is not None else 0
        remaining = _int(headers.get("x-ratelimit-remaining"))
        if remaining is not None and parsed:
            spent = conn.execute(text(f"SELECT coalesce(sum(cost), 0) FROM {SCHEMA}.api_spend WHERE bucket = :b"), {"b": bucket}).scalar_one()
            local_left = parsed[0] - (spent + correction)
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
            self._latch(conn, latch, self.policy.circuit_cooldown_s, f"{failures} consecutive failures, last: {what}", reset_failures=True)

    def _latch(self, conn: Connection, latch: str, seconds: float, reason: str, reset_failures: bool = False) -> None:
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
            return int(limit.capacity - spent)

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
