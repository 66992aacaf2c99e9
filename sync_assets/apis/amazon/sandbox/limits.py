"""Usage plans: one token bucket per (seller, operation), Amazon's published rate and burst, and the
per-operation request counters tests read.

A bucket starts full (``burst`` tokens), refills at ``rate`` tokens per second up to ``burst`` and
each request takes one; an empty bucket answers 429.  ``scale`` multiplies every rate (a test can
run searchOrders' one-per-three-minutes plan 600 times faster); ``overrides`` replace the plan of
named operations, e.g. lower than Amazon's to provoke throttling.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping

__all__ = ["RATE_TABLE", "STATIC_PLAN", "Plan", "RateLimiter", "format_rate"]


@dataclass(frozen=True)
class Plan:
    rate: float  # tokens per second
    burst: int


#: Default usage plans of the operations the dynamic sandbox serves (from each operation's
#: description in the vendored models; cancelReport's is not in the notes' table, only in the model).
RATE_TABLE: dict[str, Plan] = {
    "getInventorySummaries": Plan(2.0, 2),
    "listFinancialEventGroups": Plan(0.5, 30),
    "listTransactions": Plan(0.5, 10),
    "searchOrders": Plan(0.0056, 20),
    "createReport": Plan(0.0167, 15),
    "getReports": Plan(0.0222, 10),
    "getReport": Plan(2.0, 15),
    "cancelReport": Plan(0.0222, 10),
    "getReportDocument": Plan(0.0167, 15),
}
#: Amazon's sandbox endpoints throttle every operation at 5 requests/s with a burst of 15.
STATIC_PLAN = Plan(5.0, 15)
PEAK_WINDOW = 1.0  # seconds: the peak rate is the most requests seen in any window this long
KEPT_TIMES = 100_000  # request times kept per (seller, operation), the latest


def format_rate(rate: float) -> str:
    """``x-amzn-RateLimit-Limit``'s value: ``"2.0"``, ``"0.5"``, ``"0.0167"``."""
    text = f"{rate:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class OpCounters:
    requests: int = 0
    throttled: int = 0  # 429s
    peak: int = 0  # most requests in any PEAK_WINDOW
    statuses: dict[int, int] = field(default_factory=dict)
    recent: collections.deque = field(default_factory=collections.deque)  # times inside the peak window
    times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=KEPT_TIMES))  # tests compute their own rates

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "throttled": self.throttled,
            "peak_per_second": self.peak / PEAK_WINDOW,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


class RateLimiter:
    """Buckets and counters keyed by (seller id, operation id); thread-safe."""

    def __init__(self, clock: Callable[[], float], default_plan: Callable[[str], Plan]) -> None:
        self._clock = clock
        self._default_plan = default_plan
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.counters: dict[tuple[str, str], OpCounters] = {}
        self.enabled = True
        self.scale = 1.0
        self.overrides: dict[str, Plan] = {}

    def plan(self, op: str) -> Plan:
        base = self.overrides.get(op) or self._default_plan(op)
        return Plan(base.rate * self.scale, base.burst)

    def configure(self, *, enabled: bool, scale: float, overrides: Mapping[str, Plan]) -> None:
        with self._lock:
            self.enabled, self.scale, self.overrides = enabled, scale, dict(overrides)

    def admit(self, seller: str, op: str) -> bool:
        """Count the request and take a token; False means answer 429."""
        now = self._clock()
        with self._lock:
            c = self.counters.setdefault((seller, op), OpCounters())
            c.requests += 1
            c.times.append(now)
            c.recent.append(now)
            while c.recent and c.recent[0] <= now - PEAK_WINDOW:
                c.recent.popleft()
            c.peak = max(c.peak, len(c.recent))
            if not self.enabled or self._take(seller, op, now):
                return True
            c.throttled += 1
            return False

    def _take(self, seller: str, op: str, now: float) -> bool:
        plan = self.plan(op)
        bucket = self._buckets.get((seller, op))
        if bucket is None:
            bucket = self._buckets[(seller, op)] = _Bucket(float(plan.burst), now)
        bucket.tokens = min(float(plan.burst), bucket.tokens + max(0.0, now - bucket.updated) * plan.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def record_status(self, seller: str, op: str, status: int) -> None:
        with self._lock:
            c = self.counters.setdefault((seller, op), OpCounters())
            c.statuses[status] = c.statuses.get(status, 0) + 1

    def reset_buckets(self) -> None:
        with self._lock:
            self._buckets.clear()

    def reset_counters(self) -> None:
        with self._lock:
            self.counters.clear()

    def snapshot(self, with_times: bool = False) -> dict[tuple[str, str], OpCounters]:
        """A copy of the counters (request times only when asked: they can be many)."""
        with self._lock:
            return {
                k: OpCounters(v.requests, v.throttled, v.peak, dict(v.statuses), times=collections.deque(v.times if with_times else ()))
                for k, v in self.counters.items()
            }
