"""The one API resource every ESI asset shares."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import httpx
import pandas as pd
from pydantic import Field, PrivateAttr, field_validator

from ... import __version__
from ...core.datasets import Dataset, Paging
from ...fetch.frames import empty_frame, rows_to_frame
from ...fetch.http import DEFAULT_LOG, ApiHttpClient, ErrorLimitGate, Log, RetryPolicy
from ...db.engines import engine_for
from ...db.urls import psycopg2_url
from ...fetch.budget import BudgetKey, BudgetPolicy, PostgresBudget
from ...core.errors import MalformedPayload
from ...fetch.pagination import FromIdWalker, XPagesWalker
from ...core.requests import SliceRequest
from ...core.snapshot import FetchStats, Outcome, PageSink, Snapshot, Validators

DEFAULT_ESI_URL = "https://esi.evetech.net"
COMPATIBILITY_DATE = "2026-08-18"  # the spec our routes and fields are checked against
DEFAULT_USER_AGENT = f"sync_assets/{__version__} (Dagster ESI sync; python-httpx)"


class EsiResource(dg.ConfigurableResource):
    """Rate-limit-aware, ETag-aware ESI client. Returns snapshots; never writes tables."""

    base_url: str = Field(default=DEFAULT_ESI_URL, description="ESI base URL (env SYNC_ASSETS_ESI_URL)")
    compatibility_date: str = Field(default=COMPATIBILITY_DATE, description="Sent as X-Compatibility-Date")
    user_agent: str = Field(default=DEFAULT_USER_AGENT, description="CCP asks for an app name and a contact")
    max_concurrency: int = Field(default=8, ge=1, le=64, description="Pages fetched at once per walk")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=20, description="Tries per request (timeouts, 5xx, 420, 429)")
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    max_walks: int = Field(default=3, ge=1, le=10, description="Page walks per snapshot before giving up")
    error_limit_floor: int = Field(default=10, ge=0, description="Wait for the error window reset at this many errors left")
    expiry_guard_s: float = Field(default=3.0, ge=0, description="Wait for the next snapshot if page 1 expires this soon")
    budget_database_url: str | None = Field(
        default=None,
        description="Postgres holding the budgets shared by every process (rate-limit buckets, error-limit latch, "
        "circuit breaker); env SYNC_ASSETS_DATABASE_URL. Unset: budgets are per process.",
    )

    _http: ApiHttpClient | None = PrivateAttr(default=None)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, UnicodeError, TypeError) as exc:
            raise ValueError(f"base_url is not a URL ({exc}); set SYNC_ASSETS_ESI_URL to e.g. {DEFAULT_ESI_URL}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL such as {DEFAULT_ESI_URL}, got {value!r} (SYNC_ASSETS_ESI_URL)")
        return value.rstrip("/")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._http = self._build_http()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def fetch_snapshot(
        self,
        dataset: Dataset,
        request: SliceRequest,
        previous: Validators | None = None,
        *,
        bearer: str | None = None,
        principal: str = "public",
        full_refresh: bool = False,
        log: Log = DEFAULT_LOG,
        sink: PageSink | None = None,
    ) -> Snapshot:
        """One complete, consistent snapshot of one request of `dataset`, or an error.

        - Before the stored Expires the API is not asked at all (CACHE_VALID): ESI forbids polling
          faster than its cache, and it would only answer with the same data.
        - After it, pages are asked conditionally with their stored ETags: all 304 is NOT_MODIFIED.
        - `full_refresh` ignores stored validators and Expires (unconditional GETs).
        - `bearer`: an SSO access token for authenticated routes; never logged.
        - `sink`: takes each accepted page of an X-Pages walk as it lands (see PageSink).
        """
        label = request.label or dataset.key
        now = datetime.now(timezone.utc)
        if previous and previous.expires_at and previous.expires_at > now and not full_refresh:
            log.info(f"{label}: cached by ESI until {previous.expires_at.isoformat()}; not asking before then")
            return Snapshot(dataset.key, request.state_key, Outcome.CACHE_VALID, previous, context=request.context)
        stats = FetchStats()
        started = time.perf_counter()
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        budget_key = BudgetKey(dataset.api, dataset.rate_limit_group, principal)
        parse = _page_parser(dataset, label)
        if dataset.paging is Paging.FROM_ID:
            responses, frames = self._walk_from_id(dataset, request, previous, full_refresh, headers, parse, stats, log, budget_key)
        else:
            walker = XPagesWalker(
                self._client(), request.path, dataset.query, paginated=dataset.paging is Paging.X_PAGES,
                max_concurrency=self.max_concurrency, max_walks=self.max_walks, expiry_guard_s=self.expiry_guard_s,
                parse=parse, stats=stats, log=log, label=label, headers=headers, budget_key=budget_key, sink=sink,
            )
            etags = None if full_refresh or not previous else previous.page_etags
            result = walker.walk(etags or None)
            responses, frames = result.responses, result.parsed
        stats.pages = len(responses)
        stats.duration_s = time.perf_counter() - started
        budget = self._client().budget
        if budget is not None:
            stats.budget_remaining = budget.remaining(budget_key)
            stats.budget_wait_s = budget.waited_s
        validators = Validators(
            # from_id walks revalidate only their first (newest) response; page walks every page
            page_etags=tuple(r.etag or "" for r in (responses[:1] if dataset.paging is Paging.FROM_ID else responses)),
            # a 304 need not repeat Last-Modified: keep the stored one rather than lose it
            last_modified=responses[0].last_modified or (previous.last_modified if previous else None),
            expires_at=min((r.expires for r in responses if r.expires), default=None),
            cursor=_cursor(dataset, frames, previous),
        )
        if all(r.status == 304 for r in responses):
            log.info(f"{label}: unchanged (all {stats.pages} responses 304); no body transferred")
            return Snapshot(dataset.key, request.state_key, Outcome.NOT_MODIFIED, validators, stats=stats, context=request.context)
        snapshot = Snapshot(dataset.key, request.state_key, Outcome.CHANGED, validators, stats=stats, context=request.context)
        if sink is not None and not _count_duplicates(dataset, frames, stats):
            snapshot.pages, snapshot.rows = frames, sum(len(f) for f in frames)  # the sink has them: no second copy yet
            snapshot.assemble = lambda pages: _assemble(dataset, request, pages, FetchStats())
        else:
            snapshot.frame = _assemble(dataset, request, frames, stats)
            snapshot.rows = len(snapshot.frame)
        log.info(
            f"{label}: snapshot of {snapshot.rows:,} rows in {stats.pages} responses, {stats.body_bytes / 1e6:.1f} MB, "
            f"{stats.retries} retries, {stats.duration_s:.2f}s"
        )
        return snapshot

    def _walk_from_id(self, dataset, request, previous, full_refresh, headers, parse, stats, log, budget_key):
        walker = FromIdWalker(self._client(), request.path, dataset.query, id_field=dataset.cursor_field or "",
                              parse=parse, stats=stats, log=log, label=request.label, headers=headers, budget_key=budget_key)
        use_state = previous is not None and not full_refresh
        first_etag = previous.page_etags[0] if use_state and previous.page_etags else None
        stop_at = int(previous.cursor) if use_state and previous.cursor else None
        return walker.walk(first_etag, stop_at)

    def server_status(self) -> str | None:
        """A reason to hold scheduled work (ESI down, starting up, unreachable), or None.
        One cheap GET /status (cached 30 s by ESI), not retried: a schedule tick just skips."""
        try:
            response = self._client()._client.get("/status", timeout=5.0)
        except httpx.HTTPError as exc:
            return f"ESI unreachable ({type(exc).__name__})"
        if response.status_code >= 500:
            return f"ESI /status answered {response.status_code} (downtime or outage)"
        try:
            if response.status_code == 200 and response.json().get("vip"):
                return "ESI is in VIP mode (the cluster is starting after downtime)"
        except ValueError:
            return "ESI /status answered a body that is not JSON"
        return None

    def _client(self) -> ApiHttpClient:
        if self._http is None:  # used outside a Dagster run (benchmarks, scripts)
            self._http = self._build_http()
        return self._http

    def _build_http(self) -> ApiHttpClient:
        return ApiHttpClient(
            base_url=self.base_url,
            headers={
                "User-Agent": self.user_agent,
                "X-Compatibility-Date": self.compatibility_date,
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s),
            max_connections=self.max_concurrency,
            retry=RetryPolicy(self.max_attempts, self.backoff_initial_s, self.backoff_max_s),
            gate=ErrorLimitGate(self.error_limit_floor),
            budget=self._budget(),
        )

    def _budget(self) -> PostgresBudget | None:
        if not self.budget_database_url:
            return None
        # the warehouse's pool for that database (one per URL and process): a run's budget takes one
        # connection at a time, and runs that end leave no pool behind
        engine = engine_for(psycopg2_url(self.budget_database_url, "SYNC_ASSETS_DATABASE_URL"))
        return PostgresBudget(engine, BudgetPolicy(error_limit_floor=self.error_limit_floor), want_slots=self.max_concurrency)


def _page_parser(dataset: Dataset, label: str):
    def parse(page: int, data: Any) -> pd.DataFrame:
        where = f"{label} page {page}"
        if dataset.transform is not None:
            try:
                data = dataset.transform(data)
            except (TypeError, KeyError, ValueError, AttributeError) as exc:
                raise MalformedPayload(f"{where}: unexpected payload shape ({type(exc).__name__}: {exc})") from None
        return rows_to_frame(data, dataset.columns, where)

    return parse


def _cursor(dataset: Dataset, frames: list[Any], previous: Validators | None) -> str | None:
    if dataset.paging is not Paging.FROM_ID:
        return None
    newest = [int(f[dataset.cursor_field].max()) for f in frames if len(f)]
    stored = int(previous.cursor) if previous and previous.cursor else None
    candidates = newest + ([stored] if stored is not None else [])
    return str(max(candidates)) if candidates else None


def _count_duplicates(dataset: Dataset, frames: list[Any], stats: FetchStats) -> int:
    """Rows whose key another page repeats (a row moved during the walk), from the key columns only."""
    keys = [c for c in dataset.primary_key if c not in {col.name for col in dataset.context_columns}]
    if not frames or not keys:
        return 0
    stats.duplicates_dropped = int(pd.concat([f[keys] for f in frames], ignore_index=True).duplicated(keep="last").sum())
    return stats.duplicates_dropped


def _assemble(dataset: Dataset, request: SliceRequest, frames: list[Any], stats: FetchStats) -> pd.DataFrame:
    """Concatenate page frames into table shape: context columns first, one row per key.
    Empties `frames` (the walk's page list) so the pages can be freed as soon as they are copied."""
    pages = [f for f in frames if len(f)]
    frames.clear()  # the page frames die with the concatenation: one copy of the rows, not two
    frame = pd.concat(pages, ignore_index=True, copy=False) if pages else empty_frame(dataset.columns)
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
