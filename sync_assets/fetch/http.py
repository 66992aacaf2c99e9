"""One GET, done right, for any API: pooled httpx, tenacity retries with jitter, Retry-After, the
API's auth strategy and error classifier, shared budgets, and (for APIs that have one, ESI) an
error-limit gate."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Callable, Mapping

import httpx
import orjson
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from ..core.errors import ApiUnreachable, ErrorLimited, HttpStatusError, MalformedPayload, RateLimited, TransientHttpError
from .errors import ErrorClassifier
from .log import DEFAULT_LOG, Log
from .transport import PooledTransport

if TYPE_CHECKING:
    from .budget import BudgetKey, PostgresBudget

@dataclass
class PageResponse:
    page: int
    status: int  # 200 or 304
    etag: str | None
    last_modified: datetime | None
    expires: datetime | None
    headers: httpx.Headers
    data: Any  # parsed JSON of a 200, None for a 304
    body_bytes: int
    page_count: int | None = None  # set by the walk from its paginator (a header or the body)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_wait_s: float = 0.5
    max_wait_s: float = 30.0
    max_retry_after_s: float = 900.0  # never sleep longer than this on one Retry-After


class ErrorLimitGate:
    """An API-wide error budget as the server last reported it (ESI: X-ESI-Error-Limit-Remain/Reset),
    for a client without a shared budget (which keeps its own, across processes).

    When the budget left drops to `floor`, requests wait for the window to reset instead of
    spending the last errors and earning a 420 for every route.
    """

    def __init__(self, floor: int, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.floor = floor
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._remain: int | None = None
        self._reset_at = 0.0
        self.waits = 0

    def observe(self, headers: Mapping[str, str]) -> None:
        remain, reset = headers.get("x-esi-error-limit-remain"), headers.get("x-esi-error-limit-reset")
        if remain is None or reset is None:
            return
        try:
            remain_n, reset_s = int(remain), float(reset)
        except ValueError:
            return
        with self._lock:
            self._remain = remain_n
            self._reset_at = self._clock() + reset_s

    def trip(self, reset_s: float) -> None:
        with self._lock:
            self._remain = 0
            self._reset_at = self._clock() + reset_s

    def wait_turn(self, log: Log) -> None:
        with self._lock:
            if self._remain is None or self._remain > self.floor:
                return
            delay = self._reset_at - self._clock()
        if delay > 0:
            self.waits += 1
            log.warning(f"ESI error budget low ({self._remain} left): waiting {delay:.1f}s for the window to reset")
            self._sleep(delay + 0.5)
        with self._lock:
            if self._clock() >= self._reset_at:
                self._remain = None  # a fresh window; the next response tells the real figure


class ApiHttpClient:
    """Thread-safe GETs against one API base URL."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        max_connections: int,
        retry: RetryPolicy,
        gate: ErrorLimitGate | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        budget: "PostgresBudget | None" = None,
        classifier: ErrorClassifier | None = None,
        auth: httpx.Auth | None = None,
        base_url_setting: str = "the API's base URL",
    ):
        self.retry = retry
        self.gate = gate  # an API-wide error budget (ESI); None for APIs without one
        self.budget = budget  # shared across processes; without it only this process's view counts
        self.classifier = classifier or ErrorClassifier()
        self.base_url_setting = base_url_setting
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=base_url,
            headers=dict(headers),
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport or PooledTransport(max_connections),
            auth=auth,  # the API's own key, when every request carries it
        )

    @property
    def raw(self) -> httpx.Client:
        """The underlying httpx client, for one-off calls outside walks (a status probe)."""
        return self._client

    @property
    def base_url(self) -> str:
        return str(self._client.base_url).rstrip("/")

    def close(self) -> None:
        self._client.close()
        if self.budget is not None:
            self.budget.close()

    def get_page(
        self,
        path: str,
        params: Mapping[str, Any],
        page: int | None,
        etag: str | None,
        log: Log = DEFAULT_LOG,
        on_retry: Callable[[], None] = lambda: None,
        headers: Mapping[str, str] | None = None,
        budget_key: "BudgetKey | None" = None,
        alive: Callable[[], None] | None = None,
        auth: httpx.Auth | None = None,
        page_params: Mapping[str, Any] | None = None,
        max_budget_wait_s: float | None = None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> PageResponse:
        """GET one page; retries transient failures, raises a precise error otherwise.
        `page`: the page number (sent as `page_params`, by default `?page=N`); `auth`: a per-request
        credential (a character's token, a seller's); `alive()` raises when the caller gave up (a
        stopped walk): every wait (retry backoff, Retry-After, budgets) checks it at least twice a
        second, so nothing outlives its walk. `decode` reads a 200's body into `data` (default: its
        JSON; invalid JSON is a MalformedPayload either way, retried like a 5xx)."""
        sleep = self._interruptible(alive)

        def before_sleep(state: RetryCallState) -> None:
            on_retry()
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                f"GET {path}{f' page {page}' if page else ''}: {describe(exc)}; "
                f"retry {state.attempt_number}/{self.retry.max_attempts - 1} in {wait:.1f}s"
            )

        retrying = Retrying(
            retry=retry_if_exception(_is_retryable),
            stop=stop_after_attempt(self.retry.max_attempts),
            wait=self._wait,
            before_sleep=before_sleep,
            sleep=sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    if self.budget is None and self.gate is not None:
                        self.gate.wait_turn(log)
                    query = {**params, **(page_params if page_params is not None else {"page": page} if page else {})}
                    return self._get_once(path, query, page, etag, headers, budget_key, log, sleep, auth, max_budget_wait_s,
                                          decode=decode)
        except httpx.TransportError as exc:  # the last attempt: say where we were trying to go
            raise ApiUnreachable(
                f"GET {self.base_url}{path}{f' page {page}' if page else ''}: {describe(exc)} after "
                f"{self.retry.max_attempts} attempts; is {self.base_url_setting} right?"
            ) from exc
        raise AssertionError("unreachable: tenacity reraises the last error")

    def post_json(
        self,
        path: str,
        body: Any,
        log: Log = DEFAULT_LOG,
        headers: Mapping[str, str] | None = None,
        budget_key: "BudgetKey | None" = None,
        alive: Callable[[], None] | None = None,
        auth: httpx.Auth | None = None,
        max_budget_wait_s: float | None = None,
        unsent_only: bool = True,
    ) -> PageResponse:
        """POST a JSON body (SP-API createReport) with the GET path's budget, classifier and retry
        waits; any 2xx is success (`data`: its JSON, None when empty). A POST is not idempotent:
        with `unsent_only` only failures the server did not act on are retried (429, a refused
        connection); a 5xx or a timeout is raised for the caller to check before sending again."""
        sleep = self._interruptible(alive)

        def retryable(exc: BaseException) -> bool:
            if unsent_only:
                return isinstance(exc, (RateLimited, httpx.ConnectError, httpx.ConnectTimeout))
            return _is_retryable(exc)

        def before_sleep(state: RetryCallState) -> None:
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(f"POST {path}: {describe(state.outcome.exception() if state.outcome else None)}; "
                        f"retry {state.attempt_number}/{self.retry.max_attempts - 1} in {wait:.1f}s")

        retrying = Retrying(retry=retry_if_exception(retryable), stop=stop_after_attempt(self.retry.max_attempts),
                            wait=self._wait, before_sleep=before_sleep, sleep=sleep, reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    return self._get_once(path, {}, None, None, headers, budget_key, log, sleep, auth, max_budget_wait_s,
                                          method="POST", json_body=body)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"POST {self.base_url}{path}: {describe(exc)}; is {self.base_url_setting} right?") from exc
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _interruptible(self, alive: Callable[[], None] | None) -> Callable[[float], None]:
        if alive is None:
            return self._sleep

        def sleep(seconds: float) -> None:
            left = seconds
            while left > 0:
                alive()
                step = min(left, 0.5)
                self._sleep(step)
                left -= step
            alive()

        return sleep

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, HttpStatusError) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), self.retry.max_retry_after_s)
        if isinstance(exc, RateLimited) and self.budget is None:  # a bare 429 and nobody else pacing: wait a while
            return self.classifier.default_retry_after_s
        # (with a shared budget, a bare 429 latched its bucket with backoff: the next attempt waits there)
        return wait_exponential_jitter(multiplier=self.retry.initial_wait_s, max=self.retry.max_wait_s)(state)

    def _get_once(
        self, path: str, query: Mapping[str, Any], page: int | None, etag: str | None, extra: Mapping[str, str] | None,
        budget_key: "BudgetKey | None" = None, log: Log = DEFAULT_LOG, sleep: Callable[[float], None] | None = None,
        auth: httpx.Auth | None = None, max_budget_wait_s: float | None = None, method: str = "GET", json_body: Any = None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> PageResponse:
        headers = dict(extra or {})
        if etag:
            headers["If-None-Match"] = etag
        reservation = (self.budget.before_request(budget_key, log, sleep, max_wait_s=max_budget_wait_s)
                       if self.budget and budget_key else None)
        try:
            response = self._client.request(method, path, params=query, headers=headers, auth=auth or httpx.USE_CLIENT_DEFAULT,
                                            **({"json": json_body} if method != "GET" else {}))
        except httpx.TransportError:
            if reservation:
                self.budget.after_response(reservation, None, {}, path)  # type: ignore[union-attr]
            raise
        except BaseException:  # cancelled or interrupted: no response to learn from
            if reservation:
                self.budget.release(reservation)  # type: ignore[union-attr]
            raise
        if reservation:
            self.budget.after_response(reservation, response.status_code, response.headers, path)  # type: ignore[union-attr]
        if self.gate is not None:
            self.gate.observe(response.headers)
        status = response.status_code
        if status == 304 or status == 200 or (method != "GET" and 200 <= status < 300):  # createReport: 202
            data = None
            if status != 304 and (method == "GET" or response.content):
                try:
                    data = (decode or orjson.loads)(response.content)
                except orjson.JSONDecodeError as exc:
                    raise MalformedPayload(
                        f"{method} {path}{f' page {page}' if page else ''}: body is not valid JSON ({exc}; {len(response.content)} bytes)"
                    ) from None
            return PageResponse(
                page=page or 1,
                status=status,
                etag=response.headers.get("etag"),
                last_modified=_http_date(response.headers.get("last-modified")),
                expires=_http_date(response.headers.get("expires")),
                headers=response.headers,
                data=data,
                body_bytes=len(response.content),
            )
        error = self.classifier.error(response, f"{path}{f' (page {page})' if page else ''}", page)
        if method != "GET":  # classifiers word every error as a GET's
            error.method, error.args = method, (str(error).replace("GET ", f"{method} ", 1),)
        if isinstance(error, ErrorLimited) and self.gate is not None:
            self.gate.trip(error.reset_s)
        raise error


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, (TransientHttpError, httpx.TransportError, MalformedPayload))


def describe(exc: BaseException | None) -> str:
    """A failed attempt in a few words, for log lines (no secrets: our errors carry none)."""
    if isinstance(exc, HttpStatusError):
        return f"HTTP {exc.status} ({exc.detail})"
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if exc else "unknown error"


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
