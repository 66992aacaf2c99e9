"""Long-running report jobs: created, polled, downloaded, and persisted so that a retry, or the next
run after a crash, resumes the same job instead of requesting the report again.

An API that makes data by jobs (SP-API's Reports 2021-06-30: createReport, getReport until a final
state, getReportDocument, then a pre-signed download) brings a `ReportsApi`; `ReportJobs` runs any
of them the same way:

1. **Find before create.** A stored job of the same (dataset, scope, report type, window) that is
   not finished is resumed (polled, or only downloaded again when it was DONE). Else the API is
   asked for a matching report of its own (SP-API: getReports by type, status, creation time and
   marketplace; reports live 90 days) and that one is used. Only then is a report requested. The
   job row is claimed under a per-window advisory lock, so concurrent runs request one report; a
   createReport whose outcome is unknown (a 5xx, a timeout) is never repeated blindly: the next
   attempt looks for the report it may have made first.
2. **Poll politely.** Waits grow from `PollPolicy.initial_s` by `factor` to `max_s`, never shorter
   than the status operation's declared rate allows (SP-API getReport: 2/s, burst 15); requests
   spend the shared budget (`BudgetKey` with the declared `TokenBucket`). Every check is logged with
   the state and the time waited. After `deadline_s` the job stays recorded and `ReportPending`
   says so: the next run resumes it.
3. **Outcomes.** DONE: the document is downloaded (SP-API: a pre-signed S3 URL fetched *without*
   the API's auth header; an expired URL is fetched anew once; gunzipped when the document says
   GZIP) and parsed by the caller (`ReportResult.rows`/`frame`, `fetch/tsv.py`). CANCELLED: no data
   (`ReportResult.no_data`), not an error: the caller writes nothing. FATAL: the report's error
   document is read and `ReportFatal` quotes it.

State lives in `sync_assets.report_jobs` in the data database, one row per job, created once per
process under the bookkeeping DDL lock.
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence
from urllib.parse import quote

import httpx
import orjson
from .transport import PooledTransport
from ..core.lazy import pandas as pd  # imported when a run first uses it
from sqlalchemy import Connection, Engine, text

from ..core.datasets import Column
from ..core.errors import (
    ApiError,
    ApiUnreachable,
    MalformedPayload,
    PermanentHttpError,
    RateLimited,
    TransientHttpError,
)
from ..core.limits import TokenBucket
from .budget import BudgetKey
from .frames import empty_frame, rows_to_frame
from .http import ApiHttpClient, describe
from .log import DEFAULT_LOG, Log
from .tsv import decode_document, read_tsv, tsv_rows

__all__ = [
    "JOBS_TABLE",
    "JobState",
    "PollPolicy",
    "RemoteReport",
    "ReportDocument",
    "ReportFatal",
    "ReportJob",
    "ReportJobStore",
    "ReportJobs",
    "ReportPending",
    "ReportRequest",
    "ReportResult",
    "ReportsApi",
    "SPAPI_REPORT_LIMITS",
    "SpApiReports",
]

SCHEMA = "sync_assets"
JOBS_TABLE = f"{SCHEMA}.report_jobs"
JOBS_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {JOBS_TABLE} (
    id              bigserial PRIMARY KEY,
    dataset         text        NOT NULL,
    scope           text        NOT NULL DEFAULT '',  -- partition / seller / marketplace: whose report
    report_type     text        NOT NULL,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    marketplace_ids text[]      NOT NULL,
    options         jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    report_id       text,                             -- NULL while PENDING
    state           text        NOT NULL,
    document_id     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,                      -- outcome delivered (or job given up): never resumed
    attempts        integer     NOT NULL DEFAULT 0,   -- runs that took the job up
    last_error      text
);
CREATE UNIQUE INDEX IF NOT EXISTS report_jobs_open
    ON {JOBS_TABLE} (dataset, scope, report_type, window_start, window_end) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS report_jobs_by_window ON {JOBS_TABLE} (dataset, scope, window_start, window_end, created_at);
COMMENT ON TABLE {JOBS_TABLE} IS
    'Report jobs (create, poll, download): an unfinished row is resumed instead of requesting the report again';
"""
_DDL_LOCK = 7_349_001  # the bookkeeping tables' DDL lock (warehouse.tables.DDL_LOCK): one DDL at a time
_CLAIM_LOCKS = 7_349_010  # advisory lock space: one process at a time finds or requests a window's report
_ready: set[str] = set()
_ready_lock = threading.Lock()
_CLOCK_SLACK = timedelta(minutes=5)  # our clock, the database's and the API's differ a little
_ERROR_TEXT = 1000  # characters of an error document quoted in messages


class JobState(str, Enum):
    PENDING = "PENDING"  # claimed, no report id yet (a request may or may not have reached the API)
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    DONE = "DONE"
    CANCELLED = "CANCELLED"  # no data for the window (or cancelled): nothing to write
    FATAL = "FATAL"
    ABANDONED = "ABANDONED"  # the report is gone (past retention) or stale, or other options were asked: replaced


FINAL = frozenset({JobState.DONE, JobState.CANCELLED, JobState.FATAL})


class ReportPending(ApiError):
    """The report was not finished by the deadline. Its job stays recorded; the next run resumes it."""

    def __init__(self, message: str, job: "ReportJob"):
        super().__init__(message)
        self.job = job


class _Vanished(ApiError):
    """The report's document is gone (past the API's retention): the job was given up."""


class ReportFatal(ApiError):
    """The API could not make the report (SP-API FATAL); the message quotes its error document."""

    def __init__(self, message: str, job: "ReportJob", details: str | None):
        super().__init__(message)
        self.job, self.details = job, details


# -- what is asked, what is stored ------------------------------------------------------------------


@dataclass(frozen=True)
class ReportRequest:
    """One report of one window. `dataset` and `scope` (a partition, a seller: whose data) name the
    job; the window is kept to the second, in UTC (what the API is sent)."""

    dataset: str
    scope: str
    report_type: str
    start: datetime
    end: datetime
    marketplace_ids: tuple[str, ...]
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value.tzinfo is None:
                raise ValueError(f"ReportRequest.{name} must be timezone-aware, got {value!r}")
            object.__setattr__(self, name, value.astimezone(timezone.utc).replace(microsecond=0))
        if self.start > self.end:
            raise ValueError(f"ReportRequest window starts after it ends: {self.start} > {self.end}")
        object.__setattr__(self, "marketplace_ids", tuple(sorted(set(self.marketplace_ids))))
        object.__setattr__(self, "options", dict(sorted(dict(self.options).items())))

    @property
    def label(self) -> str:
        scope = f"[{self.scope}]" if self.scope else ""
        return f"{self.dataset}{scope} {self.report_type} {self.start:%Y-%m-%dT%H:%M:%SZ}..{self.end:%Y-%m-%dT%H:%M:%SZ}"

    @property
    def lock_key(self) -> str:
        return f"{self.dataset}|{self.scope}|{self.report_type}|{self.start.isoformat()}|{self.end.isoformat()}"


@dataclass(frozen=True)
class ReportJob:
    """A row of `sync_assets.report_jobs`."""

    id: int
    dataset: str
    scope: str
    report_type: str
    window_start: datetime
    window_end: datetime
    marketplace_ids: tuple[str, ...]
    options: Mapping[str, str]
    report_id: str | None
    state: JobState
    document_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    attempts: int
    last_error: str | None

    def asks_for(self, request: ReportRequest) -> bool:
        return tuple(sorted(self.marketplace_ids)) == request.marketplace_ids and dict(self.options) == dict(request.options)


@dataclass(frozen=True)
class RemoteReport:
    """A report as the API describes it."""

    report_id: str
    state: JobState
    document_id: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class ReportDocument:
    document_id: str
    content: bytes  # as downloaded: still compressed when `compression` says so
    compression: str | None = None  # "GZIP"
    charset: str | None = None  # the download's declared charset, if any

    def text(self) -> str:
        return decode_document(self.content, self.compression, self.charset)


@dataclass(frozen=True)
class ReportResult:
    """A finished job's outcome: DONE with its document, or CANCELLED with none (`no_data`: the
    API made no report for the window; the caller writes nothing)."""

    job: ReportJob
    state: JobState
    document: ReportDocument | None

    @property
    def no_data(self) -> bool:
        return self.document is None

    def text(self) -> str:
        return "" if self.document is None else self.document.text()

    def records(self) -> list[dict[str, str]]:
        """The document's rows, every value as the file spells it (header -> value)."""
        return [] if self.document is None else read_tsv(self.text())[1]

    def rows(self, columns: Sequence[Column], where: str | None = None, **options: Any) -> list[dict[str, Any]]:
        """Rows for `rows_to_frame` (see `tsv_rows` for `day_first` and `decimal_comma`)."""
        if self.document is None:
            return []
        return tsv_rows(self.text(), columns, where or self._where, **options)

    def frame(self, columns: Sequence[Column], where: str | None = None, **options: Any) -> pd.DataFrame:
        if self.document is None:
            return empty_frame(columns)
        return rows_to_frame(self.rows(columns, where, **options), columns, where or self._where)

    @property
    def _where(self) -> str:
        return f"report {self.job.report_id} ({self.job.report_type}) document {self.job.document_id}"


# -- the job table ----------------------------------------------------------------------------------


_COLUMNS = ("id, dataset, scope, report_type, window_start, window_end, marketplace_ids, options, report_id, state, "
            "document_id, created_at, updated_at, finished_at, attempts, last_error")


def _job(row: Any) -> ReportJob:
    return ReportJob(
        id=row.id, dataset=row.dataset, scope=row.scope, report_type=row.report_type, window_start=row.window_start,
        window_end=row.window_end, marketplace_ids=tuple(row.marketplace_ids), options=dict(row.options or {}),
        report_id=row.report_id, state=JobState(row.state), document_id=row.document_id, created_at=row.created_at,
        updated_at=row.updated_at, finished_at=row.finished_at, attempts=row.attempts, last_error=row.last_error,
    )


class ReportJobStore:
    """`sync_assets.report_jobs`: read and written in short transactions (one per poll)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def ensure(self) -> None:
        """Create the table once per process and database, serialized across processes."""
        key = self.engine.url.render_as_string(hide_password=True)
        with _ready_lock:
            if key in _ready:
                return
            with self.engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DDL_LOCK})
                conn.execute(text(JOBS_DDL))
            _ready.add(key)

    def jobs(self, dataset: str | None = None, scope: str | None = None) -> list[ReportJob]:
        """Jobs, oldest first (all, or of a dataset, or of one scope of it)."""
        self.ensure()
        where = " AND ".join(c for c, v in (("dataset = :d", dataset), ("scope = :s", scope)) if v is not None) or "true"
        with self.engine.connect() as conn:
            rows = conn.execute(text(f"SELECT {_COLUMNS} FROM {JOBS_TABLE} WHERE {where} ORDER BY id"),
                                {"d": dataset, "s": scope}).all()
        return [_job(r) for r in rows]

    def open_job(self, conn: Connection, request: ReportRequest) -> ReportJob | None:
        row = conn.execute(
            text(f"SELECT {_COLUMNS} FROM {JOBS_TABLE} WHERE dataset = :d AND scope = :s AND report_type = :t "
                 "AND window_start = :a AND window_end = :b AND finished_at IS NULL FOR UPDATE"),
            {"d": request.dataset, "s": request.scope, "t": request.report_type, "a": request.start, "b": request.end},
        ).first()
        return _job(row) if row else None

    def insert(self, conn: Connection, request: ReportRequest) -> ReportJob:
        row = conn.execute(
            text(f"INSERT INTO {JOBS_TABLE} (dataset, scope, report_type, window_start, window_end, marketplace_ids, "
                 "options, state, attempts) VALUES (:d, :s, :t, :a, :b, :m, CAST(:o AS jsonb), :st, 1) "
                 f"RETURNING {_COLUMNS}"),
            {"d": request.dataset, "s": request.scope, "t": request.report_type, "a": request.start, "b": request.end,
             "m": list(request.marketplace_ids), "o": orjson.dumps(dict(request.options)).decode(), "st": JobState.PENDING.value},
        ).one()
        return _job(row)

    def update(self, job: ReportJob, conn: Connection | None = None, *, report_id: str | None = None,
               state: JobState | None = None, document_id: str | None = None, finished: bool = False,
               attempt: bool = False, error: str | None = None, clear_error: bool = False) -> ReportJob:
        """Set what is given (None: unchanged); `finished`: never resumed again."""
        sql = text(
            f"UPDATE {JOBS_TABLE} SET report_id = coalesce(:r, report_id), state = coalesce(:st, state), "
            "document_id = coalesce(:doc, document_id), updated_at = now(), "
            "finished_at = CASE WHEN :fin THEN now() ELSE finished_at END, attempts = attempts + :att, "
            "last_error = CASE WHEN :clear THEN NULL ELSE coalesce(:err, last_error) END "
            f"WHERE id = :id RETURNING {_COLUMNS}"
        )
        params = {"r": report_id, "st": state.value if state else None, "doc": document_id, "fin": finished,
                  "att": 1 if attempt else 0, "err": error[:4000] if error else None, "clear": clear_error, "id": job.id}
        if conn is not None:
            return _job(conn.execute(sql, params).one())
        with self.engine.begin() as own:
            return _job(own.execute(sql, params).one())

    def age_s(self, conn: Connection, job: ReportJob) -> float:
        return float(conn.execute(text("SELECT EXTRACT(EPOCH FROM now() - CAST(:c AS timestamptz))"), {"c": job.created_at}).scalar_one())


# -- the API side -----------------------------------------------------------------------------------


class ReportsApi(Protocol):
    """What an API that makes reports by jobs brings (one instance per credential)."""

    @property
    def poll_min_interval_s(self) -> float:
        """The status operation's declared rate as an interval: polls are never closer than this."""
        ...

    def find(self, request: ReportRequest, created_since: datetime) -> RemoteReport | None:
        """A report of the API's own, created since then, for exactly this request (not failed)."""
        ...

    def create(self, request: ReportRequest) -> str:
        """Request the report; its id."""
        ...

    def status(self, report_id: str) -> RemoteReport: ...

    def document(self, document_id: str) -> ReportDocument: ...

    def error_document(self, document_id: str) -> str:
        """A failed report's explanation, as text."""
        ...


@dataclass(frozen=True)
class PollPolicy:
    initial_s: float = 5.0  # first wait after a check that found the report unfinished
    factor: float = 1.5
    max_s: float = 60.0
    deadline_s: float = 1800.0  # give up waiting in this run after this long (the job resumes next run)


class ReportJobs:
    """Runs report jobs of one `ReportsApi` against the job table. Thread-safe per job.

    `reuse_max_age_s`: a matching report of the API's own is reused when created at most this long
    ago (0: never; a crashed run's own report is always looked for). `stale_after_s`: an unfinished
    job older than this is given up and a new report requested. `clock`/`sleep`: monotonic time and
    the wait between polls (tests move a simulator's clock instead); `utcnow`: wall time for the
    API's creation-time filter; `alive()` raises when the caller gave up (checked twice a second)."""

    def __init__(
        self,
        api: ReportsApi,
        engine: Engine,
        *,
        poll: PollPolicy = PollPolicy(),
        log: Log = DEFAULT_LOG,
        reuse_max_age_s: float = 4 * 3600.0,
        stale_after_s: float = 24 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        utcnow: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        alive: Callable[[], None] | None = None,
    ):
        self.api, self.store, self.poll, self.log = api, ReportJobStore(engine), poll, log
        self.reuse_max_age_s, self.stale_after_s = reuse_max_age_s, stale_after_s
        self._clock, self._sleep, self._utcnow, self._alive = clock, sleep, utcnow, alive

    # -- the whole job ----------------------------------------------------------------------------

    def run(self, request: ReportRequest, deadline_s: float | None = None) -> ReportResult:
        """Find, resume or request the window's report, wait for it and return its outcome. Raises
        `ReportPending` after the deadline, `ReportFatal` when the API failed to make it."""
        for _ in range(2):  # a job whose report (or document) vanished is replaced once
            job = self.start(request)
            job = self.wait(job, deadline_s)
            if job.state is JobState.ABANDONED:
                continue
            try:
                return self.finish(job)
            except _Vanished:
                continue
        raise ApiError(f"{request.label}: report {job.report_id} vanished twice; giving up for this run")

    # -- 1. find before create --------------------------------------------------------------------

    def start(self, request: ReportRequest) -> ReportJob:
        """The window's job with a report id: a stored unfinished one, a matching report of the
        API's own, or a new report (in this order), decided by one process at a time."""
        self.store.ensure()
        with self.store.engine.connect() as conn, self._window_lock(conn, request.lock_key):
            with conn.begin():
                job = self.store.open_job(conn, request)
                if job is not None and not job.asks_for(request):
                    self.store.update(job, conn, state=JobState.ABANDONED, finished=True,
                                      error="replaced: the window was asked again with other marketplaces or options")
                    job = None
                if job is not None and self.store.age_s(conn, job) > self.stale_after_s:
                    self.log.warning(f"{request.label}: report {job.report_id or '(none)'} still {job.state.value} after "
                                     f"{self.stale_after_s / 3600:.0f} h; requesting a new one")
                    self.store.update(job, conn, state=JobState.ABANDONED, finished=True,
                                      error=f"stale: still {job.state.value} after {self.stale_after_s:.0f}s")
                    job = None
                if job is not None and job.report_id is not None:
                    self.log.info(f"{request.label}: resuming report {job.report_id} ({job.state.value}, requested "
                                  f"{job.created_at:%Y-%m-%d %H:%M:%S %Z}, attempt {job.attempts + 1})")
                    return self.store.update(job, conn, attempt=True)
                if job is None:
                    job = self.store.insert(conn, request)
                    since = self._reuse_since(request)
                else:  # claimed by a run that stopped before it knew its report id: it may have made one
                    job = self.store.update(job, conn, attempt=True)
                    since = job.created_at - _CLOCK_SLACK
            # committed: should this process die now, the next run finds a PENDING job and looks
            # for the report this one may have requested before requesting one itself
            try:
                report_id, state, document_id = self._find_or_create(request, job, since)
            except Exception as exc:
                self.store.update(job, error=_say(exc))
                raise
            with conn.begin():
                return self.store.update(job, conn, report_id=report_id, state=state, document_id=document_id, clear_error=True)

    @contextmanager
    def _window_lock(self, conn: Connection, key: str) -> Iterator[None]:
        """A session lock on the window: held while its report is found or requested, released
        by the database should this process die."""
        params = {"space": _CLAIM_LOCKS, "key": key}
        while not conn.execute(text("SELECT pg_try_advisory_lock(:space, hashtext(:key))"), params).scalar_one():
            conn.commit()
            self._check_alive()
            time.sleep(0.1)  # another run is requesting this window's report: it will be resumed
        conn.commit()
        try:
            yield
        finally:
            try:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:space, hashtext(:key))"), params)
                conn.commit()
            except Exception:
                conn.invalidate()  # a closed session releases its locks

    def _reuse_since(self, request: ReportRequest) -> datetime | None:
        if self.reuse_max_age_s <= 0:
            return None
        now = self._utcnow()
        # a report of this window cannot be older than its window's end; the API keeps them 90 days
        return max(now - timedelta(seconds=self.reuse_max_age_s), request.end - _CLOCK_SLACK, now - timedelta(days=89))

    def _find_or_create(self, request: ReportRequest, job: ReportJob, since: datetime | None) -> tuple[str, JobState, str | None]:
        found = self.api.find(request, since) if since is not None else None
        if found is not None:
            self.log.info(f"{request.label}: reusing the API's report {found.report_id} ({found.state.value}) "
                          "instead of requesting another")
            return found.report_id, found.state, found.document_id
        try:
            report_id = self.api.create(request)
        except (TransientHttpError, ApiUnreachable) as exc:
            if isinstance(exc, RateLimited):
                raise  # refused before it was counted: nothing was made
            # the request may have been acted on: look once more; if it was not, the next attempt
            # (which looks first too) requests it
            found = self.api.find(request, job.created_at - _CLOCK_SLACK)
            if found is None:
                raise
            self.log.warning(f"{request.label}: the report request failed ({_say(exc)}) but made report "
                             f"{found.report_id}; using it")
            return found.report_id, found.state, found.document_id
        self.log.info(f"{request.label}: requested report {report_id}")
        return report_id, JobState.IN_QUEUE, None

    # -- 2. poll ----------------------------------------------------------------------------------

    def wait(self, job: ReportJob, deadline_s: float | None = None) -> ReportJob:
        """Poll until the report is DONE, CANCELLED or FATAL (or ABANDONED: it vanished)."""
        assert job.report_id is not None, "start() gives jobs with a report id"
        deadline = self.poll.deadline_s if deadline_s is None else deadline_s
        label = self._label(job)
        started = self._clock()
        delay = max(self.poll.initial_s, self.api.poll_min_interval_s)
        while True:
            self._check_alive()
            try:
                remote = self.api.status(job.report_id)
            except PermanentHttpError as exc:
                if exc.status != 404:
                    self.store.update(job, error=_say(exc))
                    raise
                self.log.warning(f"{label}: report {job.report_id} is gone ({exc.detail}); requesting a new one")
                return self.store.update(job, state=JobState.ABANDONED, finished=True, error=_say(exc))
            except Exception as exc:
                self.store.update(job, error=_say(exc))
                raise
            job = self.store.update(job, state=remote.state, document_id=remote.document_id)
            waited = self._clock() - started
            if remote.state in FINAL:
                self.log.info(f"{label}: report {job.report_id} {remote.state.value} after {waited:.0f}s of waiting in this run")
                return job
            if waited + delay > deadline:
                message = (f"{label}: report {job.report_id} still {remote.state.value} after {waited:.0f}s "
                           f"(deadline {deadline:.0f}s; requested {job.created_at:%Y-%m-%d %H:%M:%S %Z}); "
                           f"kept in {JOBS_TABLE}: the next run resumes it")
                self.store.update(job, error=message)
                raise ReportPending(message, job)
            self.log.info(f"{label}: report {job.report_id} {remote.state.value}, waited {waited:.0f}s; "
                          f"next check in {delay:.0f}s")
            self._wait(delay)
            delay = min(max(delay * self.poll.factor, self.api.poll_min_interval_s), max(self.poll.max_s, self.api.poll_min_interval_s))

    def _wait(self, seconds: float) -> None:
        if self._alive is None:
            self._sleep(seconds)
            return
        left = seconds
        while left > 0:
            self._alive()
            step = min(left, 0.5)
            self._sleep(step)
            left -= step

    def _check_alive(self) -> None:
        if self._alive is not None:
            self._alive()

    # -- 3. the outcome ---------------------------------------------------------------------------

    def finish(self, job: ReportJob) -> ReportResult:
        label = self._label(job)
        if job.state is JobState.CANCELLED:
            self.log.info(f"{label}: report {job.report_id} CANCELLED: no data for the window; nothing to write")
            job = self.store.update(job, finished=True, clear_error=True)
            return ReportResult(job, JobState.CANCELLED, None)
        if job.state is JobState.FATAL:
            details, why = None, "it has no error document"
            if job.document_id:
                try:
                    details = _explain(self.api.error_document(job.document_id))
                    why = details
                except Exception as exc:
                    why = f"its error document could not be read: {_say(exc)}"
            message = f"{label}: the API could not make report {job.report_id} (FATAL): {why}"
            self.store.update(job, finished=True, error=message)
            raise ReportFatal(message, job, details)
        if job.state is not JobState.DONE or not job.document_id:
            raise ApiError(f"{label}: report {job.report_id} is {job.state.value} without a document")
        try:
            document = self.api.document(job.document_id)
        except PermanentHttpError as exc:
            if exc.status != 404:
                self.store.update(job, error=_say(exc))
                raise
            self.log.warning(f"{label}: the document of report {job.report_id} is gone ({exc.detail}); requesting a new report")
            self.store.update(job, state=JobState.ABANDONED, finished=True, error=_say(exc))
            raise _Vanished(f"{label}: the document of report {job.report_id} is gone") from None
        except Exception as exc:
            self.store.update(job, error=_say(exc))
            raise
        self.log.info(f"{label}: report {job.report_id} downloaded: {len(document.content):,} bytes"
                      f"{' (gzip)' if document.compression else ''}")
        job = self.store.update(job, finished=True, clear_error=True)
        return ReportResult(job, JobState.DONE, document)

    def _label(self, job: ReportJob) -> str:
        scope = f"[{job.scope}]" if job.scope else ""
        start, end = (t.astimezone(timezone.utc) for t in (job.window_start, job.window_end))
        return f"{job.dataset}{scope} {job.report_type} {start:%Y-%m-%dT%H:%M:%SZ}..{end:%Y-%m-%dT%H:%M:%SZ}"


def _say(exc: BaseException) -> str:
    """An error for the job row and log lines (our errors carry no secrets)."""
    return str(exc) if isinstance(exc, ApiError) else describe(exc)


def _explain(document: str) -> str:
    """An error document as one line: SP-API's `{"errorDetails": …}` unwrapped, whitespace folded."""
    text_ = document.strip()
    try:
        body = orjson.loads(text_)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        parts = [str(v) for k, v in body.items() if k.lower() in ("errordetails", "error", "message", "details") and v]
        text_ = "; ".join(parts) or text_
    text_ = " ".join(text_.split())
    return (text_[:_ERROR_TEXT] + "…") if len(text_) > _ERROR_TEXT else (text_ or "(empty error document)")


# -- SP-API Reports 2021-06-30 ----------------------------------------------------------------------


#: Default usage plans (rate per second, burst) of the Reports API operations.
SPAPI_REPORT_LIMITS: Mapping[str, TokenBucket] = {
    "createReport": TokenBucket(0.0167, 15),
    "getReports": TokenBucket(0.0222, 10),
    "getReport": TokenBucket(2.0, 15),
    "cancelReport": TokenBucket(0.0222, 10),
    "getReportDocument": TokenBucket(0.0167, 15),
}
_REPORTS = "/reports/2021-06-30/reports"
_DOCUMENTS = "/reports/2021-06-30/documents"
_REUSABLE = (JobState.DONE, JobState.IN_PROGRESS, JobState.IN_QUEUE)  # preferred in this order
_S3_CODE = re.compile(r"<Code>([^<]*)</Code>")
_S3_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


class SpApiReports:
    """Reports API 2021-06-30 for one selling partner, over the product's `ApiHttpClient`.

    `auth`: the seller's credential, an `httpx.Auth` (e.g. a refreshing LWA token) or headers
    (`{"x-amz-access-token": …}`); sent to the SP-API only, never to the document storage host.
    `principal`: whose buckets the requests spend (the seller id; never a secret). `download`: the
    client for pre-signed document URLs (default: a plain client with no auth and no API headers)."""

    def __init__(
        self,
        http: ApiHttpClient,
        auth: httpx.Auth | Mapping[str, str] | None = None,
        *,
        principal: str = "public",
        api: str = "amazon",
        limits: Mapping[str, TokenBucket] = SPAPI_REPORT_LIMITS,
        log: Log = DEFAULT_LOG,
        alive: Callable[[], None] | None = None,
        max_budget_wait_s: float | None = None,
        download: httpx.Client | None = None,
        download_timeout: httpx.Timeout = httpx.Timeout(120.0, connect=10.0),
        sleep: Callable[[float], None] = time.sleep,
        page_size: int = 100,
        max_pages: int = 10,
        endpoint: str | None = None,
    ):
        self.http, self.principal, self.api_name, self.limits = http, principal, api, limits
        self._auth = auth if isinstance(auth, httpx.Auth) else None
        self._headers = dict(auth) if auth is not None and not isinstance(auth, httpx.Auth) else None
        self.log, self._alive, self._max_budget_wait_s = log, alive, max_budget_wait_s
        self._own_download = download is None
        self._download = download or httpx.Client(timeout=download_timeout, follow_redirects=True, transport=PooledTransport())
        self._sleep = sleep
        self.page_size, self.max_pages = page_size, max_pages
        self.url_refetches = 0  # document URLs that expired before they were used
        self._endpoint = (endpoint or "").rstrip("/")  # the seller's regional endpoint; "": the client's base URL

    def close(self) -> None:
        if self._own_download:
            self._download.close()

    @property
    def poll_min_interval_s(self) -> float:
        return self.limits["getReport"].interval_s

    def budget_key(self, operation: str) -> BudgetKey:
        return BudgetKey(self.api_name, operation, self.principal, declared=self.limits.get(operation))

    def _get(self, operation: str, path: str, params: Mapping[str, Any] | None = None) -> Any:
        response = self.http.get_page(self._endpoint + path, params or {}, None, None, log=self.log, headers=self._headers,
                                      budget_key=self.budget_key(operation), alive=self._alive, auth=self._auth,
                                      max_budget_wait_s=self._max_budget_wait_s)
        if not isinstance(response.data, dict):
            raise _malformed(f"{operation}: expected a JSON object, got {type(response.data).__name__}")
        return response.data

    # -- ReportsApi -------------------------------------------------------------------------------

    def find(self, request: ReportRequest, created_since: datetime) -> RemoteReport | None:
        if request.options:
            # getReports does not show reportOptions: a report made with other options would look the same
            self.log.info(f"{request.label}: not looking for an existing report (reportOptions cannot be compared)")
            return None
        params: dict[str, Any] | None = {
            "reportTypes": request.report_type,
            "processingStatuses": ",".join(s.value for s in _REUSABLE),
            "marketplaceIds": ",".join(request.marketplace_ids),
            "createdSince": _fmt(created_since),
            "pageSize": self.page_size,
        }
        matches: list[RemoteReport] = []
        for _ in range(self.max_pages):
            body = self._get("getReports", _REPORTS, params)
            for report in body.get("reports") or []:
                remote = _remote(report)
                if remote.state in _REUSABLE and _same_request(report, request):
                    matches.append(remote)
            token = body.get("nextToken")
            if not token:
                break
            params = {"nextToken": token}  # must be the only parameter
        if not matches:
            return None
        oldest = datetime.min.replace(tzinfo=timezone.utc)
        matches.sort(key=lambda r: (_REUSABLE.index(r.state), -(r.created_at or oldest).timestamp()))
        return matches[0]

    def create(self, request: ReportRequest) -> str:
        spec: dict[str, Any] = {
            "reportType": request.report_type,
            "marketplaceIds": list(request.marketplace_ids),
            "dataStartTime": _fmt(request.start),
            "dataEndTime": _fmt(request.end),
        }
        if request.options:
            spec["reportOptions"] = dict(request.options)
        response = self.http.post_json(self._endpoint + _REPORTS, spec, log=self.log, headers=self._headers,
                                       budget_key=self.budget_key("createReport"), alive=self._alive, auth=self._auth,
                                       max_budget_wait_s=self._max_budget_wait_s)
        report_id = response.data.get("reportId") if isinstance(response.data, dict) else None
        if not isinstance(report_id, str) or not report_id:
            raise _malformed(f"createReport answered HTTP {response.status} without a reportId")
        return report_id

    def status(self, report_id: str) -> RemoteReport:
        report = self._get("getReport", f"{_REPORTS}/{quote(report_id, safe='')}")
        remote = _remote(report)
        if remote.report_id != report_id:
            raise _malformed(f"getReport {report_id} answered report {remote.report_id}")
        return remote

    def document(self, document_id: str) -> ReportDocument:
        """getReportDocument, then its pre-signed URL without the API's credentials; an expired URL
        (S3's 403 "Request has expired") is asked for anew once."""
        for attempt in (1, 2):
            info = self._get("getReportDocument", f"{_DOCUMENTS}/{quote(document_id, safe='')}")
            url, compression = info.get("url"), info.get("compressionAlgorithm")
            if not isinstance(url, str) or not url:
                raise _malformed(f"getReportDocument {document_id} gave no url")
            expired, response = self._download_once(url, document_id)
            if not expired:
                assert response is not None
                return ReportDocument(document_id, response.content, compression if isinstance(compression, str) else None,
                                      response.charset_encoding)
            if attempt == 1:
                self.url_refetches += 1
                self.log.warning(f"report document {document_id}: its download URL expired before use; asking for a new one")
        raise TransientHttpError("GET", f"report document {document_id}", 403,
                                 "the pre-signed URL had expired twice (is this machine's clock right?)")

    def error_document(self, document_id: str) -> str:
        return self.document(document_id).text()

    # -- the storage host -------------------------------------------------------------------------

    def _download_once(self, url: str, document_id: str) -> tuple[bool, httpx.Response | None]:
        """(expired, response): GET a pre-signed URL, retrying 5xx and transport errors. The URL is
        never logged or quoted (its signature is a credential for five minutes)."""
        where = f"report document {document_id}"
        attempts = max(1, self.http.retry.max_attempts)
        for attempt in range(1, attempts + 1):
            if self._alive is not None:
                self._alive()
            try:
                response = self._download.get(url)  # no auth, no API headers: S3 refuses extra credentials
            except httpx.TransportError as exc:
                if attempt == attempts:
                    raise ApiUnreachable(f"GET {where}: {describe(exc)} after {attempts} attempts") from None
                self._backoff(attempt, where, describe(exc))
                continue
            status = response.status_code
            if status == 200:
                return False, response
            body = response.text[:2000]
            code = (_S3_CODE.search(body) or [None, ""])[1]
            message = (_S3_MESSAGE.search(body) or [None, ""])[1]
            detail = ": ".join(p for p in (code, message) if p) or response.reason_phrase
            if status == 403 and ("expired" in message.lower() or code == "ExpiredToken"):
                return True, None
            if status >= 500 or status in (408, 429):
                if attempt == attempts:
                    raise TransientHttpError("GET", where, status, detail)
                self._backoff(attempt, where, f"HTTP {status} ({detail})")
                continue
            raise PermanentHttpError("GET", where, status, detail)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, where: str, what: str) -> None:
        policy = self.http.retry
        wait = min(policy.initial_wait_s * 2 ** (attempt - 1), policy.max_wait_s)
        self.log.warning(f"GET {where}: {what}; retry {attempt} in {wait:.1f}s")
        self._sleep(wait)


def _fmt(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond // 1000:03d}Z" if moment.microsecond else "Z")


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in "Zz" else value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


def _remote(report: Any) -> RemoteReport:
    if not isinstance(report, dict) or not isinstance(report.get("reportId"), str):
        raise _malformed(f"a report without a reportId: {str(report)[:200]}")
    try:
        state = JobState(report.get("processingStatus"))
    except ValueError:
        raise _malformed(f"report {report['reportId']}: unknown processingStatus {report.get('processingStatus')!r}") from None
    document = report.get("reportDocumentId")
    return RemoteReport(report["reportId"], state, document if isinstance(document, str) and document else None,
                        _time(report.get("createdTime")))


def _same_request(report: Mapping[str, Any], request: ReportRequest) -> bool:
    start, end = _time(report.get("dataStartTime")), _time(report.get("dataEndTime"))
    if start is None or end is None:
        return False
    return (report.get("reportType") == request.report_type
            and start.replace(microsecond=0) == request.start and end.replace(microsecond=0) == request.end
            and tuple(sorted(set(report.get("marketplaceIds") or ()))) == request.marketplace_ids)


def _malformed(message: str) -> ApiError:
    return MalformedPayload(f"SP-API reports: {message}")
