"""Header dialects and cost models: pure logic, no server (httpx.Headers as a response has them)."""

from __future__ import annotations

import httpx
import pytest

from sync_assets.core.limits import ESI_COSTS, PER_REQUEST, SlidingWindow, TokenBucket
from sync_assets.fetch.limits import AmznHeaders, EsiHeaders, IrisHeaders, Learned


def _response_headers(**headers: str) -> httpx.Headers:
    return httpx.Response(200, headers={k.replace("_", "-"): v for k, v in headers.items()}).headers


def test_esi_headers_state_the_window_the_spend_and_the_error_budget() -> None:
    learned = EsiHeaders().read(_response_headers(
        X_Ratelimit_Limit="150/15m", X_Ratelimit_Remaining="148", X_Ratelimit_Used="2",
        X_ESI_Error_Limit_Remain="97", X_ESI_Error_Limit_Reset="41"), None)
    assert learned == Learned(limit=SlidingWindow(150, 900.0), remaining=148, used=2, error_remain=97, error_reset_s=41.0)
    assert EsiHeaders().read({"x-ratelimit-limit": "12000/1h", "Retry-After": "37"}, None) == Learned(
        limit=SlidingWindow(12000, 3600.0), retry_after_s=37.0)


@pytest.mark.parametrize("headers", [{}, {"X-Ratelimit-Limit": "lots"}, {"X-Ratelimit-Limit": "0/15m"},
                                     {"X-Ratelimit-Used": "two", "Retry-After": "-3"}])
def test_absent_or_unreadable_headers_teach_nothing(headers: dict[str, str]) -> None:
    assert EsiHeaders().read(headers, SlidingWindow(150, 900)) == Learned()
    assert AmznHeaders().read({"x-amzn-RateLimit-Limit": "fast", **headers}, TokenBucket(0.5, 30)) == Learned()
    assert IrisHeaders().read({"X-RateLimit-Limit": "-1"}, SlidingWindow(500, 60)) == Learned()


def test_amzn_rate_header_corrects_the_rate_and_keeps_the_declared_burst() -> None:
    learned = AmznHeaders().read(_response_headers(x_amzn_RateLimit_Limit="0.5", x_amzn_RequestId="r"), TokenBucket(2.0, 30))
    assert learned == Learned(limit=TokenBucket(0.5, 30))
    # a bucket nobody declared has no burst to keep: the header alone cannot make a token bucket
    assert AmznHeaders().read({"x-amzn-RateLimit-Limit": "0.5"}, None) == Learned()


def test_iris_headers_state_capacity_per_the_declared_period_and_retry_after_resets_it() -> None:
    assert IrisHeaders().read({"X-RateLimit-Limit": "500", "X-RateLimit-Remaining": "12"}, None) == Learned(
        limit=SlidingWindow(500, 60.0), remaining=12)
    assert IrisHeaders().read({"x-ratelimit-limit": "300", "retry-after": "17"}, SlidingWindow(500, 120)) == Learned(
        limit=SlidingWindow(300, 120), retry_after_s=17.0, window_reset_s=17.0)


def test_cost_models() -> None:
    assert [ESI_COSTS.of(s) for s in (200, 304, 404, 420, 429, 503, None)] == [2, 1, 5, 5, 0, 0, 0]
    assert [PER_REQUEST.of(s) for s in (200, 304, 404, 429, 503, None)] == [1, 1, 1, 0, 1, 1]


def test_limits_are_validated_when_declared() -> None:
    with pytest.raises(ValueError, match="positive"):
        SlidingWindow(0, 900)
    with pytest.raises(ValueError, match="burst of at least 1"):
        TokenBucket(0.5, 0)
    assert TokenBucket(0.5, 30).interval_s == 2.0
