"""X-Pages walks that yield one consistent snapshot or nothing.

ESI pages carry their own ETags, and the cache can refresh between page 1 and page N, which
gives duplicates or gaps. A walk is accepted only if every page shares page 1's Last-Modified
and X-Pages and the pages are all 200 or all 304; anything else is refetched (bounded).
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

from ..core.errors import InconsistentSnapshot, PageOutOfRange
from .http import ApiHttpClient, Log, PageResponse
from ..core.snapshot import FetchStats, PageSink

ParsePage = Callable[[int, Any], Any]  # (page, JSON) -> parsed rows (e.g. a DataFrame)


@dataclass
class WalkResult:
    responses: list[PageResponse]  # ordered by page, data released after parsing
    parsed: list[Any] = field(default_factory=list)  # parse(page, json) per page, 200 walks only

    @property
    def all_not_modified(self) -> bool:
        return all(r.status == 304 for r in self.responses)


class WalkCancelled(Exception):
    """The walk was cancelled (`cancel()`, or its walk failed or was interrupted): no new request."""


class _RestartUnconditionally(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class XPagesWalker:
    def __init__(
        self,
        http: ApiHttpClient,
        path: str,
        params: Mapping[str, Any],
        *,
        paginated: bool,
        max_concurrency: int,
        max_walks: int,
        expiry_guard_s: float,
        parse: ParsePage,
        stats: FetchStats,
        log: Log,
        label: str,
        headers: Mapping[str, str] | None = None,
        budget_key: Any = None,
        sink: PageSink | None = None,
    ):
        self.headers, self.budget_key, self.sink = headers, budget_key, sink
        self.http, self.path, self.params = http, path, params
        self.paginated, self.max_concurrency = paginated, max_concurrency
        self.max_walks, self.expiry_guard_s = max_walks, expiry_guard_s
        self.parse, self.stats, self.log, self.label = parse, stats, log, label
        self._stats_lock = threading.Lock()
        self._sink_lock = threading.Lock()  # a stopped walk's late pages never reach the sink after its restart
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop the walk from another thread: no request starts after this, no retry is waited for."""
        self._cancelled.set()

    def walk(self, etags: Sequence[str] | None) -> WalkResult:
        """Fetch all pages, conditionally when `etags` (page i+1 at index i) are given."""
        reasons: list[str] = []
        for attempt in range(1, self.max_walks + 1):
            self.stats.walks += 1
            try:
                return self._walk_once(etags)
            except (_RestartUnconditionally, InconsistentSnapshot, PageOutOfRange) as exc:
                reason = getattr(exc, "reason", str(exc))
                reasons.append(reason)
                etags = None  # the snapshot moved: every page is refetched in full
                if self.sink is not None:
                    self.sink.restart()
                if attempt < self.max_walks:
                    self.log.warning(f"{self.label}: {reason}; refetching every page (walk {attempt + 1}/{self.max_walks})")
        raise InconsistentSnapshot(
            f"{self.label}: no consistent snapshot after {self.max_walks} walks ({'; '.join(reasons)}); nothing was written"
        )

    def _walk_once(self, etags: Sequence[str] | None) -> WalkResult:
        first = self._fetch(1, etags[0] if etags else None)
        pages = _page_count(first, etags) if self.paginated else 1
        if self._about_to_expire(first) and pages > 1:
            delay = (first.expires - _utcnow()).total_seconds() + 1.0  # type: ignore[operator]
            self.log.info(f"{self.label}: page 1 expires in {delay - 1:.1f}s; waiting for the next snapshot before walking {pages} pages")
            time.sleep(max(delay, 0.0))
            raise _RestartUnconditionally("cache about to refresh")
        if etags is not None:
            if first.status == 200:
                etags = None  # page 1 changed: a mixed walk would be refetched anyway
            elif len(etags) != pages:
                raise _RestartUnconditionally(f"X-Pages is {pages} but {len(etags)} pages are stored")
        results: dict[int, PageResponse] = {1: first}
        parsed: dict[int, Any] = {}
        self._accept(first, first, pages, parsed)
        progress = _Progress(self.log, self.label, pages)
        progress.done(first)
        if pages > 1:
            self._fetch_rest(first, pages, etags, results, parsed, progress)
        ordered = [results[p] for p in range(1, pages + 1)]
        statuses = {r.status for r in ordered}
        if statuses == {200, 304}:
            n304 = sum(r.status == 304 for r in ordered)
            raise _RestartUnconditionally(f"{n304} of {pages} pages answered 304 and the rest 200")
        return WalkResult(ordered, [parsed[p] for p in range(1, pages + 1)] if statuses == {200} else [])

    def _fetch_rest(self, first, pages, etags, results, parsed, progress) -> None:
        # One stop flag per walk: when the walk fails (a page error, another snapshot) or is
        # interrupted (Dagster terminating the run raises in this thread), queued pages are dropped,
        # workers start no further request or retry, and nothing waits for the requests in flight
        # (their answers are ignored). A walk restarted after a moved snapshot gets a fresh flag.
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, pages - 1), thread_name_prefix="page")
        try:
            futures: dict[Future, int] = {
                pool.submit(self._fetch_and_accept, first, page, pages, etags[page - 1] if etags else None, parsed, stop): page
                for page in range(2, pages + 1)
            }
            for future in as_completed(futures):  # progress is logged as pages land, the first error ends the walk
                error = future.exception()
                if error is not None:
                    raise error
                response = future.result()
                results[futures[future]] = response
                progress.done(response)
        except BaseException:
            with self._sink_lock:
                stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)  # every page is done: the workers are idle

    def _fetch_and_accept(self, first, page, pages, etag, parsed, stop: threading.Event) -> PageResponse:
        self._check_running(stop)
        response = self._fetch(page, etag, stop)
        self._check_running(stop)  # a failed walk parses nothing more
        self._accept(first, response, pages, parsed, stop)
        return response

    def _fetch(self, page: int, etag: str | None, stop: threading.Event | None = None) -> PageResponse:
        self._check_running(stop)
        response = self.http.get_page(
            self.path, self.params, page if self.paginated else None, etag, self.log, on_retry=lambda: self._count_retry(stop),
            alive=lambda: self._check_running(stop),
            headers=self.headers, budget_key=self.budget_key,
        )
        with self._stats_lock:
            self.stats.count(response.status, response.body_bytes)
        return response

    def _check_running(self, stop: threading.Event | None) -> None:
        if self._cancelled.is_set() or (stop is not None and stop.is_set()):
            raise WalkCancelled(f"{self.label}: walk stopped; no further request")

    def _accept(self, first: PageResponse, response: PageResponse, pages: int, parsed: dict[int, Any],
                stop: threading.Event | None = None) -> None:
        """Reject a page from another snapshot; parse a 200 body and drop the raw JSON."""
        if self.paginated and _page_count(response, None, default=pages) != pages:
            raise InconsistentSnapshot(f"X-Pages changed from {pages} to {response.x_pages} at page {response.page}")
        if response.last_modified != first.last_modified and not (response.status == 304 and response.last_modified is None):
            raise InconsistentSnapshot(
                f"page {response.page} is from another snapshot (Last-Modified {response.last_modified} != {first.last_modified})"
            )
        if response.status == 200:
            parsed[response.page] = frame = self.parse(response.page, response.data)
            response.data = None
            if self.sink is not None:
                with self._sink_lock:
                    self._check_running(stop)
                    self.sink.put(response.page, frame)

    def _count_retry(self, stop: threading.Event | None = None) -> None:
        """Called before each retry's wait: a stopped walk retries nothing."""
        self._check_running(stop)
        with self._stats_lock:
            self.stats.retries += 1

    def _about_to_expire(self, first: PageResponse) -> bool:
        if self.expiry_guard_s <= 0 or first.expires is None:
            return False
        left = (first.expires - _utcnow()).total_seconds()
        return 0 < left < self.expiry_guard_s


class _Progress:
    """One log line per batch of pages, about ten per walk."""

    def __init__(self, log: Log, label: str, pages: int):
        self.log, self.label, self.pages = log, label, pages
        self.batch = max(1, math.ceil(pages / 10))
        self.count = self.n200 = self.n304 = self.bytes = 0
        self.lock = threading.Lock()

    def done(self, response: PageResponse) -> None:
        with self.lock:
            self.count += 1
            self.bytes += response.body_bytes
            if response.status == 200:
                self.n200 += 1
            else:
                self.n304 += 1
            if self.count % self.batch == 0 or self.count == self.pages:
                self.log.info(
                    f"{self.label}: page {self.count}/{self.pages} "
                    f"({self.n200}×200, {self.n304}×304, {self.bytes / 1e6:.1f} MB)"
                )


class FromIdWalker:
    """Walk a from_id route (newest first) back to the newest id already stored.

    ESI: the first call has no from_id; each next call passes the smallest id seen and includes
    that record again; the walk ends on an empty or repeat-only response, or once it reaches
    `stop_at`. Ledger records never change, so pages need not share one snapshot.
    """

    def __init__(self, http: ApiHttpClient, path: str, params: Mapping[str, Any], *, id_field: str,
                 parse: ParsePage, stats: FetchStats, log: Log, label: str,
                 headers: Mapping[str, str] | None = None, max_calls: int = 10_000, budget_key: Any = None):
        self.http, self.path, self.params, self.id_field = http, path, params, id_field
        self.budget_key = budget_key
        self.parse, self.stats, self.log, self.label, self.headers = parse, stats, log, label, headers
        self.max_calls = max_calls
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop the walk from another thread: no request starts after this, no retry is waited for."""
        self._cancelled.set()

    def walk(self, first_etag: str | None, stop_at: int | None) -> tuple[list[PageResponse], list[Any]]:
        """Responses (the first carries the validators) and parsed frames holding only ids newer
        than `stop_at`. A 304 on the first call means nothing new: ([304 response], [])."""
        self.stats.walks += 1
        first = self._fetch(None, first_etag)
        if first.status == 304:
            return [first], []
        responses, frames = [first], []
        current = first
        previous_from: int | None = None
        while True:
            frame = self.parse(len(responses), current.data)
            current.data = None
            ids = frame[self.id_field]
            fresh = frame[ids > stop_at] if stop_at is not None else frame
            if len(fresh):
                frames.append(fresh)
            if len(ids) == 0 or (stop_at is not None and int(ids.min()) <= stop_at):
                break
            next_from = int(ids.min())
            if next_from == previous_from or (previous_from is not None and next_from > previous_from):
                break  # only the from_id record came back: the end (and a guard against no progress)
            if len(responses) >= self.max_calls:
                raise InconsistentSnapshot(f"{self.label}: from_id walk did not end after {self.max_calls} calls")
            previous_from = next_from
            current = self._fetch(next_from, None)
            responses.append(current)
        progress = f"{len(responses)} calls, {sum(len(f) for f in frames):,} new records"
        self.log.info(f"{self.label}: from_id walk done: {progress}")
        return responses, frames

    def _fetch(self, from_id: int | None, etag: str | None) -> PageResponse:
        self._check_running()
        params = dict(self.params)
        if from_id is not None:
            params["from_id"] = from_id
        response = self.http.get_page(
            self.path, params, None, etag, self.log, on_retry=self._count_retry, headers=self.headers, budget_key=self.budget_key,
            alive=self._check_running,
        )
        self.stats.count(response.status, response.body_bytes)
        return response

    def _count_retry(self) -> None:
        self._check_running()
        self.stats.retries += 1

    def _check_running(self) -> None:
        if self._cancelled.is_set():
            raise WalkCancelled(f"{self.label}: from_id walk stopped; no further request")


def _page_count(response: PageResponse, etags: Sequence[str] | None, default: int | None = None) -> int:
    """X-Pages of a response. A 304 may omit it: then the stored page count stands."""
    if response.x_pages is not None:
        return response.x_pages
    if response.status == 304:
        return default if default is not None else len(etags or ()) or 1
    return 1


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)
