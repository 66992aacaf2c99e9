"""When page 1 alone stands for an unchanged paged snapshot, and when it does not: its 304 must carry
the stored Last-Modified, a new Expires and the stored page count (ESI: a new Expires with the same
Last-Modified means unchanged content). A stale edge's bare 304, an old Expires or another page count
make the walk ask every page, conditionally. After waiting for an expiring snapshot the walk stays
conditional. (httpx.MockTransport: pure walk logic.)"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import orjson

from sync_assets.core.paging import X_PAGES
from sync_assets.core.snapshot import FetchStats
from sync_assets.fetch.pagination import PageWalker, Unchanged, WalkLimits

from .test_api_unit import Recorder, client

LM = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


class CachedApi:
    """Pages of one snapshot (Last-Modified LM) whose cache is renewed: every answer carries a fresh
    Expires `ttl` seconds ahead. `bare_304`: a stale edge answers 304 with no other header."""

    def __init__(self, pages: int, ttl: float = 300.0, bare_304: bool = False):
        self.pages, self.ttl, self.bare_304 = pages, ttl, bare_304
        self.requests: list[tuple[int, str | None]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        sent = request.headers.get("if-none-match")
        self.requests.append((page, sent))
        etag = f'"p{page}"'
        expires = datetime.now(timezone.utc) + timedelta(seconds=self.ttl)
        headers = {"etag": etag, "last-modified": format_datetime(LM, usegmt=True),
                   "expires": format_datetime(expires, usegmt=True), "x-pages": str(self.pages)}
        if sent == etag:
            return httpx.Response(304, headers={"etag": etag} if self.bare_304 else headers)
        return httpx.Response(200, content=orjson.dumps([{"n": page}]), headers={**headers, "content-type": "application/json"})


def walk(api: CachedApi, etags=None, unchanged=None, guard_s: float = 0.0):
    rec, stats = Recorder(), FetchStats()
    walker = PageWalker(client(api.handler, rec), "/p", {}, paginator=X_PAGES, max_concurrency=4, limits=WalkLimits(),
                        expiry_guard_s=guard_s, parse=lambda page, data: data, stats=stats, log=rec, label="t")
    return walker.walk(etags, unchanged), rec


def stored(api: CachedApi):
    first, _ = walk(api)
    etags = [r.etag for r in first.responses]
    api.requests.clear()
    return etags, Unchanged(LM, first.responses[0].expires - timedelta(seconds=1), len(etags))


def test_page_one_stands_for_the_unchanged_snapshot() -> None:
    api = CachedApi(8)
    etags, unchanged = stored(api)
    result, rec = walk(api, etags, unchanged)
    assert result.page_one_only and api.requests == [(1, '"p1"')]
    assert any("the 8 pages are the stored snapshot" in line for line in rec.lines)


def test_without_the_proof_every_page_is_asked_conditionally() -> None:
    api = CachedApi(8)
    etags, unchanged = stored(api)
    for case in (
        Unchanged(LM - timedelta(seconds=1), unchanged.expires_at, 8),  # another Last-Modified stored
        Unchanged(LM, datetime.now(timezone.utc) + timedelta(days=1), 8),  # Expires not renewed
        Unchanged(LM, unchanged.expires_at, 7),  # another page count stored
    ):
        api.requests.clear()
        result, _ = walk(api, etags, case)
        assert not result.page_one_only and result.all_not_modified
        assert sorted(api.requests) == [(p, f'"p{p}"') for p in range(1, 9)]


def test_a_stale_edges_bare_304_proves_nothing() -> None:
    api = CachedApi(8)
    etags, unchanged = stored(api)
    api.bare_304 = True
    result, _ = walk(api, etags, unchanged)
    assert not result.page_one_only and len(api.requests) == 8


def test_after_waiting_for_the_next_snapshot_the_walk_stays_conditional() -> None:
    api = CachedApi(4, ttl=1.5)  # page 1 expires within the 3 s guard: the walk waits for the next snapshot
    etags, _ = stored(api)
    api.ttl = 1.5
    result, rec = walk(api, etags, None, guard_s=3.0)
    assert any("waiting for the next snapshot" in line for line in rec.lines)
    assert result.all_not_modified and all(sent is not None for _, sent in api.requests)
    assert len(api.requests) == 5  # page 1 twice (before and after the wait), then pages 2-4: all conditional
