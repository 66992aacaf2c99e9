"""The walk engine: one complete, consistent set of pages, or an error; for any paginator.

Known page counts (`PageNumbers`: ESI's X-Pages header, Laravel's meta.last_page) are walked
concurrently: page 1, then 2..N. Pages may come from a cache that refreshes between page 1 and page
N, which gives duplicates or gaps; a walk is accepted only if every page shares page 1's
Last-Modified and page count, and the pages are all 200 or all 304; anything else is refetched
(bounded). Cursors (`FromId`, `NextToken`) are walked one page after another.

Retries have two levels: each request is retried a few times (tenacity, in fetch/http.py); a page
that still fails is set aside and tried again after the rest of the walk (same snapshot: its
Last-Modified and page count are checked like any page), in rounds, for as long as the walk's
deadline and the shared budgets (ESI's error limit, the circuit breaker) allow. So a storm of
transient errors costs time, not the walk. Rounds in which no page at all succeeds mean an outage,
not a storm: after a few of them the walk fails at once instead of waiting out its deadline.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import httpx

from ..core.errors import (
    ApiUnreachable,
    InconsistentSnapshot,
    MalformedPayload,
    PageOutOfRange,
    PermanentHttpError,
    RetriesExhausted,
    TransientHttpError,
)
from ..core.lazy import importing
from ..core.paging import FromId, NextToken, PageNumbers, Single, at_path
from ..core.snapshot import FetchStats, PageSink
from .http import ApiHttpClient, Log, PageResponse, describe

ParsePage = Callable[[int, Any], Any]  # (page, records) -> parsed rows (e.g. a DataFrame)
DecodeBody = Callable[[bytes], Any]  # a 200's body -> what `_records` reads (default: its JSON)
# a page that failed every attempt with one of these is tried again after the rest of the walk
RETRY_LATER = (TransientHttpError, ApiUnreachable, MalformedPayload, httpx.TransportError)


@dataclass(frozen=True)
class WalkLimits:
    """How long a walk keeps retrying pages that failed every attempt, and how often it refetches
    a snapshot that moved under it."""

    max_walks: int = 3  # page walks per snapshot (a moved snapshot restarts the walk)
    deadline_s: float = 1800.0  # the walk gives up retrying failed pages after this long
    pause_s: float = 2.0  # between rounds of retried pages (each request has its own backoff too)
    max_idle_rounds: int = 3  # consecutive rounds in which no page succeeded: the API is down, give up
    round_budget_wait_s: float = 90.0  # a retried page waits this long at most for the shared budgets (the
    # error budget spent by the storm itself; ESI's window is 60 s): beyond it the walk fails saying which


@dataclass
class WalkResult:
    responses: list[PageResponse]  # ordered by page, data released after parsing
    parsed: list[Any] = field(default_factory=list)  # parse(page, records) per page, 200 walks only
    page_one_only: bool = False  # page 1's 304 stood for the whole unchanged snapshot (see `Unchanged`)

    @property
    def all_not_modified(self) -> bool:
        return all(r.status == 304 for r in self.responses)


@dataclass(frozen=True)
class Unchanged:
    """When page 1 alone may stand for an unchanged snapshot: its 304 carries the stored
    Last-Modified and a new Expires (later than the stored one), and no other page count than the
    stored one. ESI documents that a response with a new Expires and the same Last-Modified has
    unchanged content: the cache was renewed, not the snapshot; every page of a snapshot shares its
    Last-Modified, and a snapshot fixes its page count (ESI's 304s do not repeat X-Pages; when one
    does, it must match). A 304 without these (a stale edge cache: RFC 9110 does not require them)
    proves nothing and the walk goes on conditionally; the caller still walks every page periodically."""

    last_modified: datetime
    expires_at: datetime | None
    pages: int

    def holds(self, first: PageResponse) -> bool:
        return (first.status == 304 and first.last_modified is not None and first.last_modified == self.last_modified
                and first.expires is not None and (self.expires_at is None or first.expires > self.expires_at)
                and first.page_count in (None, self.pages))


class WalkCancelled(Exception):
    """The walk was cancelled (`cancel()`, or its walk failed or was interrupted): no new request."""


class _RestartUnconditionally(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _NextSnapshot(Exception):
    """Page 1 was about to expire and the walk waited for the API's next snapshot: walk again, still
    conditionally (the new snapshot may well have the same pages: 304s cost no body)."""


class _Walk:
    """What every walker shares: the HTTP call with its budget key and credential, stats,
    cancellation, the deadline for retrying failed pages."""

    def __init__(self, http: ApiHttpClient, path: str, params: Mapping[str, Any], *, parse: ParsePage, stats: FetchStats,
                 log: Log, label: str, decode: DecodeBody | None = None, headers: Mapping[str, str] | None = None, budget_key: Any = None,
                 auth: httpx.Auth | None = None, limits: WalkLimits = WalkLimits(),
                 clock: Callable[[], float] = time.monotonic, cancelled: threading.Event | None = None):
        self.http, self.path, self.params = http, path, params
        self.parse, self.decode, self.stats, self.log, self.label = parse, decode, stats, log, label
        self.headers, self.budget_key, self.auth, self.limits = headers, budget_key, auth, limits
        self._clock = clock
        self._started = clock()
        self._stats_lock = threading.Lock()
        self._cancelled = cancelled or threading.Event()  # shared: the caller may stop several walks at once

    def cancel(self) -> None:
        """Stop the walk from another thread: no request starts after this, no retry is waited for."""
        self._cancelled.set()

    def _check_running(self, stop: threading.Event | None = None) -> None:
        if self._cancelled.is_set() or (stop is not None and stop.is_set()):
            raise WalkCancelled(f"{self.label}: walk stopped; no further request")

    def _get(self, params: Mapping[str, Any], page: int | None, etag: str | None, stop: threading.Event | None = None,
             page_params: Mapping[str, Any] | None = None, retrying: bool = False) -> PageResponse:
        self._check_running(stop)
        response = self.http.get_page(
            self.path, params, page, etag, self.log, on_retry=lambda: self._count_retry(stop),
            alive=lambda: self._check_running(stop), headers=self.headers, budget_key=self.budget_key,
            auth=self.auth, page_params=page_params, decode=self.decode,
            max_budget_wait_s=self.limits.round_budget_wait_s if retrying else None,
        )
        with self._stats_lock:
            self.stats.count(response.status, response.body_bytes)
        return response

    def _count_retry(self, stop: threading.Event | None = None) -> None:
        """Called before each retry's wait: a stopped walk retries nothing."""
        self._check_running(stop)
        with self._stats_lock:
            self.stats.retries += 1

    def _retry_later(self, failures: Mapping[int, BaseException], round_: int, idle_rounds: int = 0) -> None:
        """Between rounds of failed pages: give up when the deadline is spent or the API answered
        nothing but errors for `max_idle_rounds` rounds, else pause."""
        pages = sorted(failures)
        last = failures[pages[-1]]
        spent = self._clock() - self._started
        shown = ", ".join(map(str, pages[:10])) + ("…" if len(pages) > 10 else "")
        still = f"{len(pages)} pages still failing (pages {shown}; last: {type(last).__name__}: {last}); nothing was written"
        if spent + self.limits.pause_s > self.limits.deadline_s:
            raise RetriesExhausted(
                f"{self.label}: walk deadline of {self.limits.deadline_s:.0f}s spent after {round_} rounds of retries with {still}"
            ) from last
        if idle_rounds >= self.limits.max_idle_rounds:
            raise RetriesExhausted(
                f"{self.label}: no page succeeded in {idle_rounds} rounds of retries (the API looks down) with {still}"
            ) from last
        for page in pages:  # one line per retry, like the request-level retries
            self.log.warning(f"{self.label} page {page}: {describe(failures[page])}; retry in round {round_ + 1}, after the rest")
        self.log.warning(f"{self.label}: {len(pages)} pages failed every attempt; trying them again "
                         f"({spent:.0f}s of the walk's {self.limits.deadline_s:.0f}s spent)")
        with self._stats_lock:
            self.stats.retries += len(pages)
        left = self.limits.pause_s
        while left > 0:
            self._check_running()
            time.sleep(min(left, 0.5))
            left -= 0.5

    def _records(self, response: PageResponse, records_path: str | None) -> Any:
        records = at_path(response.data, records_path)
        if records is None:
            raise MalformedPayload(f"{self.label} page {response.page}: the body has no {records_path!r}")
        return records


class PageWalker(_Walk):
    """A route with one response (`Single`) or numbered pages whose count the first page tells."""

    def __init__(self, http: ApiHttpClient, path: str, params: Mapping[str, Any], *, paginator: Single | PageNumbers,
                 max_concurrency: int, expiry_guard_s: float, sink: PageSink | None = None, **common: Any):
        super().__init__(http, path, params, **common)
        self.paginator, self.max_concurrency = paginator, max_concurrency
        self.expiry_guard_s, self.sink = expiry_guard_s, sink
        self._sink_lock = threading.Lock()  # a stopped walk's late pages never reach the sink after its restart
        # pages fetched while the parser's libraries were importing, each with its walk's stop flag
        self._unparsed: list[tuple[threading.Event, PageResponse]] = []
        self._unparsed_lock = threading.Lock()

    @property
    def paginated(self) -> bool:
        return isinstance(self.paginator, PageNumbers)

    def walk(self, etags: Sequence[str] | None, unchanged: Unchanged | None = None) -> WalkResult:
        """Fetch all pages, conditionally when `etags` (page i+1 at index i) are given; with
        `unchanged`, page 1's 304 may stand for the whole snapshot (see `Unchanged`)."""
        reasons: list[str] = []
        max_walks = self.limits.max_walks
        waited = False
        for attempt in range(1, max_walks + 1):
            self.stats.walks += 1
            try:
                return self._walk_once(etags, unchanged if etags else None, may_wait=not waited)
            except _NextSnapshot:
                waited = True  # once: a second expiry that close is walked as it is
                continue
            except (_RestartUnconditionally, InconsistentSnapshot, PageOutOfRange) as exc:
                reason = getattr(exc, "reason", str(exc))
                reasons.append(reason)
                etags = None  # the snapshot moved: every page is refetched in full
                if self.sink is not None:
                    self.sink.restart()
                if attempt < max_walks:
                    self.log.warning(f"{self.label}: {reason}; refetching every page (walk {attempt + 1}/{max_walks})")
        raise InconsistentSnapshot(
            f"{self.label}: no consistent snapshot after {max_walks} walks ({'; '.join(reasons)}); nothing was written"
        )

    def _walk_once(self, etags: Sequence[str] | None, unchanged: Unchanged | None = None, may_wait: bool = True) -> WalkResult:
        first = self._first(etags[0] if etags else None)
        pages = self._page_count(first, etags)
        if unchanged is not None and unchanged.holds(first):
            self.log.info(f"{self.label}: page 1 not modified, same Last-Modified, new Expires: the {pages} pages are "
                          "the stored snapshot (not asked)")
            return WalkResult([first], [], page_one_only=True)
        if may_wait and self._about_to_expire(first) and pages > 1:
            delay = (first.expires - _utcnow()).total_seconds() + 1.0  # type: ignore[operator]
            self.log.info(f"{self.label}: page 1 expires in {delay - 1:.1f}s; waiting for the next snapshot before walking {pages} pages")
            time.sleep(max(delay, 0.0))
            raise _NextSnapshot()
        if etags is not None:
            if first.status == 200:
                etags = None  # page 1 changed: a mixed walk would be refetched anyway
            elif len(etags) != pages:
                raise _RestartUnconditionally(f"the page count is {pages} but {len(etags)} pages are stored")
        results: dict[int, PageResponse] = {1: first}
        parsed: dict[int, Any] = {}
        progress = _Progress(self.log, self.label, pages)
        progress.done(first)
        if pages > 1:
            self._fetch_rest(first, pages, etags, results, parsed, progress)
        else:
            self._accept(first, first, pages, parsed)
        ordered = [results[p] for p in range(1, pages + 1)]
        statuses = {r.status for r in ordered}
        if statuses == {200, 304}:
            n304 = sum(r.status == 304 for r in ordered)
            raise _RestartUnconditionally(f"{n304} of {pages} pages answered 304 and the rest 200")
        return WalkResult(ordered, [parsed[p] for p in range(1, pages + 1)] if statuses == {200} else [])

    def _first(self, etag: str | None) -> PageResponse:
        """Page 1, retried in rounds like any page: nothing else can start without it."""
        round_ = 0
        while True:
            try:
                return self._fetch(1, etag, retrying=round_ > 0)
            except RETRY_LATER as exc:
                self._retry_later({1: exc}, round_, idle_rounds=round_ + 1)
                round_ += 1

    def _fetch_rest(self, first, pages, etags, results, parsed, progress) -> None:
        # One stop flag per walk: when the walk fails (a page error, another snapshot) or is
        # interrupted (Dagster terminating the run raises in this thread), queued pages are dropped,
        # workers start no further request or retry, and nothing waits for the requests in flight
        # (their answers are ignored). A walk restarted after a moved snapshot gets a fresh flag.
        stop = threading.Event()
        # More workers than requests in flight: a page being parsed and loaded does not hold one of
        # the `max_concurrency` request slots, so the connections stay busy. A quarter more is
        # enough (The Forge behind 100 ms: walk 5.0-5.4 s with none, 4.75-4.86 s with a quarter,
        # 4.77 s with twice as many) and costs ~5 MB of peak memory instead of ~25 MB.
        in_flight = threading.BoundedSemaphore(self.max_concurrency)
        workers = self.max_concurrency + max(1, self.max_concurrency // 4)
        pool = ThreadPoolExecutor(max_workers=min(workers, pages - 1), thread_name_prefix="page")
        pending, round_, idle = list(range(2, pages + 1)), 0, 0
        try:
            # page 1 is parsed on a worker like the others: its parse (the run's first, which may
            # still be importing pandas) does not hold up the requests for pages 2..N
            head: Future | None = pool.submit(self._accept, first, first, pages, parsed, stop)
            while pending:
                futures: dict[Future, int] = {
                    pool.submit(self._fetch_and_accept, first, page, pages, etags[page - 1] if etags else None, parsed, stop,
                                in_flight, round_ > 0): page
                    for page in pending
                }
                if head is not None:
                    futures[head] = 1
                failed: dict[int, BaseException] = {}
                for future in as_completed(futures):  # progress is logged as pages land; a hard error ends the walk
                    if future is head:
                        head.result()  # page 1's body is what it is: its error ends the walk, never retried
                        head = None
                        continue
                    error = future.exception()
                    if isinstance(error, RETRY_LATER):
                        failed[futures[future]] = error
                        continue
                    if error is not None:
                        raise error
                    response = future.result()
                    results[futures[future]] = response
                    progress.done(response)
                    self._accept_unparsed(first, pages, parsed, stop, failed, wait=False)
                self._accept_unparsed(first, pages, parsed, stop, failed, wait=True)
                if failed:
                    idle = idle + 1 if len(failed) == len(pending) else 0
                    self._retry_later(failed, round_, idle)
                    round_ += 1
                pending = sorted(failed)
        except BaseException:
            with self._sink_lock:
                stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)  # every page is done: the workers are idle

    def _fetch_and_accept(self, first, page, pages, etag, parsed, stop: threading.Event, in_flight: threading.BoundedSemaphore,
                          retrying: bool = False) -> PageResponse:
        while not in_flight.acquire(timeout=0.5):  # a stopped walk's queued workers leave without asking
            self._check_running(stop)
        try:
            self._check_running(stop)
            response = self._fetch(page, etag, stop, retrying)
        finally:
            in_flight.release()
        self._check_running(stop)  # a failed walk parses nothing more
        if not self._parse_later(response, stop):
            self._accept(first, response, pages, parsed, stop)
        return response

    def _parse_later(self, response: PageResponse, stop: threading.Event) -> bool:
        """While the parser's libraries are still importing (the run's first walk), a fetched page
        is left for the walk's own thread to parse once they are there, and its worker goes on to
        the next request instead of waiting for the import: on a latency- or rate-bound walk the
        connections (and a rate window's first requests) do not idle through it. At most
        twice `max_concurrency` pages wait so, their bodies held."""
        if not importing():
            return False
        with self._unparsed_lock:
            if len(self._unparsed) >= 2 * self.max_concurrency:
                return False
            self._unparsed.append((stop, response))
        return True

    def _accept_unparsed(self, first, pages, parsed, stop, failed: dict[int, BaseException], wait: bool) -> None:
        """Parse the pages left by `_parse_later` (once the import is done, or waiting for it); a
        page whose body fails to parse is retried like any page (`failed`)."""
        if not wait and importing():
            return
        with self._unparsed_lock:
            waiting, self._unparsed = self._unparsed, []
        # a worker of an earlier, failed walk may have left a page after the walk was restarted
        for response in (r for walk, r in waiting if walk is stop):
            try:
                self._accept(first, response, pages, parsed, stop)
            except RETRY_LATER as exc:
                failed[response.page] = exc

    def _fetch(self, page: int, etag: str | None, stop: threading.Event | None = None, retrying: bool = False) -> PageResponse:
        paginator = self.paginator
        if isinstance(paginator, PageNumbers):
            response = self._get(self.params, page, etag, stop, page_params=paginator.params(page), retrying=retrying)
        else:
            response = self._get(self.params, None, etag, stop, retrying=retrying)
        response.page_count = self._declared_count(response)
        return response

    def _declared_count(self, response: PageResponse) -> int | None:
        """The page count this response states (header or body), None when it states none."""
        paginator = self.paginator
        if not isinstance(paginator, PageNumbers):
            return None
        if paginator.count_header is not None:
            raw = response.headers.get(paginator.count_header)
        else:
            raw = at_path(response.data, paginator.count_path) if response.status == 200 else None
        if raw is None:
            return None
        try:
            count = int(raw)
        except (TypeError, ValueError):
            raise MalformedPayload(f"{self.label} page {response.page}: page count {raw!r} is not a number") from None
        if count < 0:
            raise MalformedPayload(f"{self.label} page {response.page}: page count {count} is negative")
        return max(count, 1)  # an empty result still has its (empty) first page

    def _page_count(self, response: PageResponse, etags: Sequence[str] | None, default: int | None = None) -> int:
        """Pages of the walk. A 304 may omit the count: then the stored page count stands."""
        if not self.paginated:
            return 1
        if response.page_count is not None:
            return response.page_count
        if response.status == 304:
            return default if default is not None else len(etags or ()) or 1
        if self.paginator.count_header is None:  # type: ignore[union-attr]
            raise MalformedPayload(f"{self.label} page {response.page}: the body has no page count "
                                   f"at {self.paginator.count_path!r}")  # type: ignore[union-attr]
        return 1

    def _accept(self, first: PageResponse, response: PageResponse, pages: int, parsed: dict[int, Any],
                stop: threading.Event | None = None) -> None:
        """Reject a page from another snapshot; parse a 200 body and drop the raw JSON."""
        if self.paginated and self._page_count(response, None, default=pages) != pages:
            raise InconsistentSnapshot(f"the page count changed from {pages} to {response.page_count} at page {response.page}")
        if response.last_modified != first.last_modified and not (response.status == 304 and response.last_modified is None):
            raise InconsistentSnapshot(
                f"page {response.page} is from another snapshot (Last-Modified {response.last_modified} != {first.last_modified})"
            )
        if response.status == 200:
            frame = self.parse(response.page, self._records(response, self.paginator.records_path))
            response.data = None
            kept = None
            if self.sink is not None:
                with self._sink_lock:
                    self._check_running(stop)
                    kept = self.sink.put(response.page, frame)
            parsed[response.page] = frame if kept is None else kept  # a sink's digest: the frame is freed

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
        line = None
        with self.lock:
            self.count += 1
            self.bytes += response.body_bytes
            if response.status == 200:
                self.n200 += 1
            else:
                self.n304 += 1
            if self.count % self.batch == 0 or self.count == self.pages:
                line = f"{self.label}: page {self.count}/{self.pages} ({self.n200}×200, {self.n304}×304, {self.bytes / 1e6:.1f} MB)"
        if line:  # logged outside the lock: a run's log handler writes an event, other pages must not wait for it
            self.log.info(line)


class FromIdWalker(_Walk):
    """Walk a from_id route (newest first) back to the newest id already stored.

    ESI: the first call has no from_id; each next call passes the smallest id seen and includes
    that record again; the walk ends on an empty or repeat-only response, or once it reaches
    `stop_at`. Ledger records never change, so pages need not share one snapshot.
    """

    def __init__(self, http: ApiHttpClient, path: str, params: Mapping[str, Any], *, paginator: FromId,
                 max_calls: int = 10_000, **common: Any):
        super().__init__(http, path, params, **common)
        self.paginator, self.max_calls = paginator, max_calls

    def walk(self, first_etag: str | None, stop_at: int | None) -> tuple[list[PageResponse], list[Any]]:
        """Responses (the first carries the validators) and parsed frames holding only ids newer
        than `stop_at`. A 304 on the first call means nothing new: ([304 response], [])."""
        self.stats.walks += 1
        id_field = self.paginator.field
        first = self._fetch(None, first_etag, call=1)
        if first.status == 304:
            return [first], []
        responses, frames = [first], []
        current = first
        previous_from: int | None = None
        while True:
            frame = self.parse(len(responses), self._records(current, self.paginator.records_path))
            current.data = None
            ids = frame[id_field]
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
            current = self._fetch(next_from, None, call=len(responses) + 1)
            responses.append(current)
        progress = f"{len(responses)} calls, {sum(len(f) for f in frames):,} new records"
        self.log.info(f"{self.label}: from_id walk done: {progress}")
        return responses, frames

    def _fetch(self, from_id: int | None, etag: str | None, call: int) -> PageResponse:
        params = dict(self.params)
        if from_id is not None:
            params[self.paginator.param] = from_id
        round_ = 0
        while True:
            try:
                return self._get(params, None, etag, retrying=round_ > 0)
            except RETRY_LATER as exc:
                self._retry_later({call: exc}, round_, idle_rounds=round_ + 1)
                round_ += 1


class NextTokenWalker(_Walk):
    """Follow a next-page token from the body until there is none (SP-API).

    A token is sent with the first call's parameters (or alone, when the API wants it alone); a
    token that comes back twice is a broken cursor (the walk would never end); tokens that live
    only `lifetime_s` make the walk restart from the first page when it was too slow to use one
    (or when the API refuses one as expired), at most `max_walks` times.
    """

    def __init__(self, http: ApiHttpClient, path: str, params: Mapping[str, Any], *, paginator: NextToken,
                 sink: PageSink | None = None, **common: Any):
        super().__init__(http, path, params, **common)
        self.paginator, self.sink = paginator, sink

    def walk(self) -> tuple[list[PageResponse], list[Any]]:
        reasons: list[str] = []
        for attempt in range(1, self.limits.max_walks + 1):
            self.stats.walks += 1
            try:
                return self._walk_once()
            except _RestartUnconditionally as exc:
                reasons.append(exc.reason)
                if self.sink is not None:
                    self.sink.restart()
                self.log.warning(f"{self.label}: {exc.reason}; restarting from the first page")
        raise InconsistentSnapshot(f"{self.label}: no complete walk after {self.limits.max_walks} tries "
                                   f"({'; '.join(reasons)}); nothing was written")

    def _walk_once(self) -> tuple[list[PageResponse], list[Any]]:
        decl = self.paginator
        responses: list[PageResponse] = []
        frames: list[Any] = []
        token: str | None = None
        issued_at = 0.0
        seen: set[str] = set()
        while True:
            if token is not None and decl.lifetime_s is not None and self._clock() - issued_at > decl.lifetime_s:
                raise _RestartUnconditionally(f"the next token expired ({decl.lifetime_s:.0f}s) before it was used")
            response = self._fetch_page(token, len(responses) + 1)
            responses.append(response)
            page = len(responses)
            frame = self.parse(page, self._records(response, decl.records_path))
            kept = self.sink.put(page, frame) if self.sink is not None else None
            frames.append(frame if kept is None else kept)  # a sink's digest: the frame is freed
            del frame
            following = at_path(response.data, decl.token_path)
            response.data = None
            if not following:
                return responses, frames
            if not isinstance(following, str):
                raise MalformedPayload(f"{self.label} page {page}: next token at {decl.token_path!r} is not a string")
            if following in seen:
                raise InconsistentSnapshot(f"{self.label}: page {page} repeated an earlier next token: the cursor is broken")
            if page >= decl.max_pages:
                raise InconsistentSnapshot(f"{self.label}: still a next token after {decl.max_pages} pages")
            seen.add(following)
            token, issued_at = following, self._clock()

    def _fetch_page(self, token: str | None, page: int) -> PageResponse:
        decl = self.paginator
        params = dict(self.params) if token is None or not decl.only_param else {}
        if token is not None:
            params[decl.param] = token
        round_ = 0
        while True:
            try:
                return self._get(params, None, None, retrying=round_ > 0)
            except PermanentHttpError as exc:
                if token is not None and decl.lifetime_s is not None and exc.status in (400, 404):
                    raise _RestartUnconditionally(f"the API refused the next token of page {page} ({exc.detail})") from exc
                raise
            except RETRY_LATER as exc:
                self._retry_later({page: exc}, round_, idle_rounds=round_ + 1)
                round_ += 1


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)
