"""Header dialects: what a response's headers teach the shared budget, one class per API family.

The server's figures override the declared estimates; a header that is absent (or unparsable)
teaches nothing, so its absence never changes the budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Protocol

from ..core.limits import RateLimit, SlidingWindow, TokenBucket


@dataclass(frozen=True)
class Learned:
    """What one response says; None: it says nothing about that."""

    limit: RateLimit | None = None  # the bucket's size as the server states it
    remaining: int | None = None  # tokens left after this request
    used: int | None = None  # tokens this request cost
    retry_after_s: float | None = None
    window_reset_s: float | None = None  # a fixed window: the server's count starts again in this many seconds
    error_remain: int | None = None  # errors left in the API's error window (ESI)
    error_reset_s: float | None = None


class HeaderDialect(Protocol):
    def read(self, headers: Mapping[str, str], current: RateLimit | None) -> Learned:
        """`current`: the limit the budget works with (declared or learned), for dialects whose
        headers state only part of it (SP-API: the rate, not the burst; IRIS: not the period)."""
        ...


_ESI_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*([smh])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600}


class EsiHeaders:
    """ESI: `X-Ratelimit-Limit: 150/15m`, `-Remaining`, `-Used` (this request's cost),
    `Retry-After` on a 429; `X-ESI-Error-Limit-Remain/Reset` on error-limited routes."""

    def read(self, headers: Mapping[str, str], current: RateLimit | None) -> Learned:
        h = _lower(headers)
        match = _ESI_LIMIT.match(h.get("x-ratelimit-limit", ""))
        capacity, window = (int(match.group(1)), int(match.group(2)) * _UNITS[match.group(3)]) if match else (0, 0)
        return Learned(
            limit=SlidingWindow(capacity, float(window)) if capacity > 0 and window > 0 else None,
            remaining=_int(h.get("x-ratelimit-remaining")),
            used=_int(h.get("x-ratelimit-used")),
            retry_after_s=_seconds(h.get("retry-after")),
            error_remain=_int(h.get("x-esi-error-limit-remain")),
            error_reset_s=_seconds(h.get("x-esi-error-limit-reset")),
        )


class AmznHeaders:
    """SP-API: `x-amzn-RateLimit-Limit: 0.5` is the operation's rate in requests per second, sent
    "on a best-effort basis" on 20x/400/404 and never on a 429 or 403. It corrects the token
    bucket's rate; the burst stays the declared one. No remaining count, no Retry-After documented
    (read anyway, in case)."""

    def read(self, headers: Mapping[str, str], current: RateLimit | None) -> Learned:
        h = _lower(headers)
        rate = _float(h.get("x-amzn-ratelimit-limit"))
        limit = None
        if rate is not None and rate > 0 and isinstance(current, TokenBucket):
            limit = TokenBucket(rate, current.burst)
        return Learned(limit=limit, retry_after_s=_seconds(h.get("retry-after")))


class IrisHeaders:
    """IRIS CRM (Laravel's throttle): `X-RateLimit-Limit: 500` requests per period (a minute by
    default; the period itself is not sent), `X-RateLimit-Remaining`, `Retry-After` on a 429.
    Laravel counts in fixed windows; the budget keeps a sliding one (never more permissive), and
    takes Retry-After as the moment the server's count starts again."""

    def __init__(self, default_window_s: float = 60.0):
        self.default_window_s = default_window_s

    def read(self, headers: Mapping[str, str], current: RateLimit | None) -> Learned:
        h = _lower(headers)
        capacity = _int(h.get("x-ratelimit-limit"))
        window = current.window_s if isinstance(current, SlidingWindow) else self.default_window_s
        retry_after = _seconds(h.get("retry-after"))
        return Learned(
            limit=SlidingWindow(capacity, window) if capacity and capacity > 0 else None,
            remaining=_int(h.get("x-ratelimit-remaining")),
            retry_after_s=retry_after,
            window_reset_s=retry_after,  # Laravel's window is fixed: Retry-After is when it starts again
        )


def _lower(headers: Mapping[str, str]) -> Mapping[str, str]:
    # httpx.Headers is already case-insensitive; plain dicts (tests, proxies) may not be
    return headers if hasattr(headers, "multi_items") else {k.lower(): v for k, v in headers.items()}


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _seconds(value: str | None) -> float | None:
    """A delay in seconds (Retry-After as an HTTP date is not used by these APIs: ignored)."""
    seconds = _float(value)
    return seconds if seconds is not None and seconds >= 0 else None
