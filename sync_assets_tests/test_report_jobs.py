"""Report jobs (fetch/jobs.py) against the SP-API simulator over real HTTP and a real PostgreSQL:
create -> poll -> download, persisted in sync_assets.report_jobs so that a crash or a deadline
resumes the same report; reuse of the API's own matching reports; DONE (plain and gzip), CANCELLED,
FATAL, an expired download URL; and the tolerant TSV parsing of report documents (fetch/tsv.py).

Time: the simulator's report states follow its clock. The runners here sleep by moving that
clock (and a monotonic clock of their own), so a report that takes minutes takes milliseconds.
"""

from __future__ import annotations

import gzip
import threading
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Iterator

import httpx
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from sync_assets.apis.amazon.sandbox import LEDGER, LEDGER_COLUMNS, REIMBURSEMENT_COLUMNS, REIMBURSEMENTS, AmazonSandbox
from sync_assets.apis.amazon.sandbox.reports import FATAL_DETAILS
from sync_assets.apis.sandbox_serving import serve_in_thread
from sync_assets.core.datasets import Column, ColumnType
from sync_assets.core.errors import MalformedPayload, TransientHttpError
from sync_assets.core.limits import PER_REQUEST, TokenBucket
from sync_assets.fetch.budget import BudgetPolicy, PostgresBudget
from sync_assets.fetch.errors import ErrorClassifier
from sync_assets.fetch.http import ApiHttpClient, RetryPolicy
from sync_assets.fetch.jobs import (
    JOBS_TABLE,
    JobState,
    PollPolicy,
    ReportFatal,
    ReportJobs,
    ReportJobStore,
    ReportPending,
    ReportRequest,
    SpApiReports,
)
from sync_assets.fetch.limits import AmznHeaders
from sync_assets.fetch.tsv import decode_document, parse_date, parse_decimal, parse_timestamp, read_tsv, tsv_rows

US = "ATVPDKIKX0DER"
DATASET = "amazon.reimbursements"

T, S, D, I = ColumnType.TIMESTAMP, ColumnType.STRING, ColumnType.DECIMAL, ColumnType.INT64
REIMBURSEMENT_TABLE = (
    Column("approval_date", T, source="approval-date"),
    Column("reimbursement_id", S),  # matched by name: reimbursement-id
    Column("case_id", S, required=False),
    Column("amazon_order_id", S, required=False),
    Column("reason", S),
    Column("sku", S),
    Column("fnsku", S),
    Column("asin", S),
    Column("product_name", S),
    Column("condition", S, required=False),
    Column("currency_unit", S),
    Column("amount_per_unit", D),
    Column("amount_total", D),
    Column("quantity_reimbursed_cash", I),
    Column("quantity_reimbursed_inventory", I),
    Column("quantity_reimbursed_total", I),
    Column("original_reimbursement_id", S, required=False),
    Column("original_reimbursement_type", S, required=False),
)


# --------------------------------------------------------------------------------------
# The simulator, served with a recorder in front of its document host
# --------------------------------------------------------------------------------------


class Front:
    """ASGI in front of the simulator: records the headers of every document download and can
    make the next downloads arrive after their URL expired (the clock jumps 301 s first)."""

    def __init__(self, sandbox: AmazonSandbox):
        self.sandbox = sandbox
        self.document_headers: list[dict[str, str]] = []
        self.late_downloads = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/_documents/"):
            self.document_headers.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
            if self.late_downloads:
                self.late_downloads -= 1
                self.sandbox.advance(301)
        await self.sandbox.app(scope, receive, send)


class FakeTime:
    """The runner's monotonic clock and sleep: sleeping moves the simulator's clock."""

    def __init__(self, sandbox: AmazonSandbox, crash_after: int | None = None):
        self.sandbox, self.now, self.sleeps, self.crash_after = sandbox, 0.0, [], crash_after

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if self.crash_after is not None and len(self.sleeps) >= self.crash_after:
            raise Crash("the process died while waiting for the report")
        self.sleeps.append(seconds)
        self.now += seconds
        self.sandbox.advance(seconds)


class Crash(BaseException):
    """A process dying: nothing of ours catches it (BaseException, like SystemExit)."""


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)

    warning = info


class Env:
    def __init__(self, sandbox: AmazonSandbox, front: Front, url: str, database_url: str):
        self.sandbox, self.front, self.url, self.database_url = sandbox, front, url, database_url
        self.seller = sandbox.seller_ids[0]
        self._closers: list[Any] = []

    def token(self) -> str:
        sb = self.sandbox
        form = {"grant_type": "refresh_token", "refresh_token": sb.refresh_tokens[self.seller],
                "client_id": sb.client_id, "client_secret": sb.client_secret}
        answer = httpx.post(f"{self.url}/auth/o2/token", data=form)
        assert answer.status_code == 200, answer.text
        return answer.json()["access_token"]

    def process(self, time: FakeTime | None = None, log: Lines | None = None, reports_class: type[SpApiReports] = SpApiReports,
                **options: Any) -> tuple[ReportJobs, SpApiReports, FakeTime, Lines]:
        """What one process builds: its own engine, HTTP client, shared budget, credential and runner."""
        engine = create_engine(self.database_url, pool_size=2, max_overflow=4)
        budget = PostgresBudget(engine, BudgetPolicy(error_limit=False, headers=AmznHeaders(), cost=PER_REQUEST))
        http = ApiHttpClient(self.url, {"User-Agent": "report-jobs-test"}, httpx.Timeout(10.0), 4,
                             RetryPolicy(max_attempts=3, initial_wait_s=0.01, max_wait_s=0.05),
                             budget=budget, classifier=ErrorClassifier())
        time = time or FakeTime(self.sandbox)
        log = log or Lines()
        reports = reports_class(http, {"x-amz-access-token": self.token()}, principal=self.seller, log=log, sleep=time.sleep)
        poll = options.pop("poll", PollPolicy(initial_s=1.0, factor=1.5, max_s=30.0, deadline_s=600.0))
        runner = ReportJobs(reports, engine, poll=poll, log=log, clock=time.clock, sleep=time.sleep,
                            utcnow=self.sandbox.now_datetime, **options)
        self._closers += [reports.close, http.close, engine.dispose]
        return runner, reports, time, log

    def request(self, report_type: str = REIMBURSEMENTS, days: int = 400, **kw: Any) -> ReportRequest:
        now = self.sandbox.now_datetime()
        return ReportRequest(DATASET, self.seller, report_type, now - timedelta(days=days), now - timedelta(minutes=5), (US,), **kw)

    def expected(self, request: ReportRequest) -> list[dict[str, str]]:
        rows = (self.sandbox.world.reimbursement_rows if request.report_type == REIMBURSEMENTS else self.sandbox.world.ledger_rows)(
            self.seller, request.start, request.end)
        assert rows, "the window must hold rows"
        return rows

    def creates(self, report_type: str = REIMBURSEMENTS) -> int:
        return sum(self.sandbox.create_report_calls(self.seller, report_type).values())

    def jobs(self) -> list[Any]:
        engine = create_engine(self.database_url)
        try:
            return ReportJobStore(engine).jobs(DATASET)
        finally:
            engine.dispose()

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


@pytest.fixture
def env(database_url: str) -> Iterator[Env]:
    sandbox = AmazonSandbox(seed=11, scale="tiny", report_queue_seconds=1, report_processing_seconds=2, access_token_ttl=86400)
    front = Front(sandbox)
    with serve_in_thread(front) as url:
        e = Env(sandbox, front, url, database_url)
        try:
            yield e
        finally:
            e.close()


# --------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("report_type,gzipped", [(REIMBURSEMENTS, False), (REIMBURSEMENTS, True), (LEDGER, True)],
                         ids=["reimbursements-plain", "reimbursements-gzip", "ledger-quoted-gzip"])
def test_done_document_equals_the_simulators_rows(env: Env, report_type: str, gzipped: bool) -> None:
    env.sandbox.configure(gzip_report_types=[report_type] if gzipped else [])
    runner, reports, time, log = env.process()
    request = env.request(report_type)

    result = runner.run(request)

    assert result.state is JobState.DONE and not result.no_data
    assert result.document is not None and result.document.compression == ("GZIP" if gzipped else None)
    if gzipped:
        assert result.document.content[:2] == b"\x1f\x8b"  # downloaded as stored; gunzipped on reading
    header, records = read_tsv(result.text())
    assert tuple(header) == (REIMBURSEMENT_COLUMNS if report_type == REIMBURSEMENTS else LEDGER_COLUMNS)
    assert records == result.records() == env.expected(request)
    assert env.creates(report_type) == 1
    # the pre-signed URL was fetched without the SP-API credential (nor any other)
    assert env.front.document_headers and all(
        "x-amz-access-token" not in h and "authorization" not in h for h in env.front.document_headers)
    # progress: each check logged with its state and the time waited; waits grew, never below getReport's rate
    assert any("IN_QUEUE, waited 0s" in line for line in log.lines), log.lines
    assert any("DONE after" in line for line in log.lines)
    assert time.sleeps and time.sleeps == sorted(time.sleeps) and min(time.sleeps) >= 1 / 2.0
    [job] = env.jobs()
    assert (job.state, job.report_id, job.attempts, job.last_error) == (JobState.DONE, result.job.report_id, 1, None)
    assert job.finished_at is not None and job.document_id == result.document.document_id
    assert job.marketplace_ids == (US,) and job.window_start == request.start and job.window_end == request.end


def test_done_reimbursements_to_a_typed_frame(env: Env) -> None:
    runner, *_ = env.process()
    request = env.request()
    frame = runner.run(request).frame(REIMBURSEMENT_TABLE)
    expected = env.expected(request)
    assert len(frame) == len(expected)
    assert str(frame["approval_date"].dtype) == "datetime64[us, UTC]"
    for row, want in zip(frame.to_dict("records"), expected):
        assert row["approval_date"] == pd.Timestamp(datetime.fromisoformat(want["approval-date"]))
        assert row["reimbursement_id"] == want["reimbursement-id"] and row["product_name"] == want["product-name"]
        assert Decimal(row["amount_total"]) == Decimal(want["amount-total"])
        assert row["amount_per_unit"] == want["amount-per-unit"]  # plain decimal text, as written
        assert row["quantity_reimbursed_total"] == int(want["quantity-reimbursed-total"])
        assert pd.isna(row["case_id"]) == (want["case-id"] == "")


def test_cancelled_is_no_data_not_an_error(env: Env) -> None:
    env.sandbox.force_report_outcome("CANCELLED")
    runner, *_ = env.process()
    result = runner.run(env.request())
    assert result.state is JobState.CANCELLED and result.no_data and result.document is None
    assert result.records() == [] and result.frame(REIMBURSEMENT_TABLE).empty
    assert list(result.frame(REIMBURSEMENT_TABLE).columns) == [c.name for c in REIMBURSEMENT_TABLE]
    assert env.sandbox.requests(env.seller, "getReportDocument") == 0
    [job] = env.jobs()
    assert job.state is JobState.CANCELLED and job.finished_at is not None


def test_fatal_raises_with_the_error_document_and_is_not_resumed(env: Env) -> None:
    env.sandbox.force_report_outcome("FATAL", report_type=REIMBURSEMENTS)
    runner, _, _, log = env.process()
    token = env.token()
    request = env.request()
    with pytest.raises(ReportFatal) as caught:
        runner.run(request)
    message = str(caught.value)
    assert FATAL_DETAILS in message and "FATAL" in message and caught.value.details == FATAL_DETAILS
    assert "X-Amz-Signature" not in message and "Atza|" not in message and token not in message
    assert not any("X-Amz-Signature" in line or "Atza|" in line for line in log.lines)
    [job] = env.jobs()
    assert job.state is JobState.FATAL and job.finished_at is not None and FATAL_DETAILS in (job.last_error or "")
    # a failed report is never resumed nor reused: the next run requests a new one
    result = runner.run(request)
    assert result.state is JobState.DONE and result.job.report_id != job.report_id
    assert env.creates() == 2 and len(env.jobs()) == 2


def test_expired_download_url_is_fetched_anew_once(env: Env) -> None:
    env.front.late_downloads = 1  # the first URL has expired by the time it is used
    runner, reports, *_ = env.process()
    request = env.request()
    result = runner.run(request)
    assert result.records() == env.expected(request)
    documents = env.sandbox.counters()["documents"]
    assert (documents["expired"], documents["downloads"], reports.url_refetches) == (1, 1, 1)
    assert env.sandbox.requests(env.seller, "getReportDocument") == 2

    env.front.late_downloads = 2  # expired again: refetched once, then a clear error, the job kept open
    request2 = env.request(days=300)
    with pytest.raises(TransientHttpError, match="expired twice") as caught:
        runner.run(request2)
    assert "X-Amz" not in str(caught.value)
    assert env.sandbox.counters()["documents"]["expired"] == 3
    job = next(j for j in env.jobs() if j.window_start == request2.start)
    assert job.finished_at is None and job.state is JobState.DONE and "expired twice" in (job.last_error or "")
    # the next run only downloads it (the report is not requested again)
    assert runner.run(request2).records() == env.expected(request2)
    assert env.creates() == 2


# --------------------------------------------------------------------------------------
# Resume, reuse, deadline
# --------------------------------------------------------------------------------------


def test_a_crash_mid_poll_resumes_the_same_report(env: Env) -> None:
    request = env.request()
    first, *_ = env.process(time=FakeTime(env.sandbox, crash_after=1))  # dies in its second wait
    with pytest.raises(Crash):
        first.run(request)
    [job] = env.jobs()
    assert job.finished_at is None and job.report_id and job.state in (JobState.IN_QUEUE, JobState.IN_PROGRESS)

    second, _, _, log = env.process()  # the next run: another process, nothing shared but the database
    result = second.run(request)
    assert result.job.report_id == job.report_id and result.job.id == job.id
    assert env.creates() == 1
    assert result.records() == env.expected(request)
    [done] = env.jobs()
    assert done.attempts == 2 and done.state is JobState.DONE and done.finished_at is not None
    assert any(f"resuming report {job.report_id}" in line for line in log.lines)


def test_a_crash_after_the_request_reached_amazon_finds_that_report(env: Env) -> None:
    class DiesAfterCreating(SpApiReports):
        def create(self, request: ReportRequest) -> str:
            super().create(request)
            raise Crash("the process died before it stored the report id")

    request = env.request()
    first, *_ = env.process(reports_class=DiesAfterCreating)
    with pytest.raises(Crash):
        first.run(request)
    [job] = env.jobs()
    assert job.state is JobState.PENDING and job.report_id is None and job.finished_at is None

    # even with reuse of the API's reports switched off, a PENDING job looks for its own report first
    second, *_ = env.process(reuse_max_age_s=0)
    result = second.run(request)
    assert env.creates() == 1 and result.job.id == job.id and result.job.report_id
    assert result.records() == env.expected(request)


def test_an_existing_matching_report_is_reused(env: Env) -> None:
    request = env.request()
    headers = {"x-amz-access-token": env.token()}
    spec = {"reportType": REIMBURSEMENTS, "marketplaceIds": [US], "dataStartTime": request.start.strftime("%Y-%m-%dT%H:%M:%SZ")}
    with httpx.Client(base_url=env.url, headers=headers) as client:
        other = client.post("/reports/2021-06-30/reports", json={**spec, "dataEndTime": (request.end - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")})
        same = client.post("/reports/2021-06-30/reports", json={**spec, "dataEndTime": request.end.strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert other.status_code == same.status_code == 202
    runner, _, _, log = env.process()
    result = runner.run(request)
    assert result.job.report_id == same.json()["reportId"] != other.json()["reportId"]
    assert env.creates() == 2  # only the two above
    assert result.records() == env.expected(request)
    assert any("reusing the API's report" in line for line in log.lines)

    # switched off: a new report is requested
    fresh, *_ = env.process(reuse_max_age_s=0)
    assert fresh.run(request).job.report_id not in (same.json()["reportId"], other.json()["reportId"])
    assert env.creates() == 3


def test_the_deadline_keeps_the_job_and_the_next_run_resumes_it(env: Env) -> None:
    env.sandbox.configure(report_processing_seconds=3600)
    request = env.request()
    runner, _, time, log = env.process(poll=PollPolicy(initial_s=2.0, factor=2.0, max_s=30.0, deadline_s=60.0))
    with pytest.raises(ReportPending) as caught:
        runner.run(request)
    assert "still IN_PROGRESS" in str(caught.value) and "the next run resumes it" in str(caught.value)
    assert sum(time.sleeps) <= 60 and time.sleeps[:4] == [2.0, 4.0, 8.0, 16.0]
    assert any("IN_PROGRESS, waited 14s; next check in 16s" in line for line in log.lines), log.lines
    [job] = env.jobs()
    assert job.finished_at is None and "still IN_PROGRESS" in (job.last_error or "")

    env.sandbox.advance(3600)
    later, *_ = env.process()
    result = later.run(request)
    assert result.job.report_id == job.report_id and env.creates() == 1
    assert result.records() == env.expected(request)
    [done] = env.jobs()
    assert done.last_error is None and done.attempts == 2


def test_concurrent_runs_of_one_window_request_one_report(env: Env) -> None:
    request = env.request()
    runners = [env.process()[0] for _ in range(3)]
    results: list[Any] = [None] * 3

    def run(i: int) -> None:
        results[i] = runners[i].run(request)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None for r in results)
    assert env.creates() == 1 and len({r.job.report_id for r in results}) == 1


def test_requests_spend_the_shared_budget_at_the_declared_rates(env: Env) -> None:
    runner, reports, *_ = env.process()
    runner.run(env.request())
    assert reports.budget_key("getReport").declared == TokenBucket(2.0, 15)
    engine = create_engine(env.database_url)
    try:
        with engine.connect() as conn:
            buckets = {r.bucket: (r.rate, r.burst) for r in conn.execute(text("SELECT bucket, rate, burst FROM sync_assets.api_token_buckets"))}
            columns = {r[0] for r in conn.execute(text(
                "SELECT column_name FROM information_schema.columns WHERE table_schema || '.' || table_name = :t"), {"t": JOBS_TABLE})}
    finally:
        engine.dispose()
    seller = env.seller
    assert buckets[f"amazon/getReport/{seller}"] == (2.0, 15)
    assert buckets[f"amazon/createReport/{seller}"] == (0.0167, 15)
    assert buckets[f"amazon/getReportDocument/{seller}"] == (0.0167, 15)
    assert buckets[f"amazon/getReports/{seller}"] == (0.0222, 10)
    assert {"dataset", "scope", "report_type", "window_start", "window_end", "marketplace_ids", "report_id", "state",
            "document_id", "created_at", "updated_at", "attempts", "last_error"} <= columns


# --------------------------------------------------------------------------------------
# TSV documents
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw,iso", [
    ("2024-05-01T12:34:56+00:00", "2024-05-01T12:34:56Z"),
    ("2024-05-01T12:34:56Z", "2024-05-01T12:34:56Z"),
    ("2024-05-01T12:34:56.250Z", "2024-05-01T12:34:56.250000Z"),
    ("2024-05-01T05:34:56-07:00", "2024-05-01T12:34:56Z"),
    ("2024-05-01T05:34:56-0700", "2024-05-01T12:34:56Z"),
    ("2024-05-01 07:00:00 UTC", "2024-05-01T07:00:00Z"),
    ("2024-05-01 00:00:00 PDT", "2024-05-01T07:00:00Z"),
    ("2024-12-01 00:00:00 PST", "2024-12-01T08:00:00Z"),
    ("May 1, 2024 12:00:00 AM PDT", "2024-05-01T07:00:00Z"),
    ("Jan 5, 2024 1:02:03 PM PST", "2024-01-05T21:02:03Z"),
    ("05/01/2024", "2024-05-01T00:00:00Z"),
    ("05/01/2024 13:45:00", "2024-05-01T13:45:00Z"),
    ("01.05.2024 10:00:00 CEST", "2024-05-01T08:00:00Z"),
    ("2024-05-01", "2024-05-01T00:00:00Z"),
    ("2024/05/01", "2024-05-01T00:00:00Z"),
    ("  2024-05-01T12:34:56Z ", "2024-05-01T12:34:56Z"),
])
def test_amazon_date_spellings_to_iso_utc(raw: str, iso: str) -> None:
    assert parse_timestamp(raw) == iso


def test_dates_day_first_and_refusals() -> None:
    assert parse_date("05/01/2024") == "2024-05-01"
    assert parse_date("05/01/2024", day_first=True) == "2024-01-05"
    assert parse_date("2024-05-01T23:30:00-07:00") == "2024-05-01"  # the date as written, not moved to UTC
    for bad in ("soon", "13/45/2024", "2024-05-01 12:00 XYZ", "2024-05-01T10:00:00+02:00 UTC", ""):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


@pytest.mark.parametrize("raw,plain", [
    ("12.50", "12.50"), ("-3.10", "-3.10"), ("0", "0"), ("1234", "1234"),
    ("$1,234.56", "1234.56"), ("-$12.00", "-12.00"), ("$-12.00", "-12.00"), ("($12.00)", "-12.00"), ("12.50-", "-12.50"),
    ("USD 12.00", "12.00"), ("12.00 USD", "12.00"), ("CA$ 3.10", "3.10"), ("£0.99", "0.99"), ("¥1,234", "1234"),
    ("1.234,56 €", "1234.56"), ("€12,50", "12.50"), ("12,50", "12.50"), ("1 234,56", "1234.56"), ("1\u00a0234,56 EUR", "1234.56"),
    ("1,234", "1234"), ("1,234,567.89", "1234567.89"), ("1.234.567", "1234567"), ("Rs. 1,23,456.00", "123456.00"),
    ("CHF 1'234.50", "1234.50"), ("\u2212 4.00", "-4.00"), ("+5", "5"), ("$.50", "0.50"),
])
def test_money_spellings_to_decimal_text(raw: str, plain: str) -> None:
    assert parse_decimal(raw) == plain


def test_money_separators_when_the_marketplace_is_known_and_refusals() -> None:
    assert parse_decimal("1,234", decimal_comma=True) == "1.234"
    assert parse_decimal("12,50", decimal_comma=False) == "1250"
    assert parse_decimal("1.234", decimal_comma=True) == "1234"
    for bad in ("abc", "12abc34", "1,2.3,4", "--5", "(-5)", "$", "1e5", "12.50 USD EUR"):
        with pytest.raises(ValueError):
            parse_decimal(bad)


def test_tsv_rows_map_the_header_onto_declared_columns() -> None:
    document = (
        "Approval Date\tamount-total\tQty\tflag\tnote\textra-column\r\n"
        "May 1, 2024 12:00:00 AM PDT\t$1,234.56\t1,000\tYes\tRuler 12\" steel\tx\r\n"
        "2024-05-02 07:00:00 UTC\t(3.00)\t2\tn\t\t\r\n"
        "\r\n"
        "05/03/2024\t-0.5\t3\t\tshort row\n"
    )
    columns = (
        Column("approval_date", T),
        Column("amount", D, source="amount-total"),
        Column("qty", I),
        Column("flag", ColumnType.BOOL, required=False),
        Column("note", S, required=False),
        Column("missing_optional", S, required=False),
    )
    rows = tsv_rows(document.encode(), columns, "test document")
    assert rows == [
        {"approval_date": "2024-05-01T07:00:00Z", "amount": "1234.56", "qty": 1000, "flag": True, "note": 'Ruler 12" steel', "missing_optional": None},
        {"approval_date": "2024-05-02T07:00:00Z", "amount": "-3.00", "qty": 2, "flag": False, "note": None, "missing_optional": None},
        {"approval_date": "2024-05-03T00:00:00Z", "amount": "-0.5", "qty": 3, "flag": None, "note": "short row", "missing_optional": None},
    ]
    from sync_assets.fetch.frames import rows_to_frame

    frame = rows_to_frame(rows, columns, "test document")
    assert frame["amount"].tolist() == ["1234.56", "-3.00", "-0.5"]
    assert frame["approval_date"].iloc[0] == pd.Timestamp("2024-05-01T07:00:00Z")


def test_tsv_documents_gzip_charsets_quoting_and_errors() -> None:
    body = "sku\tproduct-name\tamount\nA-1\tCrème brûlée\t12,50 €\n"
    columns = (Column("sku", S), Column("product_name", S), Column("amount", D))
    want = [{"sku": "A-1", "product_name": "Crème brûlée", "amount": "12.50"}]
    assert tsv_rows(gzip.compress(body.encode()), columns, "doc", compression="GZIP") == want
    assert tsv_rows(body.encode("cp1252"), columns, "doc") == want  # a legacy charset, undeclared
    assert tsv_rows(body.encode("utf-8-sig"), columns, "doc") == want  # a byte order mark
    latin = body.replace("€", "EUR")
    assert tsv_rows(latin.encode("latin-1"), columns, "doc", charset="ISO-8859-1") == want
    assert decode_document(gzip.compress(b"a\tb\n"), "GZIP") == "a\tb\n"
    quoted = '"sku"\t"product-name"\t"amount"\n"A-1"\t"Tab\tand ""quote"""\t"1.00"\n'
    assert read_tsv(quoted)[1] == [{"sku": "A-1", "product-name": 'Tab\tand "quote"', "amount": "1.00"}]
    assert tsv_rows(b"", columns, "doc") == []

    with pytest.raises(MalformedPayload, match=r"doc: the report has no column 'amount'"):
        tsv_rows(b"sku\tproduct-name\nA\tB\n", columns, "doc")
    with pytest.raises(MalformedPayload, match=r"doc: row 3 column 'amount': 'twelve' is not an amount"):
        tsv_rows(b"sku\tproduct-name\tamount\nA\tB\t1\nC\tD\ttwelve\n", columns, "doc")
    with pytest.raises(MalformedPayload, match=r"line 2: 4 values for 3 columns"):
        read_tsv("a\tb\tc\n1\t2\t3\t4\n")
    with pytest.raises(MalformedPayload, match="does not gunzip"):
        decode_document(b"\x1f\x8bnot gzip", "GZIP")


def test_a_report_gone_from_the_api_is_replaced(env: Env) -> None:
    request = env.request()
    first, *_ = env.process(time=FakeTime(env.sandbox, crash_after=0))
    with pytest.raises(Crash):
        first.run(request)
    engine = create_engine(env.database_url)
    try:
        with engine.begin() as conn:  # as if the report had outlived the API's 90 days
            conn.execute(text(f"UPDATE {JOBS_TABLE} SET report_id = '00000000000'"))
    finally:
        engine.dispose()
    runner, *_ = env.process()
    result = runner.run(request)
    assert result.records() == env.expected(request)
    old, new = env.jobs()
    assert old.state is JobState.ABANDONED and old.finished_at is not None and "not found" in (old.last_error or "")
    assert new.report_id == result.job.report_id != "00000000000"


# --------------------------------------------------------------------------------------
# ApiHttpClient.post_json
# --------------------------------------------------------------------------------------


def _poster(*answers: httpx.Response) -> tuple[ApiHttpClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    http = ApiHttpClient("http://sp.test", {}, httpx.Timeout(5.0), 2, RetryPolicy(max_attempts=3, initial_wait_s=0, max_wait_s=0),
                         transport=httpx.MockTransport(handler), sleep=lambda s: None, classifier=ErrorClassifier())
    return http, seen


def test_post_json_sends_json_takes_any_2xx_and_retries_only_what_was_not_acted_on() -> None:
    http, seen = _poster(httpx.Response(429, json={"errors": [{"code": "QuotaExceeded", "message": "slow down"}]}),
                         httpx.Response(202, json={"reportId": "123"}))
    response = http.post_json("/reports/2021-06-30/reports", {"reportType": "X"}, headers={"x-amz-access-token": "t"})
    assert (response.status, response.data) == (202, {"reportId": "123"})
    assert [r.method for r in seen] == ["POST", "POST"] and seen[0].headers["content-type"] == "application/json"
    assert seen[1].content == b'{"reportType":"X"}' and seen[1].headers["x-amz-access-token"] == "t"

    http, seen = _poster(httpx.Response(503, json={"errors": [{"code": "ServiceUnavailable", "message": "later"}]}))
    with pytest.raises(TransientHttpError, match=r"^POST /reports -> HTTP 503: ServiceUnavailable: later"):
        http.post_json("/reports", {})
    assert len(seen) == 1  # a 5xx may have made the report: not sent again blindly

    http, seen = _poster(httpx.Response(503), httpx.Response(204))
    assert http.post_json("/x", {}, unsent_only=False).data is None and len(seen) == 2
