"""A failed or interrupted page walk stops its workers: no queued page is asked, no retry is waited
for, and the walk does not wait for the requests still in flight (over httpx.MockTransport)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from email.utils import format_datetime

import httpx
import orjson
import pytest

from sync_assets.core.errors import PermanentHttpError
from sync_assets.apis.esi.spec import EsiErrors
from sync_assets.fetch.http import ApiHttpClient, ErrorLimitGate, RetryPolicy
from sync_assets.core.paging import X_PAGES, FromId
from sync_assets.fetch.pagination import FromIdWalker, PageWalker, WalkCancelled, WalkLimits
from sync_assets.core.snapshot import FetchStats

from .test_api_unit import T0, Recorder

PAGES = 40


class HeldApi:
    """Page 1 answers at once; page `fail_page` answers 404; every other page is held until released
    (or answers 503 when `flaky`, to be retried)."""

    def __init__(self, fail_page: int = 3, flaky: bool = False, delay: float | None = None):
        self.fail_page, self.flaky, self.delay = fail_page, flaky, delay
        self.release = threading.Event()
        self.asked: list[int] = []
        self.lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        with self.lock:
            self.asked.append(page)
        headers = {"etag": f'"{page}"', "last-modified": format_datetime(T0, usegmt=True),
                   "expires": format_datetime(T0 + timedelta(days=3650), usegmt=True), "x-pages": str(PAGES)}
        if page == self.fail_page:
            time.sleep(0.05)  # the other workers are in flight by then
            return httpx.Response(404, content=b'{"error": "gone"}', headers={"content-type": "application/json"})
        if page != 1:
            if self.flaky:
                return httpx.Response(503, content=b'{"error": "busy"}', headers={"content-type": "application/json"})
            if self.delay is not None:
                time.sleep(self.delay)
            else:
                self.release.wait(10)
        return httpx.Response(200, content=orjson.dumps([{"n": page}]), headers={**headers, "content-type": "application/json"})


def _client(api: HeldApi, sleep=time.sleep) -> ApiHttpClient:
    return ApiHttpClient(
        base_url="http://esi.test", headers={}, timeout=httpx.Timeout(5.0), max_connections=8,
        retry=RetryPolicy(max_attempts=5, initial_wait_s=0.2, max_wait_s=0.2), gate=ErrorLimitGate(10, sleep=sleep),
        transport=httpx.MockTransport(api.handler), sleep=sleep, classifier=EsiErrors(),
    )


def _walker(http: ApiHttpClient, stats: FetchStats) -> PageWalker:
    return PageWalker(http, "/p", {}, paginator=X_PAGES, max_concurrency=4, limits=WalkLimits(max_walks=1), expiry_guard_s=0,
                        parse=lambda page, data: data, stats=stats, log=Recorder(), label="test")


def test_a_failed_page_stops_the_walk_without_waiting_for_pages_in_flight() -> None:
    api = HeldApi(fail_page=3)
    try:
        started = time.monotonic()
        with pytest.raises(PermanentHttpError, match="404"):
            _walker(_client(api), FetchStats()).walk(None)
        assert time.monotonic() - started < 5, "the walk waited for the pages still in flight"
        asked_at_failure = len(api.asked)
    finally:
        api.release.set()
    time.sleep(0.3)  # the held workers finish their request and must not start another one
    assert asked_at_failure <= 1 + 4 + 1  # page 1, at most 4 in flight, at most one worker between two checks
    assert len(api.asked) == asked_at_failure, f"pages asked after the walk failed: {api.asked[asked_at_failure:]}"
    assert len(api.asked) < PAGES


class InterruptingLog(Recorder):
    """Raises in the walking thread, as Dagster's termination (DagsterExecutionInterruptedError) does."""

    def info(self, msg: str) -> None:
        super().info(msg)
        if "page 8/" in msg:
            raise KeyboardInterrupt


def test_an_interrupt_in_the_walking_thread_stops_the_workers() -> None:
    api = HeldApi(fail_page=0, delay=0.05)
    w = PageWalker(_client(api), "/p", {}, paginator=X_PAGES, max_concurrency=4, limits=WalkLimits(max_walks=3), expiry_guard_s=0,
                     parse=lambda page, data: data, stats=FetchStats(), log=InterruptingLog(), label="test")
    with pytest.raises(KeyboardInterrupt):
        w.walk(None)
    asked = len(api.asked)
    time.sleep(0.3)  # the requests in flight end; no worker starts another
    assert len(api.asked) - asked <= 4
    assert len(api.asked) < 8 + 4 + 4, api.asked


def test_an_interrupted_walk_drops_queued_pages_and_retries_nothing() -> None:
    api = HeldApi(fail_page=0, flaky=True)  # every page after 1 answers 503: retried with a wait
    http = _client(api)
    stats = FetchStats()
    w = _walker(http, stats)
    result: dict[str, BaseException] = {}

    def run() -> None:
        try:
            w.walk(None)
        except BaseException as exc:  # noqa: BLE001 - what the walk ended with
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 5
    while len(api.asked) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    asked_at_cancel = len(api.asked)
    w.cancel()  # from another thread, as a terminating run would
    thread.join(5)
    assert not thread.is_alive(), "the walk did not end"
    assert isinstance(result.get("error"), WalkCancelled), result
    time.sleep(0.5)  # longer than the retry wait
    settled = len(api.asked)
    time.sleep(0.5)
    assert len(api.asked) == settled, "workers kept asking after the cancel"
    # a retry whose wait had begun before the cancel may still be sent (one per worker); nothing else
    assert settled - asked_at_cancel <= 4, api.asked[asked_at_cancel:]
    assert set(api.asked) < set(range(1, PAGES + 1)), "queued pages were asked after the cancel"


def test_a_cancelled_from_id_walk_asks_nothing() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"[]", headers={"content-type": "application/json"})

    rec = Recorder()
    http = ApiHttpClient(base_url="http://esi.test", headers={}, timeout=httpx.Timeout(5.0), max_connections=2,
                         retry=RetryPolicy(max_attempts=2, initial_wait_s=0, max_wait_s=0), gate=ErrorLimitGate(10, sleep=rec.sleep),
                         transport=httpx.MockTransport(handler), sleep=rec.sleep, classifier=EsiErrors())
    w = FromIdWalker(http, "/t", {}, paginator=FromId("id"), parse=lambda page, data: data, stats=FetchStats(), log=rec, label="t")
    w.cancel()
    with pytest.raises(WalkCancelled):
        w.walk(None, None)
    assert seen == []
