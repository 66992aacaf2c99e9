"""A transient storm costs time, not the walk: a page that failed all its attempts is tried again
after the rest of the walk (same snapshot), within the walk's deadline and ESI's error budget.

Before the retry budget was per walk, each page had its own few attempts and the walk failed on
the first unlucky page: at 30% 5xx a 300-page walk with 5 attempts per page fails about half the
time (1 - (1 - 0.3^5)^300), and with 2 attempts per page it fails every time.
"""

from __future__ import annotations

from typing import Any

import pytest

from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread

from .conftest import FaultReport
from .helpers import FORGE, Runner, expected_orders, failure_text, frame_diff, materialization_metadata, retry_lines

pytestmark = pytest.mark.slow  # over a minute on 2 cores: scheduled first (conftest)

PAGES = 300
KEY = ["region_id", "order_id"]


def _entry(fault_report: FaultReport, test: str, injection: str):
    entry = fault_report.entry("10", "The walk's retry budget: a 5xx storm over 300 pages, a storm past the deadline, only errors",
                               invariant="2, 4, 5", injection=injection, main="run")
    entry.tests.append(f"test_10_walk_retry_budget.py::{test}")
    return entry


@pytest.mark.parametrize("error_headers", ["everywhere", "as_documented"])
def test_a_30_percent_5xx_storm_over_300_pages_completes_with_exact_data_and_no_420(error_headers: str, fault_databases: Any,
                                                                                   fault_report: FaultReport) -> None:
    entry = _entry(fault_report, f"test_a_30_percent_5xx_storm_over_300_pages_completes_with_exact_data_and_no_420[{error_headers}]",
                   "Sandbox knob `error_rate` 30% (502/503/504) on a 300-page region, ESI's error limit on (100 per 20 s), "
                   "2 attempts per request; the error-limit headers on every route, or only where ESI documents them;")
    # 30% of requests answer 502/503/504 (3 in 10 of them HTML pages); ESI's error limit is on
    # (100 errors per 20 s window): the walk must pace itself on it, never earn a 420. As ESI
    # documents it, a bucket-limited route (market orders) sends X-Ratelimit-* and not the error-limit
    # headers: the budget then counts its own errors against the declared limit.
    sandbox = EsiSandbox(regions={int(FORGE): PAGES}, orders_per_page=40, n_price_types=10, corporations={},
                         error_rate=0.3, error_seed=11, error_limit=100, error_limit_window=20,
                         error_limit_headers_everywhere=error_headers == "everywhere")
    with serve_in_thread(sandbox) as url:
        # two attempts per request: about 9% of the pages fail both, in every round
        runner = Runner(url, fault_databases("retry_budget"), max_attempts=2, retry_round_pause_s=0.2)
        result = runner.sync()
        assert result.success, failure_text(result)[:3000]
        assert frame_diff(runner.table(), expected_orders(sandbox), KEY) is None
        orders = sandbox.counter("orders")
        assert orders["status_420"] == 0
        assert orders["status_5xx"] > 0
        meta = materialization_metadata(result)
        assert meta["pages"] == PAGES and meta["retries"] >= orders["status_5xx"] - PAGES  # every 5xx retried
        rounds = [m for m in runner.messages(result) if "failed every attempt" in m]
        assert rounds, "no page needed a later round: the storm did not test the walk's retry budget"
        assert retry_lines(runner.messages(result))
    entry.tally(f"run in a 30% 5xx storm over {PAGES} pages").add(f"exact data, 0 x 420 (error-limit headers {error_headers})")
    entry.tally("5xx served in the storms (all retried)").add(f"error-limit headers {error_headers}", orders["status_5xx"])
    entry.tally("pages that failed both attempts and were asked again in a later round").add(
        f"error-limit headers {error_headers}", len(rounds))


def test_a_storm_that_outlasts_the_walk_deadline_fails_saying_so_and_writes_nothing(fault_databases: Any,
                                                                                   fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_a_storm_that_outlasts_the_walk_deadline_fails_saying_so_and_writes_nothing",
                   "50% 5xx with a walk deadline already spent;")
    sandbox = EsiSandbox(regions={int(FORGE): 20}, orders_per_page=40, n_price_types=10, corporations={},
                         error_rate=0.5, error_seed=3, error_limit=1_000_000)
    with serve_in_thread(sandbox) as url:
        # a deadline already spent when the first page fails every attempt
        runner = Runner(url, fault_databases("retry_deadline"), max_attempts=1, walk_deadline_s=0.001, retry_round_pause_s=0.3)
        result = runner.sync()
        assert not result.success
        message = failure_text(result)
        assert "RetriesExhausted" in message and "walk deadline of 0s spent" in message and "HTTP 50" in message, message[:2000]
        assert runner.table().empty
    entry.tally("run in a storm that outlasts the walk deadline").add("failed naming the deadline, nothing written")


def test_an_api_that_answers_only_errors_fails_the_walk_after_a_few_idle_rounds(fault_databases: Any,
                                                                                fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_an_api_that_answers_only_errors_fails_the_walk_after_a_few_idle_rounds",
                   "100% 5xx.")
    sandbox = EsiSandbox(regions={int(FORGE): 20}, orders_per_page=40, n_price_types=10, corporations={},
                         error_rate=1.0, error_seed=3, error_limit=1_000_000)
    with serve_in_thread(sandbox) as url:
        runner = Runner(url, fault_databases("retry_idle"), max_attempts=2, retry_round_pause_s=0.1)
        result = runner.sync()
        assert not result.success
        message = failure_text(result)
        assert "RetriesExhausted" in message and "no page succeeded in 3 rounds" in message, message[:2000]
        assert sandbox.counter("orders")["requests"] == 3 * 2  # page 1: 3 rounds of 2 attempts; nothing else was asked
        assert runner.table().empty
    entry.tally("run against an API answering only errors").add("failed after 3 idle rounds (6 requests), nothing written")
