"""One GET, done right: pooled httpx, tenacity retries, ESI's error budget, Retry-After."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

import httpx
import orjson
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from ..core.errors import (
    ApiUnreachable,
    HttpStatusError,
    MalformedPayload,
    PageOutOfRange,
    PermanentHttpError,
    TransientHttpError,
)

if TYPE_CHECKING:
    from .budget import BudgetKey, PostgresBudget

RETRYABLE_STATUSES = frozenset({500, 502, 503, 504, 520})
ERROR_LIMITED = 420  # ESI: the error budget is exhausted, every route answers 420 until the reset
RATE_LIMITED = 429


class Log(Protocol):
    def info(self, msg: str) -> Any: ...
    def warning(self, msg: str) -> Any: ...


DEFAULT_LOG: Log = logging.getLogger("sync_assets.api")


@dataclass
class PageResponse:
    page: int
    status: int  # 200 or 304
    etag: str | None
    last_modified: datetime | None
    expires: datetime | None
    x_pages: int | None
    data: Any  # parsed JSON of a 200, None for a 304
    body_bytes: int


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_wait_s: float = 0.5
    max_wait_s: float = 30.0
    max_retry_after_s: float = 900.0  # never sleep longer than this on one Retry-After


class ErrorLimitGate:
    """ESI's error budget as the server last reported it (X-ESI-Error-Limit-Remain/Reset).

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
        gate: ErrorLimitGate,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        budget: "PostgresBudget | None" = None,
    ):
        self.retry = retry
        self.gate = gate
        self.budget = budget  # shared across processes; without it only this process's view counts
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=base_url,
            headers=dict(headers),
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

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
    ) -> PageResponse:
        """GET one page; retries transient failures, raises a precise error otherwise.
        `alive()` raises when the caller gave up (a stopped walk): every wait (retry backoff,
        Retry-After, budgets) checks it at least twice a second, so nothing outlives its walk."""
        sleep = self._interruptible(alive)

        def before_sleep(state: RetryCallState) -> None:
            on_retry()
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                f"GET {path}{f' page {page}' if page else ''}: {_describe(exc)}; "
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
                    if self.budget is None:
                        self.gate.wait_turn(log)
                    return self._get_once(path, params, page, etag, headers, budget_key, log, sleep)
        except httpx.TransportError as exc:  # the last attempt: say where we were trying to go
            raise ApiUnreachable(
                f"GET {self.base_url}{path}{f' page {page}' if page else ''}: {_describe(exc)} after "
                f"{self.retry.max_attempts} attempts; is the API's base URL right (SYNC_ASSETS_ESI_URL for ESI)?"
            ) from exc
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
        return wait_exponential_jitter(initial=self.retry.initial_wait_s, max=self.retry.max_wait_s)(state)

    def _get_once(
        self, path: str, params: Mapping[str, Any], page: int | None, etag: str | None, extra: Mapping[str, str] | None,
        budget_key: "BudgetKey | None" = None, log: Log = DEFAULT_LOG, sleep: Callable[[float], None] | None = None,
    ) -> PageResponse:
        query = dict(params)
        if page is not None:
            query["page"] = page
        headers = dict(extra or {})
        if etag:
            headers["If-None-Match"] = etag
        reservation = self.budget.before_request(budget_key, log, sleep) if self.budget and budget_key else None
        try:
            response = self._client.get(path, params=query, headers=headers)
        except httpx.TransportError:
            if reservation:
                self.budget.after_response(reservation, None, {})  # type: ignore[union-attr]
            raise
        except BaseException:  # cancelled or interrupted: no response to learn from
            if reservation:
                self.budget.release(reservation)  # type: ignore[union-attr]
            raise
        if reservation:
            self.budget.after_response(reservation, response.status_code, response.headers)  # type: ignore[union-attr]
        self.gate.observe(response.headers)
        status = response.status_code
        if status == 304 or status == 200:
            data = None
            if status == 200:
                try:
                    data = orjson.loads(response.content)
                except orjson.JSONDecodeError as exc:
                    raise MalformedPayload(
                        f"GET {path}{f' page {page}' if page else ''}: body is not valid JSON ({exc}; {len(response.content)} bytes)"
                    ) from None
            return PageResponse(
                page=page or 1,
                status=status,
                etag=response.headers.get("etag"),
                last_modified=_http_date(response.headers.get("last-modified")),
                expires=_http_date(response.headers.get("expires")),
                x_pages=int_or_none(response.headers.get("x-pages")),
                data=data,
                body_bytes=len(response.content),
            )
        raise self._status_error(response, path, page)

    def _status_error(self, response: httpx.Response, path: str, page: int | None) -> HttpStatusError:
        status, detail = response.status_code, _error_detail(response)
        where = f"{path}{f' (page {page})' if page else ''}"
        retry_after = float_or_none(response.headers.get("retry-after"))
        if status == ERROR_LIMITED:
            reset = float_or_none(response.headers.get("x-esi-error-limit-reset")) or 60.0
            self.gate.trip(reset)
            return TransientHttpError("GET", where, status, detail, retry_after=reset + 1)
        if status == RATE_LIMITED:
            return TransientHttpError("GET", where, status, detail, retry_after=retry_after if retry_after is not None else 10.0)
        if status in RETRYABLE_STATUSES:
            return TransientHttpError("GET", where, status, detail, retry_after=retry_after)
        if status == 404 and page and page > 1 and "page does not exist" in detail.lower():
            return PageOutOfRange("GET", where, status, detail)
        return PermanentHttpError("GET", where, status, detail)


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, (TransientHttpError, httpx.TransportError, MalformedPayload))


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, HttpStatusError):
        return f"HTTP {exc.status} ({exc.detail})"
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if exc else "unknown error"


def _error_detail(response: httpx.Response) -> str:
    """The API's own error text: ESI's {"error": ...}, or the title of an HTML error page."""
    content_type = response.headers.get("content-type", "")
    text = response.text[:2000]
    if "json" in content_type:
        try:
            body = orjson.loads(response.content)
            if isinstance(body, dict) and "error" in body:
                return str(body["error"])[:300]
        except orjson.JSONDecodeError:
            pass
    if "<html" in text.lower():
        start, end = text.lower().find("<title>"), text.lower().find("</title>")
        title = text[start + 7 : end].strip() if 0 <= start < end else "no title"
        return f"HTML error page: {title}"
    return text[:300].strip() or response.reason_phrase


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
