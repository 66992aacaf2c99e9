"""Declared rate limits and what requests cost: pure declarations, no I/O.

An API's spec declares its limits (ESI: the OpenAPI `x-rate-limit` group; SP-API: rate and burst
per operation; IRIS: 500 per minute). The shared budget (`fetch/budget.py`) starts from them and
lets the server's headers correct them; a server that sends no limit headers is served at the
declared rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class SlidingWindow:
    """At most `capacity` tokens spent in any `window_s` seconds; a spent token comes back
    `window_s` after the request that spent it (ESI groups: max-tokens per 15 m; IRIS: 500 per 60 s)."""

    capacity: int
    window_s: float

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.window_s <= 0:
            raise ValueError(f"a sliding window needs a positive capacity and window, got {self}")


@dataclass(frozen=True)
class TokenBucket:
    """Tokens refill at `rate` per second up to `burst`; a request takes its cost in tokens
    (SP-API usage plans)."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"a token bucket needs a positive rate and a burst of at least 1, got {self}")

    @property
    def interval_s(self) -> float:
        """Seconds one token takes to come back (GCRA's emission interval)."""
        return 1.0 / self.rate


RateLimit = Union[SlidingWindow, TokenBucket]


@dataclass(frozen=True)
class CostModel:
    """Tokens a request costs, by the response's status. `ok` is charged before the request (the
    expected case) and corrected once the status (or the server's own figure) is known."""

    ok: int = 1  # 2xx
    not_modified: int = 1  # 3xx
    client_error: int = 1  # 4xx other than 429
    throttled: int = 0  # 429: refused before it was counted
    server_error: int = 1  # 5xx
    no_response: int = 1  # timeout or connection error: it may have reached the server

    def of(self, status: int | None) -> int:
        if status is None:
            return self.no_response
        if status == 429:
            return self.throttled
        if status >= 500:
            return self.server_error
        if status >= 400:
            return self.client_error
        if status >= 300:
            return self.not_modified
        return self.ok


# ESI's bucket costs (developers.eveonline.com rate-limiting: 2xx 2, 3xx 1, 4xx 5, 5xx 0; a 429
# costs nothing). A timeout is not a 4xx: charged like a 5xx.
ESI_COSTS = CostModel(ok=2, not_modified=1, client_error=5, throttled=0, server_error=0, no_response=0)
# One token per request that the server counted (SP-API token buckets, IRIS/Laravel throttle).
PER_REQUEST = CostModel()
