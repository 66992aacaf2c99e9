"""The offline ESI sandbox, exercised over real HTTP (uvicorn on 127.0.0.1, httpx; no mocks).

Shapes are checked against CCP's official OpenAPI spec (compat 2026-08-18), vendored in
sync_assets_tests/data/.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import yaml

from sync_assets.apis.esi.sandbox import (
    COUNTER_KEYS,
    DEFAULT_CACHE_SECONDS,
    ERROR_420_TEXT,
    ORDER_FIELDS,
    PRICE_FIELDS,
    RANGE_VALUES,
    RATE_LIMIT_GROUPS,
    EsiSandbox,
    serve_in_thread,
)

from .helpers import resolve_ref

FORGE, DOMAIN, HEIMATAR = 10000002, 10000043, 10000030
SMALL_REGIONS = {FORGE: 4, DOMAIN: 2}
OPP = 50  # orders per page in the small sandboxes
ORDERS = "/markets/{}/orders"


# --------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------

SPEC_NAME = "openapi-2026-08-18.yaml"

# Verbatim excerpt of the spec (paths reduced to the fields used here), used only when the
# full file is not available.


SPEC_PATH = Path(__file__).resolve().parent / "data" / SPEC_NAME  # CCP's official spec, vendored


@pytest.fixture(scope="module")
def spec() -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(SPEC_PATH.read_text(), Loader=loader)


def _operation(spec: dict, operation_id: str) -> dict:
    for item in spec["paths"].values():
        op = item.get("get")
        if op and op.get("operationId") == operation_id:
            return op
    raise KeyError(operation_id)


def _response_schema(spec: dict, operation_id: str) -> dict:
    op = _operation(spec, operation_id)
    return resolve_ref(spec, op["responses"]["200"]["content"]["application/json"]["schema"])


_DATE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _check_value(name: str, value: Any, schema: dict) -> None:
    typ, fmt = schema.get("type"), schema.get("format")
    if typ == "integer":
        assert type(value) is int, f"{name}: {value!r} is not an integer"
        if fmt == "int64":
            assert -(2**63) <= value < 2**63, name
        if fmt == "int32":
            assert -(2**31) <= value < 2**31, name
    elif typ == "number":
        assert type(value) in (int, float) and not isinstance(value, bool), f"{name}: {value!r} is not a number"
    elif typ == "boolean":
        assert type(value) is bool, f"{name}: {value!r} is not a boolean"
    elif typ == "string":
        assert type(value) is str, f"{name}: {value!r} is not a string"
        if fmt == "date-time":
            assert _DATE_TIME.match(value), f"{name}: {value!r} is not an ESI date-time"
            datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    else:
        raise AssertionError(f"unexpected schema type {typ} for {name}")
    if "enum" in schema:
        assert value in schema["enum"], f"{name}: {value!r} not in {schema['enum']}"


def _check_object(obj: Any, schema: dict, spec: dict, *, optional: frozenset[str] = frozenset()) -> None:
    schema = resolve_ref(spec, schema)
    assert schema["type"] == "object" and isinstance(obj, dict)
    props = schema["properties"]
    assert set(obj) <= set(props), f"unknown fields {set(obj) - set(props)}"
    missing = set(schema.get("required", ())) - set(obj) - optional
    assert not missing, f"required fields missing: {missing}"
    for k, v in obj.items():
        _check_value(k, v, resolve_ref(spec, props[k]))


# --------------------------------------------------------------------------------------
# Fixtures / helpers
# --------------------------------------------------------------------------------------


class FakeClock:
    """Settable time source so cache windows can be crossed without sleeping."""

    def __init__(self, start: float = 1_795_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[EsiSandbox, httpx.Client]]]:
    """Factory: build a small sandbox, serve it on 127.0.0.1 and return (sandbox, client)."""
    stack = contextlib.ExitStack()

    def _serve(regions: dict[int, int] | None = None, **kwargs: Any) -> tuple[EsiSandbox, httpx.Client]:
        kwargs.setdefault("orders_per_page", OPP)
        kwargs.setdefault("n_price_types", 400)
        sandbox = EsiSandbox(regions or SMALL_REGIONS, **kwargs)
        base_url = stack.enter_context(serve_in_thread(sandbox))
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
        client = stack.enter_context(httpx.Client(base_url=base_url, timeout=20))
        return sandbox, client

    with stack:
        yield _serve


def get_page(client: httpx.Client, region: int, page: int, **headers: str) -> httpx.Response:
    return client.get(ORDERS.format(region), params={"order_type": "all", "page": page}, headers=headers)


def walk(client: httpx.Client, region: int) -> list[httpx.Response]:
    first = get_page(client, region, 1)
    assert first.status_code == 200
    return [first] + [get_page(client, region, p) for p in range(2, int(first.headers["x-pages"]) + 1)]


def http_ts(value: str) -> int:
    return int(parsedate_to_datetime(value).timestamp())


def sha224_etag(body: bytes) -> str:
    return '"' + hashlib.sha224(body).hexdigest() + '"'


# --------------------------------------------------------------------------------------
# Shapes (spec)
# --------------------------------------------------------------------------------------


def test_orders_match_spec_schema(serve, spec) -> None:
    sandbox, client = serve()
    item = _response_schema(spec, "GetMarketsRegionIdOrders")
    assert item["type"] == "array"
    inner = resolve_ref(spec, item["items"])
    assert tuple(inner["properties"]) == ORDER_FIELDS
    assert tuple(inner["properties"]["range"]["enum"]) == RANGE_VALUES

    rows = [row for r in walk(client, FORGE) for row in r.json()]
    assert len(rows) == len(sandbox.orders_snapshot(FORGE)) > 3 * OPP
    for row in rows:
        _check_object(row, inner, spec)
        assert tuple(row) == ORDER_FIELDS  # every field, always, in spec order
        assert 1 <= row["volume_remain"] <= row["volume_total"]
        assert row["price"] > 0 and round(row["price"], 2) == row["price"]
        assert row["min_volume"] >= 1
        assert row["duration"] in (1, 3, 7, 14, 30, 90, 365)
        assert 6_000_000_000 < row["order_id"] < 8_000_000_000
        if not row["is_buy_order"]:
            assert row["duration"] != 365
    assert len({r["order_id"] for r in rows}) == len(rows)
    assert {r["is_buy_order"] for r in rows} == {True, False}
    assert len({r["range"] for r in rows}) >= 4
    assert len({r["location_id"] for r in rows}) > 3


def test_prices_and_status_match_spec_schema(serve, spec) -> None:
    sandbox, client = serve(n_price_types=2000)
    prices = client.get("/markets/prices")
    assert prices.status_code == 200
    assert "x-pages" not in prices.headers
    item = _response_schema(spec, "GetMarketsPrices")
    rows = prices.json()
    assert len(rows) == 2000
    for row in rows:
        _check_object(row, item["items"], spec)
        assert "adjusted_price" in row
    without_avg = [r for r in rows if "average_price" not in r]
    assert 0 < len(without_avg) < 0.1 * len(rows)  # ~3% of types have no average, like ESI
    assert len({r["type_id"] for r in rows}) == len(rows)

    status = client.get("/status")
    assert status.status_code == 200
    body = status.json()
    # ESI only sends `vip` (true) while the cluster is in VIP mode, although the spec lists it required
    _check_object(body, _response_schema(spec, "GetStatus"), spec, optional=frozenset({"vip"}))
    assert "vip" not in body and body["server_version"] == "3027895" and body["players"] > 0


def test_cache_times_and_rate_limit_groups_follow_the_spec(spec) -> None:
    ops = {"orders": "GetMarketsRegionIdOrders", "prices": "GetMarketsPrices", "status": "GetStatus"}
    for route, op_id in ops.items():
        op = _operation(spec, op_id)
        assert DEFAULT_CACHE_SECONDS[route] == op["x-cache-age"]
        rl = op.get("x-rate-limit")
        if rl is None:
            assert route not in RATE_LIMIT_GROUPS
        else:
            assert RATE_LIMIT_GROUPS[route] == (rl["group"], rl["max-tokens"]) and rl["window-size"] == "15m"


def test_snapshot_frames_have_spec_columns_and_dtypes(serve) -> None:
    sandbox, client = serve()
    df = sandbox.orders_snapshot(FORGE)
    assert tuple(df.columns) == ORDER_FIELDS
    for col in ("duration", "location_id", "min_volume", "order_id", "system_id", "type_id", "volume_remain", "volume_total"):
        assert df[col].dtype == np.int64, col
    assert df["price"].dtype == np.float64 and df["is_buy_order"].dtype == bool
    assert isinstance(df["issued"].dtype, pd.DatetimeTZDtype) and str(df["issued"].dt.tz) == "UTC"
    # the frame is exactly what the pages contain, in page order
    rows = [row for r in walk(client, FORGE) for row in r.json()]
    assert df["order_id"].tolist() == [r["order_id"] for r in rows]
    assert df["price"].tolist() == [r["price"] for r in rows]
    assert df["range"].tolist() == [r["range"] for r in rows]
    assert df["issued"].dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist() == [r["issued"] for r in rows]

    p = sandbox.prices_snapshot()
    assert tuple(p.columns) == PRICE_FIELDS
    assert p["type_id"].dtype == np.int64 and p["adjusted_price"].dtype == np.float64
    body = client.get("/markets/prices").json()
    assert p["type_id"].tolist() == [r["type_id"] for r in body]
    assert int(p["average_price"].isna().sum()) == sum("average_price" not in r for r in body)


def test_path_variants_and_datasource_are_accepted(serve) -> None:
    _, client = serve()
    base = get_page(client, FORGE, 2)
    for path in ("/latest/markets/{}/orders/", "/v1/markets/{}/orders", "/legacy/markets/{}/orders", "/dev/markets/{}/orders/"):
        r = client.get(path.format(FORGE), params={"order_type": "all", "page": 2, "datasource": "tranquility"})
        assert r.status_code == 200 and r.content == base.content and r.headers["etag"] == base.headers["etag"]
    for path in ("/latest/status/", "/v2/status", "/status/"):
        assert client.get(path, params={"datasource": "tranquility"}).status_code == 200
    assert client.get("/latest/markets/prices/").status_code == 200
    # order_type=buy/sell without type_id still returns both sides (as documented)
    assert client.get(ORDERS.format(FORGE), params={"order_type": "sell", "page": 2}).content == base.content


def test_type_id_filter_returns_all_orders_of_that_type(serve) -> None:
    sandbox, client = serve()
    df = sandbox.orders_snapshot(FORGE)
    type_id = int(df["type_id"].value_counts().index[0])
    r = client.get(ORDERS.format(FORGE), params={"order_type": "all", "type_id": type_id})
    assert r.status_code == 200 and r.headers["x-pages"] == "1"
    assert sorted(o["order_id"] for o in r.json()) == sorted(df.loc[df.type_id == type_id, "order_id"])
    buys = client.get(ORDERS.format(FORGE), params={"order_type": "buy", "type_id": type_id}).json()
    assert all(o["is_buy_order"] for o in buys)
    assert len(buys) == int(((df.type_id == type_id) & df.is_buy_order).sum())


# --------------------------------------------------------------------------------------
# Caching headers and conditional requests
# --------------------------------------------------------------------------------------


def test_headers_etag_per_page_and_consistent_last_modified(serve) -> None:
    sandbox, client = serve()
    pages = walk(client, FORGE)
    assert len(pages) == sandbox.page_count(FORGE) == 4
    lm = {r.headers["last-modified"] for r in pages}
    assert len(lm) == 1
    assert http_ts(lm.pop()) == int(sandbox.current_last_modified("orders", FORGE).timestamp())
    etags = [r.headers["etag"] for r in pages]
    assert len(set(etags)) == len(etags)
    for r in pages:
        assert r.headers["etag"] == sha224_etag(r.content)
        assert re.fullmatch(r'"[0-9a-f]{56}"', r.headers["etag"])
        assert r.headers["content-type"] == "application/json; charset=UTF-8"
        assert r.headers["cache-control"] == "public"
        assert r.headers["x-pages"] == "4"
        assert re.fullmatch(r"[0-9a-f-]{36}", r.headers["x-esi-request-id"])
        for h in ("date", "expires", "last-modified"):
            assert r.headers[h].endswith(" GMT")
            assert format_datetime(parsedate_to_datetime(r.headers[h]), usegmt=True) == r.headers[h]
    assert len({r.headers["x-esi-request-id"] for r in pages}) == len(pages)
    # pages hold orders_per_page orders except a partial last one
    sizes = [len(r.json()) for r in pages]
    assert sizes[:-1] == [OPP] * 3 and 1 <= sizes[-1] <= OPP


def test_if_none_match_and_if_modified_since_give_304(serve) -> None:
    _, client = serve()
    first = get_page(client, FORGE, 2)
    etag, lm = first.headers["etag"], first.headers["last-modified"]
    for inm in (etag, f"W/{etag}", f'"nope", {etag}'):
        r = get_page(client, FORGE, 2, **{"If-None-Match": inm})
        assert r.status_code == 304 and r.content == b""
        for h in ("etag", "expires", "last-modified", "date", "cache-control", "x-esi-request-id"):
            assert h in r.headers, h
        assert r.headers["etag"] == etag and r.headers["last-modified"] == lm
        assert "content-type" not in r.headers
    # another page's ETag does not match this page
    other = get_page(client, FORGE, 1)
    assert get_page(client, FORGE, 2, **{"If-None-Match": other.headers["etag"]}).status_code == 200
    # If-Modified-Since >= Last-Modified -> 304; earlier -> 200
    assert get_page(client, FORGE, 2, **{"If-Modified-Since": lm}).status_code == 304
    earlier = format_datetime(datetime.fromtimestamp(http_ts(lm) - 1, tz=timezone.utc), usegmt=True)
    r = get_page(client, FORGE, 2, **{"If-Modified-Since": earlier})
    assert r.status_code == 200 and r.content == first.content
    # prices and status support conditional requests too
    for path in ("/markets/prices", "/status"):
        r = client.get(path)
        assert client.get(path, headers={"If-None-Match": r.headers["etag"]}).status_code == 304


def test_expires_is_the_end_of_the_current_cache_window(serve) -> None:
    clock = FakeClock()
    sandbox, client = serve(clock=clock)
    for path, cache in ((ORDERS.format(FORGE) + "?order_type=all&page=1", 300), ("/markets/prices", 3600), ("/status", 30)):
        r = client.get(path)
        lm, exp, date = (http_ts(r.headers[h]) for h in ("last-modified", "expires", "date"))
        assert date == int(clock.now) and exp == lm + cache
    lm0 = sandbox.snapshot("orders", FORGE).created_at
    clock.advance(2.5 * 300)  # no new data: Expires rolls forward by whole windows, Last-Modified stays
    r = get_page(client, FORGE, 1)
    assert http_ts(r.headers["last-modified"]) == lm0
    assert http_ts(r.headers["expires"]) == lm0 + 3 * 300 > http_ts(r.headers["date"])
    # cache time is a knob per route
    sandbox.configure(cache_seconds={"orders": 7})
    r = get_page(client, FORGE, 1)
    exp = http_ts(r.headers["expires"])
    assert (exp - lm0) % 7 == 0 and 0 < exp - int(clock.now) <= 7
    assert http_ts(r.headers["last-modified"]) == lm0


def test_auto_refresh_makes_new_data_after_the_cache_window(serve) -> None:
    clock = FakeClock()
    sandbox, client = serve(clock=clock, auto_refresh=True)
    before = get_page(client, FORGE, 1)
    clock.advance(299)
    assert get_page(client, FORGE, 1).headers["last-modified"] == before.headers["last-modified"]
    clock.advance(2)
    after = get_page(client, FORGE, 1)
    assert http_ts(after.headers["last-modified"]) == int(clock.now)
    assert sandbox.snapshot("orders", FORGE).generation == 1


# --------------------------------------------------------------------------------------
# Pagination and errors
# --------------------------------------------------------------------------------------


def test_page_past_the_end_is_404(serve) -> None:
    _, client = serve()
    n = int(get_page(client, FORGE, 1).headers["x-pages"])
    r = get_page(client, FORGE, n + 1)
    assert r.status_code == 404
    assert r.json() == {"error": "Undefined 404 response. Original message: Requested page does not exist!"}
    assert r.headers["content-type"] == "application/json; charset=UTF-8"
    assert get_page(client, FORGE, n).status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"order_type": "all", "page": "0"},
        {"order_type": "all", "page": "-3"},
        {"order_type": "all", "page": "abc"},
        {"order_type": "all", "page": "1.5"},
        {"page": "1"},  # order_type is required
        {"order_type": "both", "page": "1"},
        {"order_type": "all", "type_id": "x"},
    ],
)
def test_bad_parameters_are_400(serve, params) -> None:
    _, client = serve({FORGE: 1})
    r = client.get(ORDERS.format(FORGE), params=params)
    assert r.status_code == 400
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]


def test_unknown_region_and_route_are_404(serve) -> None:
    _, client = serve({FORGE: 1})
    r = client.get(ORDERS.format(10000099), params={"order_type": "all"})
    assert r.status_code == 404 and set(r.json()) == {"error"}
    assert client.get(ORDERS.format("forge"), params={"order_type": "all"}).status_code == 400
    r = client.get("/universe/nothing")
    assert r.status_code == 404 and set(r.json()) == {"error"}


# --------------------------------------------------------------------------------------
# Refresh
# --------------------------------------------------------------------------------------


def test_refresh_changes_data_last_modified_and_etags(serve) -> None:
    sandbox, client = serve({FORGE: 40, DOMAIN: 2})
    old_pages = walk(client, FORGE)
    old_df = sandbox.orders_snapshot(FORGE)
    domain_before = get_page(client, DOMAIN, 1)
    prices_before = client.get("/markets/prices")

    res = client.post("/_sandbox/refresh", json={"route": "orders", "region_id": FORGE})
    assert res.status_code == 200
    assert res.json()["refreshed"][0]["generation"] == 1

    new_pages = walk(client, FORGE)
    new_df = sandbox.orders_snapshot(FORGE)
    assert http_ts(new_pages[0].headers["last-modified"]) > http_ts(old_pages[0].headers["last-modified"])
    assert len({r.headers["last-modified"] for r in new_pages}) == 1
    old_etags = {r.headers["etag"] for r in old_pages}
    changed = [r for r in new_pages if r.headers["etag"] not in old_etags]
    assert changed, "a refresh must change some page ETags"
    # a stale ETag now gets the new body
    r = get_page(client, FORGE, 1, **{"If-None-Match": old_pages[0].headers["etag"]})
    assert r.status_code == 200 and r.content == new_pages[0].content
    assert [o["order_id"] for p in new_pages for o in p.json()] == new_df["order_id"].tolist()

    # ~10% changed, ~5% vanished, ~5% new (new ids are larger than any old id)
    old_ids, new_ids = set(old_df.order_id), set(new_df.order_id)
    vanished, added = old_ids - new_ids, new_ids - old_ids
    n = len(old_df)
    assert 0.02 * n < len(vanished) < 0.09 * n
    assert 0.02 * n < len(added) < 0.09 * n
    assert min(added) > max(old_ids)
    both = old_df.merge(new_df, on="order_id", suffixes=("_old", "_new"))
    modified = (both.price_old != both.price_new) | (both.volume_remain_old != both.volume_remain_new)
    assert 0.05 * len(both) < modified.sum() < 0.16 * len(both)
    assert (both.volume_remain_new <= both.volume_remain_old).all()
    assert (new_df.volume_remain <= new_df.volume_total).all() and (new_df.volume_remain >= 1).all()
    assert new_df.order_id.is_monotonic_increasing

    # other snapshots are untouched
    assert get_page(client, DOMAIN, 1).headers["last-modified"] == domain_before.headers["last-modified"]
    assert client.get("/markets/prices").headers["etag"] == prices_before.headers["etag"]

    # prices refresh via the Python API
    sandbox.refresh("prices")
    after = client.get("/markets/prices")
    assert after.headers["etag"] != prices_before.headers["etag"]
    assert http_ts(after.headers["last-modified"]) > http_ts(prices_before.headers["last-modified"])
    assert {r["type_id"] for r in after.json()} == {r["type_id"] for r in prices_before.json()}


def test_refresh_after_pages_switches_snapshot_mid_walk(serve) -> None:
    sandbox, client = serve({FORGE: 6})
    old_df = sandbox.orders_snapshot(FORGE)
    sandbox.refresh_after_pages(2, FORGE)
    p1, p2, p3 = (get_page(client, FORGE, p) for p in (1, 2, 3))
    assert p1.headers["last-modified"] == p2.headers["last-modified"]
    assert http_ts(p3.headers["last-modified"]) > http_ts(p2.headers["last-modified"])
    assert sandbox.snapshot("orders", FORGE).generation == 1
    new_df = sandbox.orders_snapshot(FORGE)
    assert [o["order_id"] for o in p1.json()] == old_df.order_id.iloc[:OPP].tolist()
    assert [o["order_id"] for o in p3.json()] == new_df.order_id.iloc[2 * OPP : 3 * OPP].tolist()
    # one-shot: nothing changes afterwards
    p4 = get_page(client, FORGE, 4)
    assert p4.headers["last-modified"] == p3.headers["last-modified"]

    # the same through the admin API
    assert client.post("/_sandbox/refresh_after_pages", json={"n": 1, "region_id": FORGE}).status_code == 200
    a = get_page(client, FORGE, 1)
    b = get_page(client, FORGE, 1)
    assert a.headers["last-modified"] == p4.headers["last-modified"] != b.headers["last-modified"]
    assert sandbox.snapshot("orders", FORGE).generation == 2


def test_same_config_gives_identical_bytes() -> None:
    kw = dict(orders_per_page=100, n_price_types=300, seed=7)
    a, b = EsiSandbox({FORGE: 5, HEIMATAR: 2}, **kw), EsiSandbox({FORGE: 5, HEIMATAR: 2}, **kw)
    for _ in range(2):
        for route, region in (("orders", FORGE), ("orders", HEIMATAR), ("prices", None), ("status", None)):
            sa, sb = a.snapshot(route, region), b.snapshot(route, region)
            assert sa.pages == sb.pages and sa.etags == sb.etags
        a.refresh("all")
        b.refresh("all")
    c = EsiSandbox({FORGE: 5, HEIMATAR: 2}, **{**kw, "seed": 8})
    assert c.snapshot("orders", FORGE).pages != b.snapshot("orders", FORGE).pages
    # a region's data does not depend on which other regions are configured
    d = EsiSandbox({FORGE: 5}, **kw)
    assert d.snapshot("orders", FORGE).pages == EsiSandbox({FORGE: 5, HEIMATAR: 2}, **kw).snapshot("orders", FORGE).pages
    # order ids are unique across regions
    ids_f, ids_h = set(a.orders_snapshot(FORGE).order_id), set(a.orders_snapshot(HEIMATAR).order_id)
    assert not ids_f & ids_h


# --------------------------------------------------------------------------------------
# Error injection, limits and counters
# --------------------------------------------------------------------------------------


def test_error_rate_injects_5xx_including_html(serve) -> None:
    sandbox, client = serve({FORGE: 2}, error_rate=1.0, error_seed=3, error_limit=10_000)
    responses = [get_page(client, FORGE, 1) for _ in range(80)]
    assert {r.status_code for r in responses} <= {502, 503, 504}
    assert len({r.status_code for r in responses}) == 3
    html = [r for r in responses if r.headers["content-type"].startswith("text/html")]
    assert len(html) >= len(responses) / 4
    for r in html:
        assert r.status_code == 502 and r.text.startswith("<html>") and "502 Bad Gateway" in r.text
    for r in responses:
        if r not in html:
            body = r.json()
            assert body["error"] in ("Timeout contacting tranquility", "The datasource tranquility is temporarily unavailable")
            if r.status_code in (502, 504):
                assert body == {"error": "Timeout contacting tranquility", "timeout": 10}
    assert sandbox.counters()["orders"]["status_5xx"] == 80

    # a share of requests fails; the RNG is seeded, so the sequence repeats
    def run(seed: int) -> list[int]:
        sandbox.configure(error_rate=0.3, error_seed=seed)
        return [get_page(client, FORGE, 1).status_code for _ in range(60)]

    first = run(11)
    assert 5 < sum(s >= 500 for s in first) < 35 and first.count(200) > 20
    assert run(11) == first
    # error_routes limits injection to some routes
    sandbox.configure(error_rate=1.0, error_routes=["prices"])
    assert get_page(client, FORGE, 1).status_code == 200
    assert client.get("/markets/prices").status_code >= 500


def test_counters_count_and_reset(serve) -> None:
    sandbox, client = serve()
    sandbox.configure(request_log=True)
    pages = walk(client, FORGE)
    not_modified = get_page(client, FORGE, 1, **{"If-None-Match": pages[0].headers["etag"]})
    missing = get_page(client, FORGE, 99)
    assert (not_modified.status_code, missing.status_code) == (304, 404)
    client.get("/markets/prices")
    client.get("/status")
    client.get("/nowhere")
    c = client.get("/_sandbox/counters").json()
    assert c == sandbox.counters()
    assert set(c) == {"total", "orders", "prices", "status", "other"}
    assert all(set(v) == set(COUNTER_KEYS) for v in c.values())
    o = c["orders"]
    assert o["requests"] == 6 and o["status_200"] == 4 and o["status_304"] == 1 and o["status_4xx"] == 1
    assert o["body_bytes"] == sum(len(r.content) for r in pages) + len(missing.content)
    assert c["prices"]["requests"] == 1 and c["status"]["status_200"] == 1 and c["other"]["status_4xx"] == 1
    assert c["total"]["requests"] == 9
    assert c["total"]["body_bytes"] == sum(c[k]["body_bytes"] for k in ("orders", "prices", "status", "other"))
    log = sandbox.request_log()
    assert len(log) == 9 and [e["status"] for e in log[:4]] == [200, 200, 200, 200]
    assert client.get("/_sandbox/requests").json() == orjson.loads(orjson.dumps(log))

    assert client.post("/_sandbox/counters/reset").json() == {"ok": True}
    assert all(v == 0 for d in sandbox.counters().values() for v in d.values())
    assert sandbox.request_log() == []


def test_error_limit_gives_420_on_all_routes_until_reset(serve) -> None:
    clock = FakeClock(60 * 29_916_667 + 20.0)  # 40 s left in the current (minute-aligned) 60 s window
    sandbox, client = serve({FORGE: 1}, clock=clock, error_limit=3)
    remains = []
    for _ in range(3):
        r = get_page(client, FORGE, 9)
        assert r.status_code == 404
        remains.append(int(r.headers["x-esi-error-limit-remain"]))
        assert int(r.headers["x-esi-error-limit-reset"]) == 40
    assert remains == [2, 1, 0]
    for r in (get_page(client, FORGE, 1), client.get("/markets/prices"), client.get("/status")):
        assert r.status_code == 420
        assert r.json()["error"] == ERROR_420_TEXT
        assert r.json()["error"].startswith("This software has exceeded the error limit for ESI.")
        assert r.headers["x-esi-error-limit-remain"] == "0"
    assert sandbox.counters()["total"]["status_420"] == 3
    clock.advance(40)  # next window
    r = client.get("/markets/prices")
    assert r.status_code == 200 and r.headers["x-esi-error-limit-remain"] == "3"
    assert r.headers["x-esi-error-limit-reset"] == "60"
    # error-limited-only route: no bucket headers
    assert "x-ratelimit-group" not in r.headers


def test_bucket_rate_limit_and_429(serve) -> None:
    clock = FakeClock()
    sandbox, client = serve({FORGE: 3}, clock=clock, rate_limit_tokens={"market-order": 9})
    r1 = get_page(client, FORGE, 1)
    assert r1.headers["x-ratelimit-group"] == "market-order"
    assert r1.headers["x-ratelimit-limit"] == "9/15m"
    assert (r1.headers["x-ratelimit-used"], r1.headers["x-ratelimit-remaining"]) == ("2", "7")
    r = get_page(client, FORGE, 1, **{"If-None-Match": r1.headers["etag"]})  # 304 costs 1
    assert (r.status_code, r.headers["x-ratelimit-used"], r.headers["x-ratelimit-remaining"]) == (304, "1", "6")
    r = get_page(client, FORGE, 9)  # 4xx costs 5
    assert (r.status_code, r.headers["x-ratelimit-used"], r.headers["x-ratelimit-remaining"]) == (404, "5", "1")
    clock.advance(60)
    r = get_page(client, FORGE, 2)  # needs 2, has 1
    assert r.status_code == 429 and r.headers["x-ratelimit-used"] == "0"
    assert int(r.headers["retry-after"]) == 900 - 60  # the first request's tokens come back first
    assert set(r.json()) == {"error"}
    # the status group has its own bucket, and rate-limit headers
    s = client.get("/status")
    assert s.status_code == 200 and s.headers["x-ratelimit-group"] == "status"
    assert s.headers["x-ratelimit-limit"] == "600/15m" and s.headers["x-ratelimit-remaining"] == "598"
    assert "x-esi-error-limit-remain" in s.headers  # error_limit_headers_everywhere (default)
    # tokens come back after the sliding window
    clock.advance(900 - 60)
    r = get_page(client, FORGE, 2)  # all three first requests were at t0: 9 - 2 left
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "7"
    assert sandbox.counters()["orders"]["status_429"] == 1
    sandbox.configure(error_limit_headers_everywhere=False)
    assert "x-esi-error-limit-remain" not in get_page(client, FORGE, 3).headers
    assert "x-esi-error-limit-remain" in client.get("/markets/prices").headers


def test_admin_config_and_state(serve) -> None:
    sandbox, client = serve()
    r = client.post(
        "/_sandbox/config",
        json={"latency": 0.01, "cache_seconds": {"prices": 120}, "error_limit": 50, "rate_limit_tokens": {"orders": 77}},
    )
    assert r.status_code == 200
    cfg = r.json()
    assert cfg["latency"] == 0.01 and cfg["cache_seconds"] == {"orders": 300, "prices": 120, "status": 30}
    assert cfg["rate_limit_tokens"]["market-order"] == 77 and cfg["error_limit"] == 50
    assert sandbox.config.latency == 0.01 and client.get("/_sandbox/config").json() == cfg
    assert get_page(client, FORGE, 1).headers["x-ratelimit-limit"] == "77/15m"
    assert client.post("/_sandbox/config", json={"no_such_knob": 1}).status_code == 400
    assert client.post("/_sandbox/config", json={"error_rate": 2}).status_code == 400
    assert client.post("/_sandbox/refresh", json={"route": "orders", "region_id": 1}).status_code == 400
    state = client.get("/_sandbox/state").json()
    by_key = {(s["route"], s["region_id"]): s for s in state["snapshots"]}
    assert by_key[("orders", FORGE)]["pages"] == sandbox.page_count(FORGE)
    assert by_key[("orders", FORGE)]["last_modified"] == get_page(client, FORGE, 1).headers["last-modified"]
    assert client.post("/_sandbox/refresh", json={"route": "all"}).json()["ok"] is True
    assert {s["generation"] for s in sandbox.state()} == {1}
    assert client.get("/_sandbox/nothing").status_code == 404


# --------------------------------------------------------------------------------------
# Full size
# --------------------------------------------------------------------------------------


def test_forge_sized_snapshot_served_concurrently() -> None:
    sandbox = EsiSandbox({FORGE: 300}, n_price_types=300)
    snap = sandbox.snapshot("orders", FORGE)
    assert snap.page_count == 300

    async def fetch_all(base_url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=12, max_keepalive_connections=12)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
            sem = asyncio.Semaphore(12)

            async def one(page: int) -> httpx.Response:
                async with sem:
                    return await client.get(ORDERS.format(FORGE), params={"order_type": "all", "page": page})

            return await asyncio.gather(*(one(p) for p in range(1, 301)))

    with serve_in_thread(sandbox) as base_url:
        responses = asyncio.run(fetch_all(base_url))
    assert {r.status_code for r in responses} == {200}
    assert {r.headers["x-pages"] for r in responses} == {"300"}
    assert len({r.headers["last-modified"] for r in responses}) == 1
    ids = [o["order_id"] for r in responses for o in orjson.loads(r.content)]
    assert 299_000 < len(ids) <= 300_000 and len(set(ids)) == len(ids)
    assert ids == sandbox.orders_snapshot(FORGE)["order_id"].tolist()
    assert [r.headers["etag"] for r in responses] == list(snap.etags)
    assert sandbox.counters()["orders"]["body_bytes"] == snap.total_bytes
