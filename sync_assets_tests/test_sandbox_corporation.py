"""The ESI sandbox's authenticated corporation routes, over real HTTP (uvicorn on 127.0.0.1, httpx),
with access tokens from the sandbox's own SSO routes (refresh grant, form-encoded, Basic auth)."""

from __future__ import annotations

import contextlib
import hashlib
import math
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterator

import httpx
import numpy as np
import pandas as pd
import pytest

from sync_assets.apis.esi.sandbox.corporation import ALL_CORP_SCOPES, CORP_ROUTES, DIRECTOR_ROLES
from sync_assets.apis.esi.sandbox.esi import EsiSandbox, SandboxConfig
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.apis.esi.sandbox.sso import SsoAuthError

CORP_A, CORP_B = 98000001, 98000002
SMALL = {CORP_A: "small", CORP_B: "small"}
ERROR_PAGE = {"error": "Undefined 404 response. Original message: Requested page does not exist!"}


class FakeClock:
    def __init__(self, start: float = 1_795_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Esi:
    """A sandbox served on 127.0.0.1 plus a client that logs characters in through the SSO routes."""

    def __init__(self, sandbox: EsiSandbox, client: httpx.Client) -> None:
        self.sandbox, self.client = sandbox, client
        self.refresh_tokens: dict[int, str] = {}

    def login(self, character_id: int, refresh_token: str | None = None) -> str:
        """An access token for the character: POST /v2/oauth/token (refresh grant). Keeps the rotated refresh token."""
        rt = refresh_token or self.refresh_tokens[character_id]
        sso = self.sandbox.sso
        r = self.client.post(
            "/v2/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": rt},
            auth=(sso.client_id, sso.client_secret),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        self.refresh_tokens[character_id] = body["refresh_token"]
        return body["access_token"]

    def character(self, corporation_id: int, *, director: bool = False, **kw: Any) -> tuple[int, str]:
        """(character_id, access token) of a new character of the corporation."""
        if director:
            cid, rt = self.sandbox.add_director(corporation_id, **kw)
        else:
            cid, rt = self.sandbox.add_character(corporation_id, **kw)
        return cid, self.login(cid, rt)

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        headers = params.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.get(path, params=params, headers=headers)

    def walk(self, path: str, token: str, **params: Any) -> list[httpx.Response]:
        first = self.get(path, token, page=1, **params)
        assert first.status_code == 200, first.text
        n = int(first.headers["x-pages"])
        return [first] + [self.get(path, token, page=p, **params) for p in range(2, n + 1)]


@pytest.fixture
def serve() -> Iterator[Callable[..., Esi]]:
    stack = contextlib.ExitStack()

    def _serve(corporations: Any = None, **kwargs: Any) -> Esi:
        kwargs.setdefault("n_price_types", 400)
        kwargs.setdefault("orders_per_page", 100)
        sandbox = EsiSandbox({10000002: 1}, corporations=SMALL if corporations is None else corporations, **kwargs)
        base_url = stack.enter_context(serve_in_thread(sandbox))
        client = stack.enter_context(httpx.Client(base_url=base_url, timeout=30))
        return Esi(sandbox, client)

    with stack:
        yield _serve


def http_ts(value: str) -> int:
    return int(parsedate_to_datetime(value).timestamp())


def sso_error(sandbox: EsiSandbox, token: str) -> tuple[int, dict]:
    try:
        sandbox.sso.verify_access_token(token)
    except SsoAuthError as exc:
        return exc.status, exc.body
    raise AssertionError("token unexpectedly valid")


# --------------------------------------------------------------------------------------
# Authorization
# --------------------------------------------------------------------------------------


def test_authorization_order_and_error_bodies(serve) -> None:
    clock = FakeClock()
    esi = serve(clock=clock)
    sb = esi.sandbox
    assets = f"/corporations/{CORP_A}/assets"

    # 1) no token / garbage token / expired token: exactly what the SSO says
    r = esi.get(assets)
    assert (r.status_code, r.json()) == sso_error(sb, "")
    assert r.status_code in (401, 403)
    r = esi.get(assets, "not-a-jwt")
    assert (r.status_code, r.json()) == sso_error(sb, "not-a-jwt")
    assert r.status_code == 403 and r.json()["sso_status"] == 401
    director, token = esi.character(CORP_A, director=True)
    assert esi.get(assets, token).status_code == 200
    clock.advance(sb.sso.access_token_ttl + 5)
    r = esi.get(assets, token)
    assert (r.status_code, r.json()) == sso_error(sb, token)
    token = esi.login(director)  # a fresh token works again
    assert esi.get(assets, token).status_code == 200

    # 2) scope before membership: a character of B without the assets scope asking for A's assets
    scopes = [s for s in ALL_CORP_SCOPES if s != "esi-assets.read_corporation_assets.v1"]
    _, b_noscope = esi.character(CORP_B, scopes=scopes, roles=DIRECTOR_ROLES)
    r = esi.get(assets, b_noscope)
    assert r.status_code == 403
    assert r.json() == {"error": "token not valid for scope(s): esi-assets.read_corporation_assets.v1", "sso_status": 200}

    # 3) membership before roles: a role-less member of B, and a director of B
    _, b_member = esi.character(CORP_B)
    _, b_director = esi.character(CORP_B, director=True)
    for tok in (b_member, b_director):
        r = esi.get(assets, tok)
        assert (r.status_code, r.json()) == (403, {"error": "Character is not in the corporation"})
    r = esi.get("/corporations/98999999/assets", b_director)  # a corporation the sandbox does not know
    assert (r.status_code, r.json()) == (403, {"error": "Character is not in the corporation"})

    # 4) roles: any one of x-required-roles; Director does not stand in for the others
    a_member_id, a_member = esi.character(CORP_A)
    no_role = (403, {"error": "Character does not have required role(s)"})
    for path in (assets, f"/corporations/{CORP_A}/orders", f"/corporations/{CORP_A}/wallets/1/journal", f"/corporations/{CORP_A}/killmails/recent"):
        r = esi.get(path, a_member)
        assert (r.status_code, r.json()) == no_role, path
    assert esi.get(f"/corporations/{CORP_A}/members", a_member).status_code == 200  # membership is enough
    _, junior = esi.character(CORP_A, roles=["Junior_Accountant"])
    assert esi.get(f"/corporations/{CORP_A}/wallets/2/journal", junior).status_code == 200
    assert esi.get(f"/corporations/{CORP_A}/wallets/2/transactions", junior).status_code == 200
    assert (esi.get(f"/corporations/{CORP_A}/orders", junior).status_code, esi.get(assets, junior).status_code) == (403, 403)
    _, trader = esi.character(CORP_A, roles=["Trader"])
    assert esi.get(f"/corporations/{CORP_A}/orders/history", trader).status_code == 200
    _, only_director = esi.character(CORP_A, roles=["Director"])
    assert esi.get(assets, only_director).status_code == 200
    r = esi.get(f"/corporations/{CORP_A}/industry/jobs", only_director)
    assert (r.status_code, r.json()) == no_role  # industry jobs need Factory_Manager, even for directors

    # roles and corporation are read live from the SSO (the same token keeps working or stops)
    sb.sso.set_roles(a_member_id, ["Director"])
    assert esi.get(assets, a_member).status_code == 200
    sb.sso.set_corporation(a_member_id, CORP_B)
    r = esi.get(assets, a_member)
    assert (r.status_code, r.json()) == (403, {"error": "Character is not in the corporation"})

    # every refusal counts against the error limit
    c = sb.counters()
    assert c["assets"]["status_4xx"] >= 8 and c["total"]["status_4xx"] == sum(
        v["status_4xx"] for k, v in c.items() if k != "total"
    )
    before = int(esi.get(assets, b_member).headers["x-esi-error-limit-remain"])
    after = int(esi.get(assets, b_member).headers["x-esi-error-limit-remain"])
    assert after == before - 1


def test_rate_limit_buckets_are_per_character(serve) -> None:
    clock = FakeClock()
    esi = serve(clock=clock)
    _, d1 = esi.character(CORP_A, director=True)
    _, d2 = esi.character(CORP_A, director=True)
    recent = f"/corporations/{CORP_A}/killmails/recent"
    r = esi.get(recent, d1)
    assert r.headers["x-ratelimit-group"] == "corp-killmail" and r.headers["x-ratelimit-limit"] == "30/15m"
    assert (r.headers["x-ratelimit-used"], r.headers["x-ratelimit-remaining"]) == ("2", "28")
    for _ in range(13):
        assert esi.get(recent, d1).status_code == 200
    last = esi.get(recent, d1)  # 15th success: 30 tokens used
    assert (last.status_code, last.headers["x-ratelimit-remaining"]) == (200, "0")
    r = esi.get(recent, d1)
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 900
    # the other director has its own bucket; other groups are untouched
    assert esi.get(recent, d2).headers["x-ratelimit-remaining"] == "28"
    assert esi.get(f"/corporations/{CORP_A}/assets", d1).headers["x-ratelimit-remaining"] == "1798"
    # orders and orders/history are error-limited only (no x-rate-limit in the spec)
    r = esi.get(f"/corporations/{CORP_A}/orders", d1)
    assert "x-ratelimit-group" not in r.headers and "x-esi-error-limit-remain" in r.headers
    clock.advance(900)
    assert esi.get(recent, d1).status_code == 200


# --------------------------------------------------------------------------------------
# Snapshots: pages, ETags, 304, 404
# --------------------------------------------------------------------------------------


def test_paginated_route_pages_etags_304_and_404(serve) -> None:
    clock = FakeClock()
    esi = serve(clock=clock)
    director, token = esi.character(CORP_A, director=True)
    path = f"/corporations/{CORP_A}/assets"
    pages = esi.walk(path, token)
    assert len(pages) == int(pages[0].headers["x-pages"]) == 3  # "small": ~2,500 assets, 1000 per page
    assert {r.headers["x-pages"] for r in pages} == {"3"}
    assert len({r.headers["last-modified"] for r in pages}) == 1
    lm = http_ts(pages[0].headers["last-modified"])
    for r in pages:
        assert r.headers["etag"] == '"' + hashlib.sha224(r.content).hexdigest() + '"'
        assert r.headers["cache-control"] == "private"
        assert r.headers["content-type"] == "application/json; charset=UTF-8"
        assert http_ts(r.headers["expires"]) == lm + 3600  # x-cache-age of the route
    assert len({r.headers["etag"] for r in pages}) == 3
    assert [len(r.json()) for r in pages][:2] == [1000, 1000]

    # the pages are exactly the current snapshot, in order
    rows = [row for r in pages for row in r.json()]
    frame = esi.sandbox.corp_snapshot("assets", CORP_A)
    assert [r["item_id"] for r in rows] == frame["item_id"].tolist()
    assert len({r["item_id"] for r in rows}) == len(rows)

    # conditional requests: 304 with the validators, no body
    r = esi.get(path, token, page=2, headers={"If-None-Match": pages[1].headers["etag"]})
    assert r.status_code == 304 and r.content == b""
    assert r.headers["etag"] == pages[1].headers["etag"] and r.headers["last-modified"] == pages[1].headers["last-modified"]
    assert esi.get(path, token, page=2, headers={"If-None-Match": pages[0].headers["etag"]}).status_code == 200
    assert esi.get(path, token, page=1, headers={"If-Modified-Since": pages[0].headers["last-modified"]}).status_code == 304

    # past the last page, bad pages, legacy path forms
    r = esi.get(path, token, page=4)
    assert (r.status_code, r.json()) == (404, ERROR_PAGE)
    for bad in ("0", "-1", "x"):
        r = esi.get(path, token, page=bad)
        assert r.status_code == 400 and set(r.json()) == {"error"}
    for variant in (f"/latest/corporations/{CORP_A}/assets/", f"/v5/corporations/{CORP_A}/assets", f"/corporations/{CORP_A}/assets/"):
        r = esi.get(variant, token, page=3, datasource="tranquility")
        assert r.status_code == 200 and r.content == pages[2].content

    # nested containers: location_id of an item is another item's item_id
    by_id = {r["item_id"]: r for r in rows}
    nested = [r for r in rows if r["location_type"] == "item" and r["location_id"] in by_id]
    assert len(nested) > 0.9 * sum(r["location_type"] == "item" for r in rows)
    grand = [r for r in nested if by_id[r["location_id"]]["location_type"] == "item"]
    assert grand, "some items sit in containers/ships inside an office"
    assert {r["location_flag"] for r in nested} >= {"CorpSAG1", "Locked", "Cargo"}
    assert any(r.get("is_blueprint_copy") is True for r in rows) and any("is_blueprint_copy" not in r for r in rows)
    assert all(r["quantity"] == 1 for r in rows if r["is_singleton"])

    # time passes without new data: Expires rolls forward, Last-Modified stays
    clock.advance(2.5 * 3600)
    assert esi.get(path, token, page=1).status_code == 403  # the access token expired meanwhile (20 min)
    r = esi.get(path, esi.login(director), page=1)
    assert http_ts(r.headers["last-modified"]) == lm and http_ts(r.headers["expires"]) == lm + 3 * 3600


def test_wallet_transactions_from_id_walk(serve) -> None:
    esi = serve({CORP_A: {"base": "small", "transactions_per_year": 9000}, CORP_B: "small"})
    _, token = esi.character(CORP_A, roles=["Accountant"])
    path = f"/corporations/{CORP_A}/wallets/1/transactions"
    expected = esi.sandbox.corp_snapshot("wallet_transactions", CORP_A, division=1)["transaction_id"].tolist()
    assert len(expected) > 2 * 2500 and expected == sorted(expected, reverse=True)

    # ESI.md §3.2: no from_id -> newest first; next from_id = last id of the response, which is
    # included again; stop when a response holds only the from_id record (or nothing)
    seen: list[int] = []
    from_id = None
    calls = 0
    while True:
        r = esi.get(path, token, **({} if from_id is None else {"from_id": from_id}))
        calls += 1
        assert r.status_code == 200 and "x-pages" not in r.headers
        ids = [t["transaction_id"] for t in r.json()]
        assert len(ids) <= 2500 and ids == sorted(ids, reverse=True)
        if from_id is not None:
            assert ids[0] == from_id
            ids = ids[1:]
        if not ids:
            break
        seen += ids
        from_id = ids[-1]
        assert calls < 10
    assert seen == expected
    assert calls == math.ceil((len(expected) - 1) / 2499) + 1

    # each from_id is its own resource: own ETag, 304, page ignored
    a = esi.get(path, token, from_id=expected[100])
    assert a.json()[0]["transaction_id"] == expected[100] and len(a.json()) == 2500
    assert esi.get(path, token, from_id=expected[100], headers={"If-None-Match": a.headers["etag"]}).status_code == 304
    assert esi.get(path, token, from_id=expected[100], page=7).content == a.content
    # from_id between ids / above the newest / below the oldest
    assert esi.get(path, token, from_id=expected[0] + 10**6).content == esi.get(path, token).content
    assert esi.get(path, token, from_id=expected[-1] - 1).json() == []
    assert esi.get(path, token, from_id="abc").status_code == 400
    # journal refs: transactions of the last 30 days have their market_transaction entry
    journal = esi.sandbox.corp_snapshot("wallet_journal", CORP_A, division=1)
    tx = esi.sandbox.corp_snapshot("wallet_transactions", CORP_A, division=1)
    market = journal[journal.ref_type == "market_transaction"]
    linked = tx.merge(market, left_on="journal_ref_id", right_on="id")
    assert len(linked) == len(market) > 0
    assert (linked["context_id"] == linked["transaction_id"]).all()
    assert np.allclose(linked["amount"].abs(), linked["quantity"] * linked["unit_price"], rtol=1e-9, atol=0.01)
    # empty divisions answer []
    for route in ("transactions", "journal"):
        r = esi.get(f"/corporations/{CORP_A}/wallets/7/{route}", token)
        assert r.status_code == 200 and r.json() == []
    assert esi.get(f"/corporations/{CORP_A}/wallets/8/journal", token).status_code == 400


# --------------------------------------------------------------------------------------
# Killmails and roles
# --------------------------------------------------------------------------------------


def test_killmail_details_are_public_and_422_on_a_wrong_hash(serve) -> None:
    esi = serve()
    _, token = esi.character(CORP_A, director=True)
    recent = [km for r in esi.walk(f"/corporations/{CORP_A}/killmails/recent", token) for km in r.json()]
    assert len(recent) > 50 and all(set(km) == {"killmail_id", "killmail_hash"} for km in recent)
    ids = [km["killmail_id"] for km in recent]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    sample = recent[:25]
    esi.sandbox.reset_counters()
    for km in sample:
        r = esi.get(f"/killmails/{km['killmail_id']}/{km['killmail_hash']}")  # no token needed
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "public" and r.headers["x-ratelimit-group"] == "killmail"
        body = r.json()
        assert body == esi.sandbox.killmail(km["killmail_id"])
        assert body["killmail_id"] == km["killmail_id"]
        victim, attackers = body["victim"], body["attackers"]
        assert victim["damage_taken"] == sum(a["damage_done"] for a in attackers)
        assert sum(a["final_blow"] for a in attackers) == 1
        ours = victim.get("corporation_id") == CORP_A or any(a.get("corporation_id") == CORP_A for a in attackers)
        assert ours
        for item in victim.get("items", []):
            assert ("quantity_destroyed" in item) != ("quantity_dropped" in item)
    assert esi.sandbox.killmail_fetch_counts() == {km["killmail_id"]: 1 for km in sample}
    assert any(item.get("items") for km in recent for item in esi.sandbox.killmail(km["killmail_id"])["victim"].get("items", []))
    km = sample[0]
    url = f"/killmails/{km['killmail_id']}/{km['killmail_hash']}"
    etag = esi.get(url).headers["etag"]
    r = esi.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.headers["etag"] == etag
    assert esi.sandbox.killmail_fetch_counts()[km["killmail_id"]] == 3  # 200, 200, 304: every fetch counts
    # wrong hash, unknown id, bad id
    for path in (f"/killmails/{km['killmail_id']}/{'0' * 40}", f"/killmails/{km['killmail_id'] + 1}/{km['killmail_hash']}", "/killmails/1/abc"):
        r = esi.get(path)
        assert (r.status_code, r.json()) == (422, {"error": "Invalid killmail_id and/or killmail_hash"}), path
    assert esi.get("/killmails/xyz/abc").status_code == 400
    assert esi.sandbox.killmail_hash(km["killmail_id"]) == km["killmail_hash"]
    # the other corporation's killmails are different ones
    _, tb = esi.character(CORP_B, director=True)
    other = {k["killmail_id"] for r in esi.walk(f"/corporations/{CORP_B}/killmails/recent", tb) for k in r.json()}
    assert not other & set(ids)


def test_character_roles_route(serve) -> None:
    esi = serve()
    sb = esi.sandbox
    cid, token = esi.character(CORP_A, roles=["Accountant", "Hangar_Take_1"])
    r = esi.get(f"/characters/{cid}/roles", token)
    assert r.status_code == 200 and r.headers["x-ratelimit-group"] == "char-detail"
    body = r.json()
    assert body["roles"] == ["Accountant", "Hangar_Take_1"]
    assert set(body) == {"roles", "roles_at_base", "roles_at_hq", "roles_at_other"}
    # only the character itself
    other, other_token = esi.character(CORP_A, director=True)
    r = esi.get(f"/characters/{cid}/roles", other_token)
    assert r.status_code == 403 and "error" in r.json()
    # the scope is required
    _, no_scope = esi.character(CORP_A, scopes=["esi-assets.read_corporation_assets.v1"])
    r = esi.get(f"/characters/{cid}/roles", no_scope)
    assert r.status_code == 403 and r.json()["error"] == "token not valid for scope(s): esi-characters.read_corporation_roles.v1"
    # cached like ESI (1 h): a role change shows after the snapshot refreshes
    sb.sso.set_roles(cid, ["Director"])
    assert esi.get(f"/characters/{cid}/roles", token).json()["roles"] == ["Accountant", "Hangar_Take_1"]
    sb.refresh("character_roles", character_id=cid)
    r2 = esi.get(f"/characters/{cid}/roles", token)
    assert r2.json()["roles"] == ["Director"]
    assert esi.get(f"/characters/{other}/roles", other_token).json()["roles"] == list(DIRECTOR_ROLES)


# --------------------------------------------------------------------------------------
# Refresh and determinism
# --------------------------------------------------------------------------------------


def test_refresh_evolves_the_data(serve) -> None:
    esi = serve()
    sb = esi.sandbox
    _, token = esi.character(CORP_A, director=True)

    def rows(path: str, **params: Any) -> tuple[list[dict], httpx.Response]:
        pages = esi.walk(path, token, **params)
        return [row for r in pages for row in r.json()], pages[0]

    journal0, j_first0 = rows(f"/corporations/{CORP_A}/wallets/1/journal")
    open0, _ = rows(f"/corporations/{CORP_A}/orders")
    hist0, _ = rows(f"/corporations/{CORP_A}/orders/history")
    jobs0, _ = rows(f"/corporations/{CORP_A}/industry/jobs", include_completed="true")
    assets0, _ = rows(f"/corporations/{CORP_A}/assets")
    b_director, b_token = esi.character(CORP_B, director=True)
    b_before = esi.get(f"/corporations/{CORP_B}/members", b_token)

    for route in ("wallet_journal", "corp_orders", "corp_orders_history", "industry_jobs", "assets"):
        out = sb.refresh(route, corporation_id=CORP_A)
        assert out and all(s["corporation_id"] == CORP_A for s in out)
    journal1, j_first1 = rows(f"/corporations/{CORP_A}/wallets/1/journal")
    assert http_ts(j_first1.headers["last-modified"]) > http_ts(j_first0.headers["last-modified"])
    assert j_first1.headers["etag"] != j_first0.headers["etag"]
    ids0, ids1 = {e["id"] for e in journal0}, {e["id"] for e in journal1}
    new = ids1 - ids0
    assert new and min(new) > max(ids0)  # journal ids only grow
    assert [e["id"] for e in journal1] == sorted(ids1, reverse=True)  # newest first
    # balances are a running sum
    chron = sorted(journal1, key=lambda e: e["id"])
    for prev, cur in zip(chron, chron[1:]):
        assert abs(prev["balance"] + cur["amount"] - cur["balance"]) < 0.02

    # filled/cancelled/expired orders leave the open list and appear in the history
    open1, _ = rows(f"/corporations/{CORP_A}/orders")
    hist1, _ = rows(f"/corporations/{CORP_A}/orders/history")
    gone = {o["order_id"] for o in open0} - {o["order_id"] for o in open1}
    hist1_by_id = {o["order_id"]: o for o in hist1}
    assert gone and gone <= set(hist1_by_id)
    assert any(hist1_by_id[i]["volume_remain"] == 0 and hist1_by_id[i]["state"] == "expired" for i in gone)
    assert len({o["order_id"] for o in hist0} - set(hist1_by_id)) < 0.05 * len(hist0)  # only > 90 days old ones go
    assert max(o["order_id"] for o in open1) > max(o["order_id"] for o in open0)  # new orders

    # jobs change status, assets move / vanish / appear
    st0 = {j["job_id"]: j["status"] for j in jobs0}
    jobs1, _ = rows(f"/corporations/{CORP_A}/industry/jobs", include_completed="true")
    assert any(st0.get(j["job_id"], j["status"]) != j["status"] for j in jobs1) or {j["job_id"] for j in jobs1} - set(st0)
    assets1, _ = rows(f"/corporations/{CORP_A}/assets")
    a0 = {a["item_id"]: a for a in assets0}
    a1 = {a["item_id"]: a for a in assets1}
    assert set(a0) - set(a1) and set(a1) - set(a0)
    assert min(set(a1) - set(a0)) > max(a0)
    assert any(a0[i]["location_id"] != a1[i]["location_id"] for i in set(a0) & set(a1))
    # the other corporation did not change
    assert esi.get(f"/corporations/{CORP_B}/members", b_token).headers["etag"] == b_before.headers["etag"]

    # refresh between page requests: pages of one walk then disagree on Last-Modified
    sb.refresh_after_pages(1, route="assets", corporation_id=CORP_A)
    p1 = esi.get(f"/corporations/{CORP_A}/assets", token, page=1)
    p2 = esi.get(f"/corporations/{CORP_A}/assets", token, page=2)
    assert p1.headers["last-modified"] != p2.headers["last-modified"]

    # the admin API refreshes corporation routes too
    r = esi.client.post("/_sandbox/refresh", json={"route": "wallet_journal", "corporation_id": CORP_A, "division": 1})
    assert r.status_code == 200 and r.json()["refreshed"][0]["param"] == 1
    assert min({e["id"] for e in rows(f"/corporations/{CORP_A}/wallets/1/journal")[0]} - ids1) > max(ids1)


def test_same_seed_same_bytes_and_corporations_are_independent() -> None:
    kw = dict(n_price_types=300, orders_per_page=100, seed=5)
    a = EsiSandbox({10000002: 1}, corporations=SMALL, **kw)
    b = EsiSandbox({10000002: 1}, corporations=SMALL, **kw)
    routes = [("assets", {}), ("wallet_journal", {"division": 1}), ("wallet_transactions", {"division": 2}),
              ("industry_jobs", {"include_completed": True}), ("corp_orders_history", {}), ("killmails_recent", {}),
              ("container_logs", {}), ("membertracking", {}), ("mining_observers", {})]
    for _ in range(2):
        for route, params in routes:
            sa, sb_ = a.snapshot(route, corporation_id=CORP_A, **params), b.snapshot(route, corporation_id=CORP_A, **params)
            assert sa.pages == sb_.pages and sa.etags == sb_.etags, route
        for route, params in routes:
            a.refresh(route, corporation_id=CORP_A, **params)
            b.refresh(route, corporation_id=CORP_A, **params)
    km = a.corp_snapshot("killmails_recent", CORP_A)["killmail_id"].iloc[0]
    assert a.killmail(km) == b.killmail(km)
    # a corporation's data does not depend on the other configured corporations
    c = EsiSandbox({10000002: 1}, corporations={CORP_A: "small"}, **kw)
    d = EsiSandbox({10000002: 1}, corporations=SMALL, **kw)
    for route, params in routes:
        assert c.snapshot(route, corporation_id=CORP_A, **params).pages == d.snapshot(route, corporation_id=CORP_A, **params).pages
    # other seed, other data; the two corporations differ
    e = EsiSandbox({10000002: 1}, corporations=SMALL, **{**kw, "seed": 6})
    assert e.snapshot("assets", corporation_id=CORP_A).pages != d.snapshot("assets", corporation_id=CORP_A).pages
    assert not set(d.corp_data(CORP_A).assets.item_id) & set(d.corp_data(CORP_B).assets.item_id)
    assert not set(d.corp_data(CORP_A).journal.id) & set(d.corp_data(CORP_B).journal.id)


# --------------------------------------------------------------------------------------
# Accessors, volumes, knobs
# --------------------------------------------------------------------------------------


def test_accessors_volumes_and_realism() -> None:
    sb = EsiSandbox({10000002: 1}, n_price_types=2000)  # the default: two "default" corporations
    assert sb.corporations == [CORP_A, CORP_B]
    d = sb.corp_data(CORP_A)
    assets = d.assets
    assert 45_000 <= len(assets) <= 55_000 and sb.snapshot("assets", corporation_id=CORP_A).page_count >= 45
    assert assets["item_id"].is_unique and assets["item_id"].dtype == np.int64
    assert set(assets["location_type"]) <= {"station", "solar_system", "item", "other"}
    assert assets["is_blueprint_copy"].dtype == "boolean" and assets["is_blueprint_copy"].isna().any()
    tx = d.transactions
    assert len(tx[tx.division == 1]) > 2 * 2500  # a year of trades: several from_id calls
    assert (pd.Timestamp("2026-11-20T12:00Z") - tx["date"].min()).days >= 360
    journal = d.journal
    age = pd.Timestamp("2026-11-20T12:00Z") - journal["date"].min()
    assert 29 <= age.days <= 30 and sb.snapshot("wallet_journal", corporation_id=CORP_A, division=1).page_count >= 2
    assert set(journal.division) == {1, 2, 3, 4, 5} and journal["id"].is_unique
    assert journal["tax"].notna().any() and journal["tax"].isna().any() and journal["reason"].notna().any()
    jobs = d.industry_jobs
    assert set(jobs.status) >= {"active", "delivered", "ready", "cancelled"}
    open_jobs = d.industry_jobs_open
    assert set(open_jobs.status) <= {"active", "paused", "ready"} and 0 < len(open_jobs) < len(jobs)
    assert (jobs.end_date >= jobs.start_date).all()
    delivered = jobs[jobs.status == "delivered"]
    assert delivered.completed_date.notna().all() and delivered.completed_character_id.notna().all()
    assert jobs[jobs.status == "active"].completed_date.isna().all()
    orders, hist = d.orders, d.orders_history
    assert 1000 <= len(orders) <= 1400 and set(hist.state) == {"cancelled", "expired"}
    assert (orders.volume_remain <= orders.volume_total).all() and (orders.volume_remain >= 1).all()
    assert orders["is_buy_order"].isna().any() and (orders.loc[orders.is_buy_order.fillna(False), "escrow"].notna()).all()
    members = d.members["character_id"]
    assert 250 <= len(members) <= 350 and members.is_unique
    assert set(orders.issued_by) <= set(members) and set(jobs.installer_id) <= set(sb.corp_profile(CORP_A).roster.tolist())
    observers = d.mining_observers
    ledger = d.mining_ledger
    assert len(observers) == 3 and set(ledger.observer_id) == set(observers.observer_id)
    assert set(observers.observer_id) <= set(assets.item_id)  # the observers are the corporation's refineries
    assert not ledger.duplicated(["observer_id", "character_id", "recorded_corporation_id", "type_id", "last_updated"]).any()
    logs = d.container_logs
    assert set(logs.container_id) <= set(assets.item_id)
    assert logs.loc[logs.action == "configure", "new_config_bitmask"].notna().all()
    assert logs.loc[logs.action == "lock", "quantity"].isna().all()
    assert len(d.killmails_recent) > 1000
    # a director is a member; add_character picks distinct members
    cid, _ = sb.add_director(CORP_A)
    assert cid in set(members)
    assert sb.add_character(CORP_A)[0] != cid
    assert sb.sso.character(cid).roles == DIRECTOR_ROLES and set(sb.sso.character(cid).scopes) == set(ALL_CORP_SCOPES)
    with pytest.raises(ValueError):
        sb.corp_snapshot("wallet_journal", CORP_A)  # division missing
    with pytest.raises(KeyError):
        sb.corp_data(12345)


def test_knobs_apply_to_corporation_routes(serve) -> None:
    esi = serve(error_limit=10_000)
    sb = esi.sandbox
    _, token = esi.character(CORP_A, director=True)
    sb.configure(error_rate=1.0, error_seed=1, error_routes=["assets"])
    assert {esi.get(f"/corporations/{CORP_A}/assets", token).status_code for _ in range(10)} <= {502, 503, 504}
    assert esi.get(f"/corporations/{CORP_A}/members", token).status_code == 200
    sb.configure(error_rate=0.0, cache_seconds={"assets": 60})
    r = esi.get(f"/corporations/{CORP_A}/assets", token)
    assert http_ts(r.headers["expires"]) - http_ts(r.headers["last-modified"]) == 60
    assert sb.counter("assets")["status_5xx"] == 10 and sb.counter("mining_ledger")["requests"] == 0
    with pytest.raises(ValueError):
        sb.configure(cache_seconds={"nope": 5})
    # admin API: characters, corporations, killmail fetch counts
    r = esi.client.post("/_sandbox/characters", json={"corporation_id": CORP_B, "director": True})
    assert r.status_code == 200
    created = r.json()
    token_b = esi.login(created["character_id"], created["refresh_token"])
    assert esi.get(f"/corporations/{CORP_B}/assets", token_b).status_code == 200
    corps = esi.client.get("/_sandbox/corporations").json()
    assert set(corps) == {str(CORP_A), str(CORP_B)} and corps[str(CORP_A)]["size"]["assets"] == 2500
    assert esi.client.get("/_sandbox/killmail_fetches").json() == {}
    assert set(CORP_ROUTES) <= set(SandboxConfig().error_routes)  # error injection covers them by default
