"""The paginator strategies on httpx.MockTransport (pure walk logic): a page count read from the
body, next tokens (sent with or without the first call's parameters, never twice, restarted when
they expire), and the error classifier of each body shape."""

from __future__ import annotations

import threading
from typing import Any, Callable

import httpx
import orjson
import pytest

from sync_assets.core.errors import (
    Forbidden, InconsistentSnapshot, MalformedPayload, PermanentHttpError, RateLimited, TransientHttpError, Unauthorized,
)
from sync_assets.core.paging import NextToken, PageNumbers
from sync_assets.core.snapshot import FetchStats
from sync_assets.fetch.auth import ApiKeyHeader, RefreshingToken
from sync_assets.fetch.errors import ErrorClassifier
from sync_assets.fetch.http import ApiHttpClient, RetryPolicy
from sync_assets.fetch.pagination import NextTokenWalker, PageWalker, WalkLimits


class Quiet:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)

    def warning(self, msg: str) -> None:
        self.lines.append(msg)


def client(handler: Callable[[httpx.Request], httpx.Response], auth: httpx.Auth | None = None) -> ApiHttpClient:
    return ApiHttpClient("http://api.test", {}, httpx.Timeout(5.0), 4, RetryPolicy(max_attempts=2, initial_wait_s=0, max_wait_s=0),
                         transport=httpx.MockTransport(handler), sleep=lambda s: None, auth=auth)


def json(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), headers={"content-type": "application/json", **headers})


def common(log: Quiet) -> dict[str, Any]:
    return dict(parse=lambda page, records: records, stats=FetchStats(), log=log, label="t",
                limits=WalkLimits(max_walks=3, pause_s=0))


LARAVEL = PageNumbers(count_header=None, count_path="meta.last_page", records_path="data", size_param="per_page", size=2)


def test_a_page_count_in_the_body_walks_every_page_with_the_declared_size() -> None:
    asked: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        asked.append(params)
        page = int(params["page"])
        return json({"data": [page * 10, page * 10 + 1], "meta": {"current_page": page, "last_page": 4}})

    result = PageWalker(client(handler), "/x", {"status": "open"}, paginator=LARAVEL, max_concurrency=3, expiry_guard_s=0,
                        **common(Quiet())).walk(None)
    assert result.parsed == [[10, 11], [20, 21], [30, 31], [40, 41]]
    assert sorted(int(p["page"]) for p in asked) == [1, 2, 3, 4]
    assert all(p["per_page"] == "2" and p["status"] == "open" for p in asked)


def test_a_page_count_that_changes_mid_walk_restarts_it_and_a_missing_one_is_a_bad_payload() -> None:
    walks = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        if page == 1:
            walks["n"] += 1
        last = 3 if (walks["n"] > 1 or page == 1) else 5  # the first walk's later pages say 5
        return json({"data": [page], "meta": {"last_page": last}})

    log = Quiet()
    result = PageWalker(client(handler), "/x", {}, paginator=LARAVEL, max_concurrency=2, expiry_guard_s=0, **common(log)).walk(None)
    assert result.parsed == [[1], [2], [3]] and walks["n"] == 2
    assert any("page count changed from 3 to 5" in line for line in log.lines)

    with pytest.raises(MalformedPayload, match="no page count"):
        PageWalker(client(lambda r: json({"data": []})), "/x", {}, paginator=LARAVEL, max_concurrency=2, expiry_guard_s=0,
                   **common(Quiet())).walk(None)


def test_page_ones_parse_does_not_hold_up_the_requests_for_the_other_pages() -> None:
    # the run's first parse may still be importing pandas: pages 2..N are asked meanwhile
    asked_last = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        if page == 4:
            asked_last.set()
        return json({"data": [page], "meta": {"last_page": 4}})

    def parse(page: int, records: Any) -> Any:
        if page == 1:  # blocks until page 4 was asked: with page 1 parsed before the others, never
            assert asked_last.wait(timeout=60), "page 1 was parsed before the other pages were asked"
        return records

    log = Quiet()
    result = PageWalker(client(handler), "/x", {}, paginator=LARAVEL, max_concurrency=2, expiry_guard_s=0,
                        **{**common(log), "parse": parse}).walk(None)
    assert result.parsed == [[1], [2], [3], [4]]


def test_a_bad_first_page_ends_the_walk_with_its_error_and_is_not_asked_again() -> None:
    asked: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        asked.append(page)
        return json({"data": "oops" if page == 1 else [page], "meta": {"last_page": 3}})

    def parse(page: int, records: Any) -> Any:
        if not isinstance(records, list):
            raise MalformedPayload(f"page {page}: expected a list")
        return records

    with pytest.raises(MalformedPayload, match="page 1: expected a list"):
        PageWalker(client(handler), "/x", {}, paginator=LARAVEL, max_concurrency=2, expiry_guard_s=0,
                   **{**common(Quiet()), "parse": parse}).walk(None)
    assert asked.count(1) == 1


TOKENS = NextToken(token_path="pagination.nextToken", param="nextToken", records_path="items")


def test_next_tokens_are_followed_with_the_first_calls_parameters_until_there_is_none() -> None:
    asked: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(dict(request.url.params))
        token = request.url.params.get("nextToken")
        following = {None: "t1", "t1": "t2", "t2": None}[token]
        return json({"items": [token or "first"], "pagination": {"nextToken": following} if following else {}})

    responses, frames = NextTokenWalker(client(handler), "/x", {"marketplaceIds": "A1"}, paginator=TOKENS,
                                        **common(Quiet())).walk()
    assert frames == [["first"], ["t1"], ["t2"]] and len(responses) == 3
    assert asked == [{"marketplaceIds": "A1"}, {"marketplaceIds": "A1", "nextToken": "t1"}, {"marketplaceIds": "A1", "nextToken": "t2"}]

    alone = NextToken(token_path="nextToken", param="nextToken", records_path="reports", only_param=True)
    asked.clear()

    def reports(request: httpx.Request) -> httpx.Response:
        asked.append(dict(request.url.params))
        return json({"reports": [1], "nextToken": None if request.url.params.get("nextToken") else "t1"})

    NextTokenWalker(client(reports), "/r", {"reportTypes": "X"}, paginator=alone, **common(Quiet())).walk()
    assert asked == [{"reportTypes": "X"}, {"nextToken": "t1"}]  # getReports: the token alone


def test_a_repeated_token_is_a_broken_cursor_not_an_endless_walk() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return json({"items": [1], "pagination": {"nextToken": "same"}})

    with pytest.raises(InconsistentSnapshot, match="repeated an earlier next token"):
        NextTokenWalker(client(handler), "/x", {}, paginator=TOKENS, **common(Quiet())).walk()


def test_an_expired_token_restarts_the_walk_from_the_first_page() -> None:
    expiring = NextToken(token_path="pagination.nextToken", param="nextToken", records_path="items", lifetime_s=30)
    calls: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.url.params.get("nextToken")
        calls.append(token)
        if token == "t1" and calls.count("t1") == 1:  # the first use of t1: too late
            return json({"errors": [{"code": "InvalidInput", "message": "Next token is invalid or expired"}]}, status=400)
        following = {None: "t1", "t1": None}[token]
        return json({"items": [token or "first"], "pagination": {"nextToken": following} if following else {}})

    log = Quiet()
    _, frames = NextTokenWalker(client(handler), "/x", {}, paginator=expiring, **common(log)).walk()
    assert frames == [["first"], ["t1"]] and calls == [None, "t1", None, "t1"]
    assert any("refused the next token" in line and "Next token is invalid or expired" in line for line in log.lines)

    clock = iter([0.0, 0.0, 100.0, 100.0, 200.0, 200.0, 300.0, 300.0, 400.0])
    slow = NextTokenWalker(client(lambda r: json({"items": [1], "pagination": {"nextToken": "t" + str(len(calls))}})), "/x", {},
                           paginator=expiring, clock=lambda: next(clock), **common(Quiet()))
    with pytest.raises(InconsistentSnapshot, match="expired"):  # every token outlived its 30 s: give up after max_walks
        slow.walk()


@pytest.mark.parametrize(("status", "body", "error", "detail"), [
    (403, {"errors": [{"code": "Unauthorized", "message": "Access to requested resource is denied.", "details": ""}]},
     Forbidden, "Unauthorized: Access to requested resource is denied."),
    (429, {"errors": [{"code": "QuotaExceeded", "message": "You exceeded your quota for the requested resource."}]},
     RateLimited, "QuotaExceeded: You exceeded your quota"),
    (401, {"message": "Unauthenticated."}, Unauthorized, "Unauthenticated."),
    (404, {"error": "Requested page does not exist!"}, PermanentHttpError, "Requested page does not exist!"),
    (503, {"message": "Service Unavailable"}, TransientHttpError, "Service Unavailable"),
])
def test_each_error_body_shape_gives_the_apis_own_text_and_the_right_error(status, body, error, detail) -> None:
    response = json(body, status=status)
    found = ErrorClassifier().error(response, "/x", None)
    assert type(found) is error and found.detail.startswith(detail)
    if status == 429:
        assert found.retry_after is None  # SP-API's 429 says nothing of when: the budget's backoff decides


def test_auth_strategies_send_their_credential_and_refresh_once_on_401_without_showing_it() -> None:
    seen: list[tuple[str | None, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers.get("x-api-key"), request.headers.get("authorization")))
        if request.headers.get("authorization") == "Bearer old":
            return json({"error": "token expired"}, status=401)
        return json([1])

    issued = iter(["old", "new"])
    token = RefreshingToken(lambda refresh: next(issued))
    key = ApiKeyHeader("X-API-KEY", "k-secret")
    page = client(handler, auth=key).get_page("/x", {}, None, None, Quiet(), auth=token)
    assert page.data == [1] and token.refreshes == 1
    assert seen == [(None, "Bearer old"), (None, "Bearer new")]  # a per-request credential replaces the client's
    client(handler, auth=key).get_page("/y", {}, None, None, Quiet())
    assert seen[-1] == ("k-secret", None)
    assert "k-secret" not in repr(key) and "new" not in repr(token) and key.principal.startswith("key:")
