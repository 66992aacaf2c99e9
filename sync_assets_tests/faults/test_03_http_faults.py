"""Fault 3: 5xx storms, HTML error bodies, truncated/malformed JSON, connections cut mid-body,
responses slower than the timeout, and wrong-typed payloads.

Invariants 2 and 4: every run ends with exactly the new snapshot in the table, or fails with a
message naming the cause and leaves table and validators as they were. Retries are visible in
the run log: one warning line per retry, naming what went wrong.

5xx storms and HTML 502 pages come from the sandbox (knobs error_rate / error_seed); the other
faults from a fault proxy (sync_assets_tests/faults/proxy.py) between the client and the sandbox.
"""

from __future__ import annotations

from typing import Any

import pytest

from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread

from .conftest import FaultReport
from .helpers import (
    FORGE, Observer, Runner, expected_orders, expire, failure_text, frame_diff, materialization_metadata, retry_lines,
    rng_for, scaled, state_row, table_digest,
)
from .proxy import CUT, HTML_200, SLOW, TRUNCATE, WRONG_TYPE, FaultProxy, Req

PAGES = 20
KEY = ["region_id", "order_id"]
NO_ERROR_LIMIT = 1_000_000  # fault 5 covers the error limit; here it must not interfere


class Storm:
    """A sandbox (optionally behind the fault proxy), a database holding an old snapshot, a runner."""

    def __init__(self, sandbox: EsiSandbox, url: str, db_url: str, **esi: Any):
        self.sandbox, self.url = sandbox, url
        self.runner = Runner(url, db_url, **esi)
        self.observer = Observer(db_url)
        clean = Runner(url, db_url)
        knobs = sandbox.config
        sandbox.configure(error_rate=0.0)
        assert clean.sync().success, "the old snapshot did not load"
        sandbox.configure(error_rate=knobs.error_rate, error_seed=knobs.error_seed)
        sandbox.refresh("orders", int(FORGE))
        expire(self.observer.conn)
        self.old = (table_digest(self.observer.conn), state_row(self.observer.conn))
        self.new = expected_orders(sandbox)
        sandbox.reset_counters()

    def check(self, result: Any) -> str:
        """'exact' or 'failed'; asserts the invariant either way."""
        digest, state = table_digest(self.observer.conn), state_row(self.observer.conn)
        if result.success:
            assert frame_diff(self.runner.table(), self.new, KEY) is None, "a successful run left something else than the snapshot"
            return "exact"
        assert (digest, state) == self.old, "a failed run changed the table or its validators"
        return "failed"

    def close(self) -> None:
        self.observer.close()


@pytest.fixture
def storm_db(fault_databases: Any) -> str:
    return fault_databases("storm")


RATES = [0.2, 0.35, 0.5]


@pytest.mark.parametrize("rate", RATES)
def test_5xx_storms_give_exact_data_or_a_clear_failure_with_every_retry_logged(
    rate: float, fault_databases: Any, fault_report: FaultReport,
) -> None:
    entry = fault_report.entry(
        "3", "5xx storms, HTML error pages, broken bodies, slow responses", invariant="2, 4", main="run",
        injection="Sandbox knobs `error_rate` 20/35/50% (502/503/504, 3 in 10 as HTML pages);",
    )
    entry.tests.append(f"test_03_http_faults.py::test_5xx_storms_give_exact_data_or_a_clear_failure_with_every_retry_logged[{rate}]")
    for seed in range(scaled(1)):
        sandbox = EsiSandbox(regions={int(FORGE): PAGES}, n_price_types=10, corporations={}, error_rate=rate,
                             error_seed=seed + 1, error_limit=NO_ERROR_LIMIT)
        with serve_in_thread(sandbox) as url:
            storm = Storm(sandbox, url, fault_databases("storm"), max_attempts=5)  # the product's default attempts
            result = storm.runner.sync()
            outcome = storm.check(result)
            lines = retry_lines(storm.runner.messages(result))
            served_5xx = sandbox.counter("orders")["status_5xx"]
            assert served_5xx > 0
            if outcome == "exact":
                meta = materialization_metadata(result)
                assert meta["retries"] == served_5xx == len(lines), (meta["retries"], served_5xx, len(lines))
            else:
                message = failure_text(result)
                assert "HTTP 50" in message or "circuit is open" in message, message[:2000]
                assert len(lines) >= 1
                entry.notes.append(f"{int(rate * 100)}% 5xx, seed {seed + 1}: `{_cause(message)}`")
            assert all("HTTP 50" in line for line in lines), [l for l in lines if "HTTP 50" not in l][:3]
            html = [line for line in lines if "HTML error page: 502 Bad Gateway" in line]
            assert html or served_5xx < 4, "HTML 502 pages are not described in the log"
            entry.tally(f"run in a {int(rate * 100)}% 5xx storm ({PAGES} pages)").add(
                "exact snapshot" if outcome == "exact" else "clear failure, table and validators unchanged")
            entry.tally("retries logged (one warning line each)").add("5xx, HTML 502 pages", len(lines))
            storm.close()


BROKEN = [TRUNCATE, CUT, SLOW, HTML_200]


def test_truncated_cut_slow_and_html_bodies_are_retried_to_the_exact_snapshot(
    fault_databases: Any, fault_report: FaultReport,
) -> None:
    entry = fault_report.entry(
        "3", "5xx storms, HTML error pages, broken bodies, slow responses",
        injection="a fault proxy truncating JSON bodies, cutting connections mid-body, answering after the read timeout, "
                  "and serving HTML pages with status 200 (8% of requests each), on top of 10% sandbox 5xx.",
    )
    entry.tests.append("test_03_http_faults.py::test_truncated_cut_slow_and_html_bodies_are_retried_to_the_exact_snapshot")
    for run in range(scaled(1)):
        rng = rng_for(f"broken-{run}")
        sandbox = EsiSandbox(regions={int(FORGE): PAGES}, n_price_types=10, corporations={}, error_rate=0.1,
                             error_seed=run + 7, error_limit=NO_ERROR_LIMIT)
        with serve_in_thread(sandbox) as upstream:
            state = {"on": False}

            def choose(req: Req) -> str | None:
                if not state["on"] or "/orders" not in req.path:
                    return None
                draw = rng.random()
                return BROKEN[int(draw / 0.08)] if draw < 0.08 * len(BROKEN) else None

            proxy = FaultProxy(upstream, choose, slow_s=1.2)
            with serve_in_thread(proxy, log_level="critical") as url:
                storm = Storm(sandbox, url, fault_databases("broken"), read_timeout_s=0.5, max_attempts=8)
                state["on"] = True
                result = storm.runner.sync()
                state["on"] = False
                outcome = storm.check(result)
                lines = retry_lines(storm.runner.messages(result))
                injected = proxy.count(*BROKEN) + sandbox.counter("orders")["status_5xx"]
                if outcome == "exact":
                    assert materialization_metadata(result)["retries"] == len(lines) == injected, (len(lines), injected)
                else:
                    entry.notes.append(f"broken bodies run {run}: `{_cause(failure_text(result))}`")
                    assert "circuit is open" in failure_text(result), failure_text(result)[:2000]
                described = {
                    TRUNCATE: "body is not valid JSON", HTML_200: "body is not valid JSON",
                    SLOW: "timeout (ReadTimeout)", CUT: "RemoteProtocolError",
                }
                for kind in BROKEN:
                    if proxy.injected[kind]:
                        assert any(described[kind] in line for line in lines), f"{kind} not visible in the run log"
                for kind in BROKEN:
                    entry.tally("broken responses injected (all retried)").add(kind, proxy.injected[kind])
                entry.tally("run with broken bodies + 10% 5xx").add(
                    "exact snapshot" if outcome == "exact" else "clear failure, table and validators unchanged")
                storm.close()


def test_a_wrong_typed_field_fails_the_run_naming_field_and_page_and_writes_nothing(
    storm_db: str, fault_report: FaultReport,
) -> None:
    entry = fault_report.entry(
        "3", "5xx storms, HTML error pages, broken bodies, slow responses",
        injection="a wrong-typed field (a number sent as a string) on one page, every time it is asked.",
    )
    entry.tests.append("test_03_http_faults.py::test_a_wrong_typed_field_fails_the_run_naming_field_and_page_and_writes_nothing")
    sandbox = EsiSandbox(regions={int(FORGE): PAGES}, n_price_types=10, corporations={})
    with serve_in_thread(sandbox) as upstream:
        state = {"on": False}
        proxy = FaultProxy(upstream, lambda req: WRONG_TYPE if state["on"] and req.page == 7 and "/orders" in req.path else None)
        with serve_in_thread(proxy, log_level="critical") as url:
            storm = Storm(sandbox, url, storm_db)
            state["on"] = True
            result = storm.runner.sync()
            assert storm.check(result) == "failed"
            message = failure_text(result)
            assert "page 7" in message and "is not" in message, message[:2000]
            entry.tally("run with a wrong-typed payload").add("clear failure naming field and page, nothing written")
            entry.notes.append(f"wrong-typed field: `{_cause(message)}`")
            storm.close()


def _cause(message: str) -> str:
    lines = [line for line in message.splitlines() if line.strip() and not line.startswith(("\t", " ", "dagster._core"))]
    return lines[-1][:240] if lines else ""
