"""Pure-logic tests of the API layer over httpx.MockTransport (no network): retries, waits,
error budget, page-walk consistency. The same behaviour is tested end to end over real HTTP
against the sandbox in test_market_orders_e2e.py."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, Callable

import httpx
import orjson
import pytest

from sync_assets.core.errors import InconsistentSnapshot, MalformedPayload, PermanentHttpError, TransientHttpError
from sync_assets.fetch.frames import rows_to_frame
from sync_assets.apis.esi.spec import EsiErrors
from sync_assets.fetch.http import ApiHttpClient, ErrorLimitGate, RetryPolicy
from sync_assets.core.paging import X_PAGES
from sync_assets.fetch.pagination import PageWalker, WalkLimits
from sync_assets.core.snapshot import FetchStats
from sync_assets.apis.esi.datasets import MARKET_PRICES


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.lines: list[str] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def info(self, msg: str) -> None:
        self.lines.append(msg)

    warning = info


def client(handler: Callable[[httpx.Request], httpx.Response], rec: Recorder, attempts: int = 4, floor: int = 10) -> ApiHttpClient:
    return ApiHttpClient(
        base_url="http://esi.test",
        headers={"User-Agent": "test"},
        timeout=httpx.Timeout(5.0),
        max_connections=4,
        retry=RetryPolicy(max_attempts=attempts, initial_wait_s=0.25, max_wait_s=1.0),
        gate=ErrorLimitGate(floor, sleep=rec.sleep),
        transport=httpx.MockTransport(handler),
        sleep=rec.sleep,
        classifier=EsiErrors(),
    )


def sequence(*responses: httpx.Response) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return handler, seen


def ok(body: object = (), **headers: str) -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps(list(body)), headers={"content-type": "application/json", **headers})


def test_transient_5xx_is_retried_with_backoff_and_logged() -> None:
    rec = Recorder()
    html = httpx.Response(502, text="<html><head><title>502 Bad Gateway</title></head></html>", headers={"content-type": "text/html"})
    handler, seen = sequence(html, httpx.Response(503, json={"error": "The datasource tranquility is temporarily unavailable"}), ok([{"a": 1}]))
    retries: list[int] = []
    page = client(handler, rec).get_page("/markets/prices", {}, None, None, rec, on_retry=lambda: retries.append(1))
    assert page.status == 200 and page.data == [{"a": 1}]
    assert len(seen) == 3 and len(retries) == 2
    assert len(rec.sleeps) == 2 and all(0 < s <= 1.0 for s in rec.sleeps)
    assert "HTML error page: 502 Bad Gateway" in rec.lines[0]
    assert "temporarily unavailable" in rec.lines[1]


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_permanent_errors_are_not_retried(status: int) -> None:
    rec = Recorder()
    handler, seen = sequence(httpx.Response(status, json={"error": "Character does not have required role(s)"}))
    with pytest.raises(PermanentHttpError, match=f"HTTP {status}: Character does not have required role"):
        client(handler, rec).get_page("/x", {}, None, None, rec)
    assert len(seen) == 1 and rec.sleeps == []


def test_retry_after_is_honoured_on_429() -> None:
    rec = Recorder()
    handler, _ = sequence(httpx.Response(429, headers={"retry-after": "7"}, json={"error": "Too many requests"}), ok())
    client(handler, rec).get_page("/x", {}, None, None, rec)
    assert rec.sleeps == [7.0]


def test_420_trips_the_error_gate_and_waits_for_the_reset() -> None:
    rec = Recorder()
    limited = httpx.Response(420, json={"error": "This software has exceeded the error limit for ESI."},
                             headers={"x-esi-error-limit-remain": "0", "x-esi-error-limit-reset": "12"})
    handler, _ = sequence(limited, ok())
    client(handler, rec).get_page("/x", {}, None, None, rec)
    assert 13.0 in rec.sleeps  # Retry wait = reset + 1
    # the gate itself also held the next request until the window reset
    assert any(11.0 <= s <= 12.6 for s in rec.sleeps if s != 13.0)


def test_low_error_budget_makes_the_next_request_wait_for_the_window() -> None:
    rec = Recorder()
    handler, seen = sequence(ok(**{"x-esi-error-limit-remain": "5", "x-esi-error-limit-reset": "30"}), ok())
    c = client(handler, rec, floor=10)
    c.get_page("/x", {}, None, None, rec)
    assert rec.sleeps == []
    c.get_page("/x", {}, None, None, rec)
    assert len(seen) == 2 and len(rec.sleeps) == 1 and 29.0 <= rec.sleeps[0] <= 30.6
    assert "error budget low" in rec.lines[0]


def test_retries_are_bounded_then_the_last_error_is_raised() -> None:
    rec = Recorder()
    handler, seen = sequence(*[httpx.Response(504, json={"error": "Timeout contacting tranquility", "timeout": 10})] * 3)
    with pytest.raises(TransientHttpError, match="HTTP 504: Timeout contacting tranquility"):
        client(handler, rec, attempts=3).get_page("/x", {}, None, None, rec)
    assert len(seen) == 3


def test_truncated_json_is_retried_then_reported_clearly() -> None:
    rec = Recorder()
    bad = httpx.Response(200, content=b'[{"type_id": 1, "adjusted_pri', headers={"content-type": "application/json"})
    handler, seen = sequence(bad, bad)
    with pytest.raises(MalformedPayload, match="body is not valid JSON"):
        client(handler, rec, attempts=2).get_page("/markets/prices", {}, None, None, rec)
    assert len(seen) == 2


def test_wrong_typed_rows_name_the_field() -> None:
    with pytest.raises(MalformedPayload, match="'adjusted_price' is not float64: str value '1.5'"):
        rows_to_frame([{"type_id": 34, "adjusted_price": "1.5"}], MARKET_PRICES.columns, "prices page 1")
    with pytest.raises(MalformedPayload, match="required field 'type_id' missing"):
        rows_to_frame([{"adjusted_price": 1.5}], MARKET_PRICES.columns, "prices page 1")
    with pytest.raises(MalformedPayload, match="expected a JSON array"):
        rows_to_frame({"error": "nope"}, MARKET_PRICES.columns, "prices page 1")


# --- page walks -------------------------------------------------------------------------------

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


class FakePagedApi:
    """Pages with per-page ETags; `lm_for(page, call)` lets a test move pages to another snapshot."""

    def __init__(self, pages: int, lm_for: Callable[[int, int], datetime] = lambda page, call: T0):
        self.pages, self.lm_for, self.calls = pages, lm_for, 0
        self.requests: list[tuple[int, str | None]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        page = int(request.url.params.get("page", "1"))
        lm = self.lm_for(page, self.calls)
        etag = f'"{page}-{lm.timestamp():.0f}"'
        self.requests.append((page, request.headers.get("if-none-match")))
        headers = {"etag": etag, "last-modified": format_datetime(lm, usegmt=True),
                   "expires": format_datetime(lm + timedelta(seconds=300), usegmt=True), "x-pages": str(self.pages)}
        if request.headers.get("if-none-match") == etag:
            return httpx.Response(304, headers=headers)
        return httpx.Response(200, content=orjson.dumps([{"n": page}]), headers={**headers, "content-type": "application/json"})


def walker(api: FakePagedApi, rec: Recorder, max_walks: int = 3) -> tuple[PageWalker, FetchStats]:
    stats = FetchStats()
    w = PageWalker(client(api.handler, rec), "/p", {}, paginator=X_PAGES, max_concurrency=4,
                   limits=WalkLimits(max_walks=max_walks), expiry_guard_s=0, parse=lambda page, data: data, stats=stats,
                   log=rec, label="test")
    return w, stats


def test_walk_fetches_every_page_and_logs_progress() -> None:
    rec = Recorder()
    api = FakePagedApi(25)
    w, stats = walker(api, rec)
    result = w.walk(None)
    assert [p[0]["n"] for p in result.parsed] == list(range(1, 26))
    assert stats.status_200 == 25 and stats.walks == 1
    assert rec.lines[-1].startswith("test: page 25/25 (25×200, 0×304")


def test_all_304_is_not_modified_and_carries_no_body() -> None:
    rec = Recorder()
    api = FakePagedApi(5)
    w, _ = walker(api, rec)
    first = w.walk(None)
    etags = [r.etag for r in first.responses]
    w2, stats = walker(api, rec)
    again = w2.walk(etags)
    assert again.all_not_modified and again.parsed == []
    assert stats.status_304 == 5 and stats.body_bytes == 0


def test_mixed_304_and_200_refetches_every_page_unconditionally() -> None:
    rec = Recorder()
    changed = T0 + timedelta(minutes=5)
    api = FakePagedApi(4)
    w, _ = walker(api, rec)
    etags = [r.etag for r in w.walk(None).responses]
    # page 3 now belongs to a new snapshot while the others still answer 304... then all move
    api.lm_for = lambda page, call: changed if (page == 3 or call > api.calls_at_switch) else T0
    api.calls_at_switch = api.calls + 4
    w2, stats = walker(api, rec)
    result = w2.walk(etags)
    assert stats.walks >= 2 and len(result.parsed) == 4
    assert all(r.status == 200 for r in result.responses)
    assert all(etag is None for _, etag in api.requests[-4:])  # the refetch was unconditional


def test_pages_from_different_snapshots_fail_after_bounded_walks() -> None:
    rec = Recorder()
    api = FakePagedApi(6, lm_for=lambda page, call: T0 + timedelta(seconds=page % 2))
    w, stats = walker(api, rec, max_walks=3)
    with pytest.raises(InconsistentSnapshot, match="no consistent snapshot after 3 walks"):
        w.walk(None)
    assert stats.walks == 3


def test_pages_being_parsed_do_not_hold_request_slots() -> None:
    """At most `max_concurrency` requests are in flight, and a page being parsed does not hold one
    of them: while pages wait in the parser, the walk keeps asking for the next ones."""
    import threading

    rec, api = Recorder(), FakePagedApi(40)
    lock, in_flight, peak = threading.Lock(), [0], [0]
    release = threading.Event()
    requested_while_parsing = []

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            threading.Event().wait(0.005)
            return api.handler(request)
        finally:
            with lock:
                in_flight[0] -= 1

    def parse(page: int, data):
        if page in (2, 3, 4, 5) and not release.wait(30):  # four pages stuck in the parser (max_concurrency is 4)
            raise AssertionError("no page was fetched while four were being parsed")
        elif page > 5 and not release.is_set():
            requested_while_parsing.append(page)
            if len(requested_while_parsing) == 4:
                release.set()
        return data

    stats = FetchStats()
    w = PageWalker(client(handler, rec), "/p", {}, paginator=X_PAGES, max_concurrency=4,
                   limits=WalkLimits(max_walks=1, pause_s=0), expiry_guard_s=0, parse=parse, stats=stats, log=rec, label="test")
    result = w.walk(None)
    assert [p[0]["n"] for p in result.parsed] == list(range(1, 41))
    assert peak[0] <= 4  # never more requests at once than max_concurrency
    assert len(requested_while_parsing) >= 4  # pages were fetched and parsed while four sat in the parser


def test_pages_fetched_while_the_parser_libraries_import_are_parsed_once_they_are_there(monkeypatch) -> None:
    """The run's first walk starts while pandas is still importing on a background thread: its
    workers go on fetching instead of waiting for the import (up to twice `max_concurrency` pages
    left unparsed), and the walk's own thread parses those pages once the import is done. Every
    page is parsed exactly once, in place; a page whose body fails to parse then is refetched."""
    import sync_assets.fetch.pagination as pagination
    from sync_assets.core.errors import MalformedPayload

    importing = threading.Event()
    importing.set()
    monkeypatch.setattr(pagination, "importing", importing.is_set)
    parsed_by: dict[int, list[str]] = {}
    fetched_before_import: list[int] = []
    walking = threading.current_thread().name
    refused: list[int] = []  # the first page left for the walk's thread fails to parse: it is asked again

    def parse(page: int, data: Any) -> Any:
        parsed_by.setdefault(page, []).append(threading.current_thread().name)
        if threading.current_thread().name == walking and not refused:
            refused.append(page)
            raise MalformedPayload(f"page {page}: not what the declaration says")
        return data

    api = FakePagedApi(40)
    original = api.handler

    def handler(request: httpx.Request) -> httpx.Response:
        if importing.is_set():
            fetched_before_import.append(int(request.url.params.get("page", "1")))
            if len(fetched_before_import) == 2 * 4 + 1 + 1:  # page 1, the pages left unparsed, one more
                importing.clear()  # the import ends: workers parse their own pages again
        return original(request)

    rec = Recorder()
    w = PageWalker(client(handler, rec), "/p", {}, paginator=X_PAGES, max_concurrency=4,
                   limits=WalkLimits(max_walks=1, pause_s=0), expiry_guard_s=0, parse=parse, stats=FetchStats(), log=rec, label="test")
    result = w.walk(None)
    assert [p[0]["n"] for p in result.parsed] == list(range(1, 41))
    assert len(refused) == 1
    assert {page: len(threads) for page, threads in parsed_by.items()} == {p: 1 + (p in refused) for p in range(1, 41)}
    left = [p for p in fetched_before_import[1:] if parsed_by[p][0] == walking]
    assert 1 <= len(left) <= 2 * 4  # parsed by the walk's thread, never more than the bound
    assert all(threads[-1] != walking for page, threads in parsed_by.items() if page not in left)  # the rest by workers
    assert [page for page, _ in api.requests].count(refused[0]) == 2  # the page refused once was fetched again
