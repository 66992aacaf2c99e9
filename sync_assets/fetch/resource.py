"""The one generic API resource: built from an `ApiSpec`, it turns a dataset request into one
complete, consistent Snapshot (or an error). It never writes tables.

An API's resource is a subclass that names its spec:

    class IrisResource(ApiResource):
        spec: ClassVar[ApiSpec] = IRIS
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, ClassVar

import dagster as dg
import httpx
from ..core.lazy import ARROW_LIBRARIES, SYNC_LIBRARIES, numpy as np, pandas as pd, prefetch  # imported when a run first uses them
from pydantic import Field, PrivateAttr, field_validator

from .. import __version__
from ..core.datasets import Column, Dataset, WriteMode
from ..core.errors import BudgetExhausted, ConfigurationError, MalformedPayload
from ..core.limits import SlidingWindow
from ..core.paging import FromId, NextToken, PageNumbers, Single, at_path
from ..core.requests import SliceRequest
from ..core.snapshot import FetchStats, Outcome, PageSink, Snapshot, Validators
from ..core.windows import TimeRange
from ..db.engines import engine_for
from ..db.urls import psycopg2_url
from .auth import ApiKeyHeader, Credential
from .budget import BudgetKey, BudgetPolicy, PostgresBudget
from ..core import rows as page_rows
from .frames import DecodedPage, empty_frame, page_decoder, rows_to_frame
from .http import DEFAULT_LOG, ApiHttpClient, ErrorLimitGate, Log, RetryPolicy
from .jobs import PollPolicy, ReportJobs, ReportPending, ReportRequest
from .pagination import FromIdWalker, NextTokenWalker, PageWalker, Unchanged, WalkLimits
from .spec import ApiSpec

REPORT_RECHECK_S = 300.0  # a report not finished in a run: the window is relaunched this much later
DEFAULT_USER_AGENT = f"sync_assets/{__version__} (Dagster sync; python-httpx)"
PUBLIC = "public"  # the budget principal of requests without a credential


class ApiResource(dg.ConfigurableResource):
    """Rate-limit-aware, ETag-aware client of one API. Returns snapshots; never writes tables."""

    spec: ClassVar[ApiSpec]

    base_url: str = Field(default="", description="The API's base URL; empty: the real API (the spec's default)")
    api_key: str | None = Field(default=None, description="The API's key, for APIs whose requests all carry one")
    user_agent: str = Field(default=DEFAULT_USER_AGENT, description="Sent as User-Agent (APIs ask for an app name and contact)")
    max_concurrency: int = Field(default=8, ge=1, le=64, description="Pages fetched at once per walk")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=20, description="Tries per request (timeouts, 5xx, 429) before the page waits for a later round")
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    max_walks: int = Field(default=3, ge=1, le=10, description="Page walks per snapshot before giving up")
    walk_deadline_s: float = Field(default=1800.0, gt=0, description="How long a walk keeps retrying pages that failed every attempt")
    retry_round_pause_s: float = Field(default=2.0, ge=0, description="Pause between rounds of retried pages")
    error_limit_floor: int = Field(default=10, ge=0, description="APIs with an error budget: wait for its reset at this many errors left")
    expiry_guard_s: float = Field(default=3.0, ge=0, description="Wait for the next snapshot if page 1 expires this soon")
    rate_limit: str | None = Field(
        default=None, pattern=r"^\d+/\d+(\.\d+)?$",
        description="'<requests>/<seconds>': a plan other than the spec's declared limit for every route (a tenant "
        "allowed more or fewer than IRIS's default 500/60). Response headers still correct it.",
    )
    max_budget_wait_s: float = Field(
        default=75.0, ge=1.0, le=3600.0,
        description="Longest a request waits for a shared budget (rate limit, error limit, 429 latch). Work the budget "
        "cannot pay for sooner is deferred: the run commits what it has, ends, and the expiry sensor relaunches it "
        "when the budget has refilled, so a spent bucket never holds a pool slot (env SYNC_ASSETS_MAX_BUDGET_WAIT_S).",
    )
    full_walk_every_s: float = Field(
        default=86400.0, ge=0.0, le=30 * 86400.0,
        description="Paged snapshots: between walks of every page (conditional: unchanged pages cost a 304), page 1's "
        "304 with the stored Last-Modified, a new Expires and the same page count stands for the whole snapshot "
        "(1 request instead of one per page); at least this often every page is asked again. 0: every sync walks every page",
    )
    report_wait_s: float = Field(
        default=900.0, ge=1.0, le=6 * 3600.0,
        description="Report datasets: how long a run waits for the API to finish a report before it defers the window "
        "(the job is kept and resumed when the run is relaunched, never requested again)",
    )
    report_poll_s: float = Field(default=5.0, gt=0, le=600.0,
                                 description="Report datasets: the first wait between status checks (it grows to a minute)")
    budget_database_url: str | None = Field(
        default=None,
        description="Postgres holding the budgets shared by every process (rate-limit buckets, latches, circuit "
        "breaker); env SYNC_ASSETS_DATABASE_URL. Unset: budgets are per process.",
    )

    _http: ApiHttpClient | None = PrivateAttr(default=None)
    _transport: httpx.BaseTransport | None = PrivateAttr(default=None)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        spec = cls.spec
        if not value:  # unset (an empty variable): the real API
            return spec.base_url
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, UnicodeError, TypeError) as exc:
            raise ValueError(f"base_url is not a URL ({exc}); set {spec.base_url_env} to e.g. {spec.base_url}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL such as {spec.base_url}, got {value!r} ({spec.base_url_env})")
        return value.rstrip("/")

    @property
    def url(self) -> str:
        return self.base_url or self.spec.base_url

    def with_transport(self, transport: httpx.BaseTransport) -> "ApiResource":
        """Unit tests: send every request through `transport` (e.g. httpx.MockTransport)."""
        self._transport = transport
        return self

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._http = self._build_http()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # -- one snapshot ------------------------------------------------------------------------------

    def fetch_snapshot(
        self,
        dataset: Dataset,
        request: SliceRequest,
        previous: Validators | None = None,
        *,
        credential: Credential | None = None,
        full_refresh: bool = False,
        log: Log = DEFAULT_LOG,
        sink: PageSink | None = None,
        cancel: threading.Event | None = None,
    ) -> Snapshot:
        """One complete, consistent snapshot of one request of `dataset`, or an error.

        - Before a stored Expires the API is not asked at all (CACHE_VALID): it would only answer
          the same data (ESI forbids polling faster than its cache).
        - After it, pages are asked conditionally with their stored ETags: all 304 is NOT_MODIFIED.
        - `full_refresh` ignores stored validators and Expires (unconditional GETs).
        - `credential`: the per-partition credential (a character's token); never logged.
        - `sink`: takes each accepted page of a walk as it lands (see PageSink).
        - `cancel`: set from another thread, it stops the walk (no further request, no wait).
        """
        label = request.label or dataset.key
        now = datetime.now(timezone.utc)
        if previous and previous.expires_at and previous.expires_at > now and not full_refresh:
            log.info(f"{label}: cached by {self.spec.title} until {previous.expires_at.isoformat()}; not asking before then")
            return Snapshot(dataset.key, request.state_key, Outcome.CACHE_VALID, previous, context=request.context)
        stats = FetchStats()
        started = time.perf_counter()
        http = self._client()
        key = self.budget_key(dataset, credential)
        common: dict[str, Any] = dict(parse=_page_parser(dataset, request, label), stats=stats, log=log, label=label,
                                      budget_key=key, auth=credential.auth if credential else None,
                                      limits=WalkLimits(self.max_walks, self.walk_deadline_s, self.retry_round_pause_s),
                                      cancelled=cancel)
        paginator = dataset.paginator
        if sink is not None:
            sink = _Digesting(sink, dataset)  # the loader takes each page's rows; the walk keeps a digest
        use_state = previous is not None and not full_refresh
        decode = _body_decoder(dataset) if isinstance(paginator, (Single, PageNumbers)) else None
        if not use_state or not previous.page_etags:  # type: ignore[union-attr]
            # every page will be parsed and loaded: import while page 1 is in flight (pages Arrow reads
            # need no pandas: it loads only if a page goes the strict way)
            prefetch(*(ARROW_LIBRARIES if decode is not None else SYNC_LIBRARIES))
        query = {**dataset.query, **request.params}
        partial = use_state and dataset.incremental is not None and bool(previous.cursor)  # type: ignore[union-attr]
        if partial:
            query.update(_since(dataset, previous, now))  # type: ignore[arg-type]
            log.info(f"{label}: rows changed since {query[dataset.incremental.start_param]}")  # type: ignore[union-attr]
        elif dataset.incremental is not None and dataset.incremental.first_since is not None:
            query.update(_since(dataset, Validators(cursor=(now - dataset.incremental.first_since).isoformat()), now,
                                overlap=False))
            log.info(f"{label}: full read of what changed since {query[dataset.incremental.start_param]}")
        path = request.path if credential is None or not credential.endpoint else credential.endpoint + request.path
        if dataset.report is not None:
            return self._report_snapshot(dataset, request, query, credential, log, stats, started)
        if isinstance(paginator, FromId):
            walker = FromIdWalker(http, path, query, paginator=paginator, **common)
            first_etag = previous.page_etags[0] if use_state and previous.page_etags else None  # type: ignore[union-attr]
            stop_at = int(previous.cursor) if use_state and previous.cursor else None  # type: ignore[union-attr]
            responses, frames = walker.walk(first_etag, stop_at)
        elif isinstance(paginator, NextToken):
            responses, frames = NextTokenWalker(http, path, query, paginator=paginator, sink=sink, **common).walk()
        else:
            # pages walked concurrently may be read by Arrow (see frames.page_decoder): their rows stay
            # Arrow tables on the way to the loader, a frame is made of them only when assembled
            walker = PageWalker(http, path, query, paginator=paginator, max_concurrency=self.max_concurrency,
                                expiry_guard_s=self.expiry_guard_s, sink=sink, decode=decode, **common)
            result = walker.walk((previous.page_etags or None) if use_state else None,  # type: ignore[union-attr]
                                 self._unchanged(previous, now) if use_state else None)
            responses, frames = result.responses, result.parsed
        stats.pages = len(responses)
        stats.duration_s = time.perf_counter() - started
        if http.budget is not None:
            stats.budget_remaining = http.budget.remaining(key)
            stats.budget_wait_s = http.budget.waited_s
        page_one_only = isinstance(paginator, (Single, PageNumbers)) and result.page_one_only
        validators = Validators(
            # cursor walks revalidate only their first (newest) response; page walks every page (the
            # stored ETags stand when page 1 stood for the unchanged snapshot)
            page_etags=previous.page_etags if page_one_only else  # type: ignore[union-attr]
            tuple(r.etag or "" for r in (responses if isinstance(paginator, (Single, PageNumbers)) else responses[:1])),
            # a 304 need not repeat Last-Modified: keep the stored one rather than lose it
            last_modified=responses[0].last_modified or (previous.last_modified if previous else None),
            expires_at=min((r.expires for r in responses if r.expires), default=None),
            cursor=request.version or _cursor(dataset, frames, previous),
            walked_at=previous.walked_at if page_one_only else now,  # type: ignore[union-attr]
        )
        if all(r.status == 304 for r in responses):
            log.info(f"{label}: unchanged (all {stats.pages} responses 304); no body transferred")
            return Snapshot(dataset.key, request.state_key, Outcome.NOT_MODIFIED, validators, stats=stats, context=request.context)
        snapshot = Snapshot(dataset.key, request.state_key, Outcome.CHANGED, validators, stats=stats, context=request.context,
                            partial=partial)
        if sink is not None:
            # the loader has every page's rows; this process kept a digest of each (row count, key
            # hashes, cursor): the rows live once, in the database
            snapshot.rows = sum(d.rows for d in frames)
            if _count_duplicates(dataset, frames, stats):  # a row on two pages: the loaded pages cannot be merged
                log.warning(f"{label}: {stats.duplicates_dropped} rows appear on two pages (moved during the walk); "
                            "fetching the snapshot again to write one copy of each")
                return self.refetch(dataset, request, previous, credential=credential, log=log, full_refresh=full_refresh)
        else:
            snapshot.frame = _assemble(dataset, request, frames, stats)
            snapshot.rows = len(snapshot.frame)
        log.info(
            f"{label}: snapshot of {snapshot.rows:,} rows in {stats.pages} responses, {stats.body_bytes / 1e6:.1f} MB, "
            f"{stats.retries} retries, {stats.duration_s:.2f}s"
        )
        return snapshot

    def refetch(self, dataset: Dataset, request: SliceRequest, previous: Validators | None, *,
                credential: Credential | None = None, log: Log = DEFAULT_LOG, full_refresh: bool = False) -> Snapshot:
        """The same request again, every page with its body (no ETags, no page-1 shortcut) and no
        sink: the rows assembled in memory, duplicates dropped. For the rare walk whose pages could
        not stay in the database only (a row on two pages, a failed load)."""
        again = replace(previous, page_etags=(), expires_at=None) if previous is not None else None
        return self.fetch_snapshot(dataset, request, again, credential=credential, log=log, full_refresh=full_refresh)

    def _report_snapshot(self, dataset: Dataset, request: SliceRequest, query: dict[str, Any], credential: Credential | None,
                         log: Log, stats: FetchStats, started: float) -> Snapshot:
        """A report dataset's window: its job found, resumed or requested (persisted, so a crashed run's
        report is polled again, never requested twice), waited for, downloaded and parsed. A report
        still unfinished after `report_wait_s` defers the work (the job resumes on the relaunch);
        CANCELLED is "no data": an empty snapshot, nothing written."""
        declared, windows = dataset.report, dataset.windows
        assert declared is not None and windows is not None and windows.start_param and windows.end_param
        if self.spec.reports is None:
            raise ConfigurationError(f"{dataset.key} is made by reports, but {self.spec.title} declares no report runner")
        if not self.budget_database_url:
            raise ConfigurationError(f"{dataset.key}: report jobs are kept in Postgres; set SYNC_ASSETS_DATABASE_URL")
        marketplaces = tuple(credential.scope.get("marketplace_id", ())) if credential else ()
        report_request = ReportRequest(
            dataset=dataset.key, scope=request.state_key, report_type=declared.report_type,
            start=_instant(query[windows.start_param]), end=_instant(query[windows.end_param]),
            marketplace_ids=marketplaces, options=declared.options)
        runner = self.spec.reports(self._client(), credential, log=log, max_budget_wait_s=self.max_budget_wait_s)
        try:
            jobs = ReportJobs(runner, engine_for(psycopg2_url(self.budget_database_url, "SYNC_ASSETS_DATABASE_URL")), log=log,
                              poll=PollPolicy(initial_s=self.report_poll_s, max_s=max(60.0, self.report_poll_s)))
            result = jobs.run(report_request, deadline_s=self.report_wait_s)
        except ReportPending as exc:
            raise BudgetExhausted(f"{exc}; resumed on the next run", retry_at=time.time() + REPORT_RECHECK_S) from None
        finally:
            close = getattr(runner, "close", None)
            if close is not None:
                close()
        where = f"{request.label or dataset.key}: report {result.job.report_id}"
        in_document = [c for c in dataset.columns if c.name not in declared.computed]
        rows = result.rows(in_document, where, day_first=declared.day_first)
        if dataset.transform is not None:
            rows = dataset.transform(rows)
        frame = rows_to_frame(rows, dataset.columns, where)
        stats.pages, stats.duration_s = 1, time.perf_counter() - started
        snapshot = Snapshot(dataset.key, request.state_key, Outcome.CHANGED, Validators(cursor=result.job.report_id),
                            stats=stats, context=request.context, frame=_assemble(dataset, request, [frame], stats))
        log.info(f"{where}: {'no data (CANCELLED)' if result.no_data else f'{snapshot.rows:,} rows'} "
                 f"in {stats.duration_s:.1f}s")
        return snapshot

    def _unchanged(self, previous: Validators | None, now: datetime) -> Unchanged | None:
        """Whether page 1's 304 may stand for the whole snapshot this time: only within
        `full_walk_every_s` of the last walk of every page (which re-asks each page, conditionally),
        and only for a stored multi-page snapshot with its Last-Modified."""
        if (previous is None or len(previous.page_etags) < 2 or previous.last_modified is None or previous.walked_at is None
                or (now - previous.walked_at).total_seconds() >= self.full_walk_every_s):
            return None
        return Unchanged(previous.last_modified, previous.expires_at, len(previous.page_etags))

    def budget_key(self, dataset: Dataset, credential: Credential | None = None) -> BudgetKey:
        """The shared bucket a dataset's requests spend: per rate-limit group and principal."""
        spec = self.spec
        declared = spec.declared_limit(dataset.rate_limit_group)
        if self.rate_limit:
            requests, seconds = self.rate_limit.split("/")
            declared = SlidingWindow(capacity=int(requests), window_s=float(seconds))
        return BudgetKey(spec.name, spec.limit_group(dataset.rate_limit_group), self.principal(credential), declared=declared)

    def principal(self, credential: Credential | None) -> str:
        if credential is not None:
            return credential.principal
        if self.spec.api_key is not None and self.api_key:
            return "key:" + hashlib.sha256(self.api_key.encode()).hexdigest()[:12]
        return PUBLIC

    def server_status(self) -> str | None:
        """A reason to hold scheduled work (the API down, starting up, unreachable), or None."""
        return self.spec.status(self._client().raw) if self.spec.status else None

    # -- the HTTP client ---------------------------------------------------------------------------

    def _client(self) -> ApiHttpClient:
        if self._http is None:  # used outside a Dagster run (benchmarks, scripts)
            self._http = self._build_http()
        return self._http

    def _build_http(self) -> ApiHttpClient:
        spec = self.spec
        return ApiHttpClient(
            base_url=self.url,
            headers={"User-Agent": self.user_agent, "Accept": "application/json", **spec.headers},
            timeout=httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s),
            max_connections=self.max_concurrency,
            retry=RetryPolicy(self.max_attempts, self.backoff_initial_s, self.backoff_max_s),
            gate=ErrorLimitGate(self.error_limit_floor) if spec.error_limit else None,
            transport=self._transport,
            budget=self._budget(),
            classifier=spec.errors,
            auth=self._static_auth(),
            base_url_setting=spec.base_url_env,
        )

    def _static_auth(self) -> httpx.Auth | None:
        declared = self.spec.api_key
        if declared is None:
            return None
        if not self.api_key:
            raise ConfigurationError(f"{self.spec.title} needs an API key: set {declared.env}")
        return ApiKeyHeader(declared.header, self.api_key)

    def _budget(self) -> PostgresBudget | None:
        if not self.budget_database_url:
            return None
        # the process's pool for that database: a run's budget takes one connection at a time
        engine = engine_for(psycopg2_url(self.budget_database_url, "SYNC_ASSETS_DATABASE_URL"))
        spec = self.spec
        policy = BudgetPolicy(error_limit=spec.error_limit, headers=spec.rate_limit_headers, cost=spec.costs,
                              error_limit_floor=self.error_limit_floor, max_wait_s=self.max_budget_wait_s)
        return PostgresBudget(engine, policy, want_slots=self.max_concurrency)


def _body_decoder(dataset: Dataset) -> Callable[[bytes], Any] | None:
    """Arrow's reading of a page body (see frames.page_decoder) where the body is the records'
    array itself and each record is read as it comes (no transform, no nested paths)."""
    paginator = dataset.paginator
    bare_array = (getattr(paginator, "records_path", None) is None and getattr(paginator, "count_path", None) is None
                  and getattr(paginator, "token_path", None) is None)
    if not bare_array or dataset.transform is not None or any(c.source for c in dataset.columns):
        return None
    return page_decoder(dataset.columns)


def _page_parser(dataset: Dataset, request: SliceRequest, label: str):
    # scope columns the payload carries must hold the request's own values: a row of another
    # partition would land outside the scope this sync replaces
    carried = [c.name for c in dataset.scope_columns if c.name in {col.name for col in dataset.columns}]

    # nested payload fields named by path ("inventoryDetails.fulfillableQuantity") and no transform
    # to flatten them: each record is read at its columns' paths
    nested = [c for c in dataset.columns if c.source and c.source != "[]"] if dataset.transform is None else []

    by_name = {c.name: c for c in dataset.columns}

    def parse(page: int, data: Any) -> Any:
        """The page's rows: a DataFrame, or the Arrow table of a body Arrow read (core.rows)."""
        where = f"{label} page {page}"
        if dataset.transform is not None:
            try:
                data = dataset.transform(data)
            except (TypeError, KeyError, ValueError, AttributeError) as exc:
                raise MalformedPayload(f"{where}: unexpected payload shape ({type(exc).__name__}: {exc})") from None
        elif nested and isinstance(data, list):
            data = [{**record, **{c.name: at_path(record, c.source) for c in nested}} if isinstance(record, dict) else record
                    for record in data]
        rows = data.table if type(data) is DecodedPage else rows_to_frame(data, dataset.columns, where)
        for name in carried:
            expected = request.context.get(name)
            values = page_rows.series(rows, by_name[name]) if len(rows) else None
            if values is None:
                continue
            if isinstance(expected, TimeRange):
                if dataset.write_mode is WriteMode.MIRROR:
                    outside = (values < expected.start) | (values >= expected.end)
                    if bool(outside.any()):
                        raise MalformedPayload(f"{where}: a row has {name}={values[outside].iloc[0]}, "
                                               f"outside the requested window {expected}")
                continue
            if expected is not None and bool((values != expected).any()):
                other = values[values != expected].iloc[0]
                raise MalformedPayload(f"{where}: a row has {name}={other}, outside the requested {name}={expected}")
        return rows

    return parse


def _since(dataset: Dataset, previous: Validators, now: datetime, overlap: bool = True) -> dict[str, str]:
    """The filter of an incremental read: changed since the stored cursor minus the overlap. An end
    ("until") is sent as now minus the window rules' minimum age when the dataset has one."""
    incremental = dataset.incremental
    assert incremental is not None and previous.cursor
    since = datetime.fromisoformat(previous.cursor) - (incremental.overlap if overlap else timedelta(0))
    params = {**incremental.fixed, incremental.start_param: since.astimezone(timezone.utc).isoformat(timespec="seconds")}
    if incremental.end_param:
        until = now - (dataset.windows.min_age if dataset.windows else timedelta(0))
        params[incremental.end_param] = until.astimezone(timezone.utc).isoformat(timespec="seconds")
    return params


def _cursor(dataset: Dataset, frames: list[Any], previous: Validators | None) -> str | None:
    if dataset.incremental is not None:  # the newest change synced (kept when nothing changed)
        column = dataset.incremental.cursor_column
        values = [None if isinstance(f, _PageDigest) else page_rows.series(f, _column(dataset, column)) for f in frames]
        newest = [f.cursor_max if isinstance(f, _PageDigest) else v.max() for f, v in zip(frames, values)
                  if (f.cursor_max is not None if isinstance(f, _PageDigest) else len(f) and v.notna().any())]
        stored = datetime.fromisoformat(previous.cursor) if previous and previous.cursor else None
        candidates = [pd.Timestamp(t).to_pydatetime() for t in newest] + ([stored] if stored else [])
        return max(candidates).isoformat() if candidates else None
    paginator = dataset.paginator
    if not isinstance(paginator, FromId):
        return None
    newest = [int(page_rows.series(f, _column(dataset, paginator.field)).max()) for f in frames if len(f)]
    stored = int(previous.cursor) if previous and previous.cursor else None
    candidates = newest + ([stored] if stored is not None else [])
    return str(max(candidates)) if candidates else None


def _payload_keys(dataset: Dataset) -> list[Column]:
    context = {col.name for col in dataset.context_columns}
    return [_column(dataset, name) for name in dataset.primary_key if name not in context]


def _column(dataset: Dataset, name: str) -> Column:
    return next(c for c in dataset.columns if c.name == name)


@dataclass
class _PageDigest:
    """What a walk keeps of a page its sink took: enough to count rows, find a key on two pages and
    advance an incremental cursor (8 bytes a row instead of the row)."""

    rows: int
    key_hashes: Any  # numpy uint64 array: one hash of the key columns per row
    cursor_max: Any = None


class _Digesting:
    """A PageSink in front of another: forwards each page, hands the walk back a `_PageDigest`."""

    def __init__(self, sink: PageSink, dataset: Dataset):
        self._sink, self._keys = sink, _payload_keys(dataset)
        self._cursor = _column(dataset, dataset.incremental.cursor_column) if dataset.incremental else None

    def put(self, page: int, rows: Any) -> _PageDigest:
        hashes = _key_hashes(rows, self._keys) if self._keys and len(rows) else None
        cursor = None
        if self._cursor is not None and len(rows):
            values = page_rows.series(rows, self._cursor)
            cursor = values.max() if values.notna().any() else None
        self._sink.put(page, rows)
        return _PageDigest(len(rows), hashes, cursor)

    def restart(self) -> None:
        self._sink.restart()


def _key_hashes(rows: Any, keys: list[Column]) -> Any:
    """One uint64 per row over the key columns, hashed column by column (selecting the key columns
    as a frame would copy them: 7x slower on a 1000-row page). A page's rows hash alike whichever
    their shape: plain int64 keys (ids, the usual case) by numpy alone, so an Arrow page needs no
    pandas; other keys by pandas' hash of the values the strict path holds (core.rows.series)."""
    combined = None
    for column in keys:
        ints = page_rows.int64_values(rows, column)
        hashed = (_splitmix64(ints) if ints is not None
                  else pd.util.hash_pandas_object(page_rows.series(rows, column), index=False).to_numpy())
        combined = hashed if combined is None else combined * np.uint64(1_000_003) ^ hashed
    return combined


def _splitmix64(values: Any) -> Any:
    """int64 -> well-mixed uint64 (SplitMix64's finalizer; numpy's uint64 arithmetic wraps)."""
    z = values.view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _count_duplicates(dataset: Dataset, frames: list[Any], stats: FetchStats) -> int:
    """Rows whose key another page repeats (a row moved during the walk), from the key columns
    only (or their hashes, for pages a sink took: a collision costs a refetch, never a lost row)."""
    keys = _payload_keys(dataset)
    if not frames or not keys:
        return 0
    if isinstance(frames[0], _PageDigest):
        hashes = np.concatenate([d.key_hashes for d in frames if d.key_hashes is not None] or [np.empty(0, np.uint64)])
        hashes.sort()  # in place: equal hashes side by side, no second copy of 8 bytes a row (np.unique makes two)
        stats.duplicates_dropped = int(np.count_nonzero(hashes[1:] == hashes[:-1]))
        return stats.duplicates_dropped
    names = [c.name for c in keys]
    stats.duplicates_dropped = int(pd.concat([page_rows.to_frame(f, dataset.columns)[names] for f in frames],
                                             ignore_index=True).duplicated(keep="last").sum())
    return stats.duplicates_dropped


def _assemble(dataset: Dataset, request: SliceRequest, frames: list[Any], stats: FetchStats) -> pd.DataFrame:
    """Concatenate page frames into table shape: context columns first, one row per key.
    Empties `frames` (the walk's page list) so the pages can be freed as soon as they are copied."""
    pages = [page_rows.to_frame(f, dataset.columns) for f in frames if len(f)]
    frames.clear()  # the page frames die with the concatenation: one copy of the rows, not two
    frame = pd.concat(pages, ignore_index=True) if pages else empty_frame(dataset.columns)
    del pages
    for position, column in enumerate(dataset.context_columns):
        value = request.context[column.name]
        frame.insert(position, column.name, pd.Series(value, index=frame.index, dtype=column.pandas_dtype))
    # a row can move between pages while they are fetched: keep its last copy. Rare, so look
    # before copying the whole frame.
    duplicated = frame.duplicated(subset=list(dataset.primary_key), keep="last")
    stats.duplicates_dropped = int(duplicated.sum())
    if stats.duplicates_dropped:
        frame = frame.loc[~duplicated].reset_index(drop=True)
    return frame


def _instant(value: str) -> datetime:
    """A window bound as the API is sent it (ISO 8601, "Z" or an offset), as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
