"""The IRIS CRM sandbox over real HTTP (127.0.0.1): every route's bodies against the vendor's
OpenAPI spec (v1.23.0, vendored in sync_assets_tests/data/), Laravel's paginator envelope, per_page
and date validation, keys, the per-key rate limit, fault knobs, and the seeded world's consistency
and determinism.

The spec is converted to JSON Schema (``$ref`` resolved, ``allOf`` merged, ``nullable`` mapped to
``null``, objects with properties closed so the sandbox cannot invent fields).  Where the spec
contradicts IRIS's documented real behaviour, :func:`relaxed_components` relaxes exactly that,
each with its reason.  ``format: date`` is IRIS's ``MM/DD/YYYY`` (the spec's examples) and
``format: date-time`` is ``Y-m-d\\TH:i:sP``.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import httpx
import jsonschema
import pytest
import yaml

from sync_assets.apis.iris.sandbox import DATA_START, PER_PAGE, ROUTES, IrisSandbox, IrisWorld
from sync_assets.apis.iris.sandbox.laravel import url_window
from sync_assets.apis.iris.sandbox.server import KEYS_ENV, build_parser, main, sandbox_kwargs
from sync_assets.apis.sandbox_serving import serve_in_thread

from .helpers import resolve_ref

SPEC_PATH = Path(__file__).resolve().parent / "data" / "iris-openapi-v1.23.0.yaml"
TODAY = date(2025, 7, 16)
KEY, OTHER_KEY = "test-key-sync", "test-key-other"
KEYS = {"sync": KEY, "other": OTHER_KEY}
WORLD = dict(seed=7, merchants=20, today=TODAY)
V1 = "/api/v1"
VALIDATION = {"message": "Validation exception"}


# --------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def served(**kwargs: Any) -> Iterator[tuple[IrisSandbox, httpx.Client]]:
    """A fresh small sandbox and a client sending the ``sync`` key."""
    sandbox = IrisSandbox(api_keys=KEYS, **{**WORLD, **kwargs})
    with serve_in_thread(sandbox) as url, httpx.Client(base_url=url, headers={"X-API-KEY": KEY}, timeout=30) as client:
        yield sandbox, client


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[IrisSandbox, httpx.Client]]:
    """Read-only tests share one sandbox (tests that change knobs or data serve their own)."""
    with served() as pair:
        yield pair


@pytest.fixture(scope="module")
def sandbox(shared: tuple[IrisSandbox, httpx.Client]) -> IrisSandbox:
    return shared[0]


@pytest.fixture(scope="module")
def client(shared: tuple[IrisSandbox, httpx.Client]) -> httpx.Client:
    return shared[1]


def ok(client: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    r = client.get(V1 + path, params=params)
    assert r.status_code == 200, (path, params, r.status_code, r.text)
    return r.json()


def walk(client: httpx.Client, path: str, **params: Any) -> list[httpx.Response]:
    """Every page of a list route (by ``meta.last_page``)."""
    pages = [client.get(V1 + path, params={**params, "page": 1})]
    assert pages[0].status_code == 200, pages[0].text
    for page in range(2, pages[0].json()["meta"]["last_page"] + 1):
        pages.append(client.get(V1 + path, params={**params, "page": page}))
        assert pages[-1].status_code == 200, pages[-1].text
    return pages


def rows_of(pages: list[httpx.Response]) -> list[dict]:
    return [row for r in pages for row in r.json()["data"]]


def ym(d: date) -> tuple[int, int]:
    return d.year, d.month


# --------------------------------------------------------------------------------------
# The spec, as JSON Schema
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec() -> dict:
    raw = yaml.load(SPEC_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {**raw, "components": relaxed_components(raw["components"])}


def relaxed_components(components: dict) -> dict:
    """The spec's components with the documented real behaviour where they disagree."""
    c = copy.deepcopy(components)
    s = c["schemas"]
    meta = s["Meta"]["properties"]
    # Real bodies send meta.last_page as an integer and add meta.links (SPAPI_IRIS.md §2.4).
    meta["last_page"] = {"type": "integer"}
    meta["links"] = {"type": "array", "items": {
        "type": "object", "required": ["url", "label", "active"],
        "properties": {"url": {"type": "string", "nullable": True}, "label": {"type": "string"}, "active": {"type": "boolean"}}}}
    # Laravel's paginator: from/to are null on an empty page, prev/next null at the ends (observed).
    for name in ("from", "to"):
        meta[name]["nullable"] = True
    for name in ("prev", "next"):
        s["Links"]["properties"][name]["nullable"] = True
    # Unset merchant dates are null in real bodies (§2.7: "null dates").
    for name in ("closed", "first_batch", "last_batch", "deactivated"):
        s["BriefMerchantInfo"]["properties"][name]["nullable"] = True
    # Residual figures are typed integer yet carry cents and fractions (the spec's own bps: 0.29).
    money = {"MerchantRow": ("sales_amount", "income", "expense", "net", "bps", "percentage", "agent_net"),
             "SummaryResponse": ("sum_agent_net",), "LineItems": ("income", "expense", "percentage", "agent_net")}
    for schema, names in money.items():
        for name in names:
            s[schema]["properties"][name]["type"] = "number"
    for name in ("agent_net", "percentage"):
        s["LineItems"]["properties"]["agents"]["items"]["properties"][name]["type"] = "number"
    # A one-off line item has no recurrence (the spec: the max count "will be null if there is no limit").
    for name in ("recurring_start_date", "recurring_payment_count", "recurring_max_payment_count", "recurring_period"):
        s["LineItems"]["properties"][name]["nullable"] = True
    s["LineItems"]["properties"]["recurring_period"]["enum"].append(None)
    return c


def to_json_schema(spec: dict, node: Any) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema (draft 4), ``allOf`` of objects merged into one closed object."""
    node = resolve_ref(spec, node)
    if "allOf" in node:
        parts = [resolve_ref(spec, p) for p in node["allOf"]]
        node = {"type": "object", "properties": {k: v for p in parts for k, v in p.get("properties", {}).items()}}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(spec, sub) for name, sub in value.items()}
        elif key == "items":
            out[key] = to_json_schema(spec, value)
        elif key in ("type", "enum", "format", "required"):
            out[key] = copy.deepcopy(value)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("type") == "object" and "properties" in out:
        out["additionalProperties"] = False
    return out


def _checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date", raises=ValueError)
    def _date(value: object) -> bool:
        return not isinstance(value, str) or bool(re.fullmatch(r"\d{2}/\d{2}/\d{4}", value) and datetime.strptime(value, "%m/%d/%Y"))

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        iso = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}"
        return not isinstance(value, str) or bool(re.fullmatch(iso, value) and datetime.fromisoformat(value))

    return checker


def validator(spec: dict, spec_path: str, status: str = "200") -> jsonschema.Draft4Validator:
    responses = spec["paths"][spec_path]["get"]["responses"]
    response = resolve_ref(spec, responses.get(int(status)) or responses[status])  # YAML reads `200:` as an int
    schema = to_json_schema(spec, response["content"]["application/json"]["schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=_checker())


def assert_conforms(v: jsonschema.Draft4Validator, body: Any, where: str) -> None:
    errors = sorted(v.iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, f"{where}: {len(errors)} errors, first: {errors[0].message} at {list(errors[0].absolute_path)}"


# --------------------------------------------------------------------------------------
# Spec conformance
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fetched(sandbox: IrisSandbox, client: httpx.Client) -> dict[str, list[httpx.Response]]:
    """Responses of every route, walked over the whole small world, by route name."""
    world = sandbox.world
    got: dict[str, list[httpx.Response]] = {r.name: [] for r in ROUTES}
    got["merchants"] += walk(client, "/merchants", per_page=10)
    got["merchants"] += walk(client, "/merchants", per_page=25, sort_by="last_batch", sort_dir="desc", status="Open")
    got["merchants"] += walk(client, "/merchants", page=9)  # past the end
    for mid in world.merchants:
        got["merchant"].append(client.get(f"{V1}/merchants/{mid}"))
        got["transactions"] += walk(client, f"/merchants/{mid}/transactions", per_page=100)
        got["chargebacks"] += walk(client, f"/merchants/{mid}/chargebacks", per_page=10)
    got["processors"].append(client.get(f"{V1}/processors"))
    for y, m in world.months():
        got["residual_summary"] += walk(client, f"/residuals/reports/summary/{y}/{m}", hide_null_merchants="false")
        got["line_items"] += walk(client, f"/residuals/lineitems/{y}/{m}", per_page=10)
        for p in world.processors:
            got["residual_rows"] += walk(client, f"/residuals/reports/summary/rows/{p.id}/{y}/{m}", hide_null_merchants="false", template="false")
    return got


def test_every_route_was_fetched_with_data(fetched: dict[str, list[httpx.Response]]) -> None:
    for name, responses in fetched.items():
        assert responses and all(r.status_code == 200 for r in responses), name
        bodies = [r.json() for r in responses]
        assert any(b.get("data") or b.get("processors") or b.get("general") for b in bodies), f"only empty bodies for {name}"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_bodies_match_the_vendor_spec(fetched: dict[str, list[httpx.Response]], spec: dict, route: Any) -> None:
    v = validator(spec, route.spec_path)
    for r in fetched[route.name]:
        assert_conforms(v, r.json(), str(r.request.url))


def test_error_bodies_match_the_spec(client: httpx.Client, spec: dict) -> None:
    cases = {"401": (httpx.get(f"{client.base_url}{V1}/merchants"), "Unauthenticated"),
             "404": (client.get(f"{V1}/merchants/999"), "Not found")}
    for status, (r, message) in cases.items():
        assert r.status_code == int(status) and r.json() == {"message": message}
        assert_conforms(validator(spec, "/merchants/{merchantNumber}", status), r.json(), status)
    assert client.get(f"{V1}/leads").json() == {"message": "Not found"}  # not served


def test_the_converted_schemas_catch_wrong_bodies(spec: dict) -> None:
    v = validator(spec, "/merchants")
    good = {"mid": "0012", "name": "A", "opened": "01/21/2019", "closed": None, "created": "2019-01-01T12:04:40+05:00",
            "modified": "2019-01-01T12:04:40-04:00", "first_batch": None, "last_batch": None, "group": "g", "processor": "p",
            "datasource": "d", "sic_code": "", "vim": "No", "deactivated": None, "status": "Open", "active": "Yes", "leads": [1]}
    assert not list(v.iter_errors({"data": [good]}))
    for bad in ({"mid": 12}, {"opened": "2019-01-21"}, {"created": "2019-01-01T12:04:40Z"}, {"created": "2019-01-01 12:04:40+05:00"},
                {"name": None}, {"extra": 1}, {"leads": ["1"]}):
        assert list(v.iter_errors({"data": [{**good, **bad}]})), bad
    assert list(v.iter_errors({"data": [], "meta": {"last_page": "1"}}))
    rows = validator(spec, "/residuals/reports/summary/rows/{processor_id}/{year}/{month}")
    assert not list(rows.iter_errors({"data": [{"mid": 1, "bps": 0.29, "transactions": 3}]}))
    assert list(rows.iter_errors({"data": [{"mid": "1"}]})) and list(rows.iter_errors({"data": [{"transactions": 1.5}]}))


# --------------------------------------------------------------------------------------
# The paginator
# --------------------------------------------------------------------------------------


def test_paginator_envelope_exactly(client: httpx.Client) -> None:
    body = ok(client, "/merchants", per_page=10, page=2, sort_by="name")
    path = f"{client.base_url}{V1}/merchants"
    url = lambda n: f"{path}?page={n}"  # noqa: E731  (Laravel: page only, unless withQueryString)
    assert list(body) == ["data", "links", "meta"]
    assert body["links"] == {"first": url(1), "last": url(2), "prev": url(1), "next": None}
    assert body["meta"] == {
        "current_page": 2, "from": 11, "last_page": 2, "path": path, "per_page": 10, "to": 20, "total": 20,
        "links": [{"url": url(1), "label": "&laquo; Previous", "active": False}, {"url": url(1), "label": "1", "active": False},
                  {"url": url(2), "label": "2", "active": True}, {"url": None, "label": "Next &raquo;", "active": False}],
    }
    assert len(body["data"]) == 10
    first = ok(client, "/merchants", per_page=10, sort_by="name")
    assert first["links"]["prev"] is None and first["links"]["next"] == url(2) and first["meta"]["from"] == 1
    names = [m["name"].lower() for m in first["data"] + body["data"]]
    assert names == sorted(names)


def test_a_page_past_the_end_is_empty_with_the_same_total(client: httpx.Client) -> None:
    body = ok(client, "/merchants", per_page=10, page=5)
    path = f"{client.base_url}{V1}/merchants"
    assert body["data"] == [] and body["meta"]["total"] == 20 and body["meta"]["current_page"] == 5
    assert body["meta"]["from"] is None and body["meta"]["to"] is None and body["meta"]["last_page"] == 2
    assert body["links"] == {"first": f"{path}?page=1", "last": f"{path}?page=2", "prev": f"{path}?page=4", "next": None}
    assert not any(link["active"] for link in body["meta"]["links"])
    assert ok(client, "/merchants", page="x")["meta"]["current_page"] == 1  # Laravel: a bad page is page 1


def test_url_window_is_laravels() -> None:
    assert url_window(1, 1) == [[1]] and url_window(5, 13) == [list(range(1, 14))]
    assert url_window(1, 30) == [list(range(1, 11)), None, [29, 30]]
    assert url_window(15, 30) == [[1, 2], None, list(range(12, 19)), None, [29, 30]]
    assert url_window(28, 30) == [[1, 2], None, list(range(21, 31))]


def test_long_walks_show_the_window_and_reach_every_batch(sandbox: IrisSandbox, client: httpx.Client) -> None:
    m = max(sandbox.world.merchants.values(), key=lambda m: (m.last_batch - m.first_batch) if m.batch_span else timedelta(0))
    pages = walk(client, f"/merchants/{m.mid}/transactions", per_page=10)
    meta = pages[0].json()["meta"]
    assert meta["last_page"] >= 14, "the widest merchant should need Laravel's sliding window"
    labels = [link["label"] for link in meta["links"]]
    assert labels[:12] == ["&laquo; Previous", *map(str, range(1, 11)), "..."] and labels[-1] == "Next &raquo;"
    batches = rows_of(pages)
    assert batches == sandbox.world.batches_between(m.mid)[0]
    assert [b["date"] for b in batches][0] == m.first_batch.strftime("%m/%d/%Y")


def test_links_keep_the_query_when_configured() -> None:
    with served(links_with_query=True) as (_, client):
        body = ok(client, "/merchants", per_page=10, status="Open", page=1)
        assert body["links"]["next"].endswith(f"{V1}/merchants?per_page=10&status=Open&page=2")
        assert body["meta"]["links"][1]["url"].endswith("?per_page=10&status=Open&page=1")


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _list_path(world: IrisWorld, route: str) -> str:
    mid, (y, m), pid = next(iter(world.merchants)), world.months()[-1], world.processors[0].id
    return {"merchants": "/merchants", "transactions": f"/merchants/{mid}/transactions", "chargebacks": f"/merchants/{mid}/chargebacks",
            "residual_summary": f"/residuals/reports/summary/{y}/{m}", "line_items": f"/residuals/lineitems/{y}/{m}",
            "residual_rows": f"/residuals/reports/summary/rows/{pid}/{y}/{m}"}[route]


@pytest.mark.parametrize("route", sorted(PER_PAGE))
def test_per_page_outside_the_enum_is_a_validation_error(sandbox: IrisSandbox, client: httpx.Client, route: str) -> None:
    path = _list_path(sandbox.world, route)
    allowed = PER_PAGE[route]
    for size in allowed:
        assert ok(client, path, per_page=size)["meta"]["per_page"] == size
    assert ok(client, path)["meta"]["per_page"] == max(allowed)
    for bad in ("7", "0", "abc", "-10", "2000") + (("500",) if 500 not in allowed else ()):
        r = client.get(V1 + path, params={"per_page": bad})
        assert (r.status_code, r.json()) == (405, VALIDATION), (route, bad)


def test_validation_status_422_carries_laravels_errors() -> None:
    with served(validation_status=422) as (_, client):
        r = client.get(f"{V1}/merchants", params={"per_page": 7})
        assert r.status_code == 422
        assert r.json()["message"] == "Validation exception" and list(r.json()["errors"]) == ["per_page"]


@pytest.mark.parametrize("params", [
    {"sort_by": "colour"}, {"sort_dir": "up"}, {"status": "Pending"}, {"vim": "maybe"}, {"date_filter": "updated"},
])
def test_bad_merchant_parameters_are_rejected(client: httpx.Client, params: dict) -> None:
    r = client.get(f"{V1}/merchants", params=params)
    assert (r.status_code, r.json()) == (405, VALIDATION)


@pytest.mark.parametrize("name", ["group", "processor", "datasource", "mid", "name", "vim", "active", "status"])
def test_merchant_filters_select_what_the_world_says(sandbox: IrisSandbox, client: httpx.Client, name: str) -> None:
    merchants = list(sandbox.world.merchants.values())
    probe = merchants[2]
    value, keep = {
        "group": (probe.group.name.upper(), lambda m: m.group == probe.group),
        "processor": (probe.processor.name, lambda m: m.processor == probe.processor),
        "datasource": (probe.datasource.name, lambda m: m.datasource == probe.datasource),
        "mid": (probe.mid[2:6], lambda m: probe.mid[2:6] in m.mid),
        "name": (probe.name.split()[1].lower(), lambda m: probe.name.split()[1].lower() in m.name.lower()),
        "vim": ("false", lambda m: not m.vim),
        "active": ("true", lambda m: m.active),
        "status": ("Closed", lambda m: m.closed is not None),
    }[name]
    expected = {m.mid for m in merchants if keep(m)}
    assert probe.mid in expected or name == "status"
    assert _mids(ok(client, "/merchants", **{name: value})) == expected


def test_residual_filters(sandbox: IrisSandbox, client: httpx.Client) -> None:
    world = sandbox.world
    y, m = world.months()[-1]
    pid = world.processors[-1].id
    only = ok(client, f"/residuals/reports/summary/{y}/{m}", processor=pid)["data"]
    assert [s["processor_id"] for s in only] == [pid] and only == world.residual_summary(y, m, processor=pid)
    row = world.residual_rows(pid, y, m)[0]
    found = ok(client, f"/residuals/reports/summary/rows/{pid}/{y}/{m}", search=str(row["mid"]))["data"]
    assert row in found and len(found) < len(world.residual_rows(pid, y, m, hide_null_merchants=False))
    for params in ({"processor": "TSYS"}, {"hide_null_merchants": "maybe"}, {"agent": "x"}):
        r = client.get(f"{V1}/residuals/reports/summary/{y}/{m}", params=params)
        assert (r.status_code, r.json()) == (405, VALIDATION), params


# --------------------------------------------------------------------------------------
# Date filters
# --------------------------------------------------------------------------------------


def _mids(body_or_pages: Any) -> set[str]:
    data = body_or_pages["data"] if isinstance(body_or_pages, dict) else rows_of(body_or_pages)
    return {m["mid"] for m in data}


def test_modified_filter_takes_iso_8601_with_an_encoded_plus(sandbox: IrisSandbox, client: httpx.Client) -> None:
    world = sandbox.world
    start, end = datetime.fromisoformat("2025-01-01T00:00:00+00:00"), datetime.fromisoformat("2025-06-30T23:59:59-04:00")
    expected = {m.mid for m in world.merchants.values() if start <= m.modified <= end}
    assert expected and expected != set(world.merchants)
    query = "date_filter=modified&start_date=2025-01-01T00:00:00%2B00:00&end_date=2025-06-30T23:59:59-04:00&per_page=1000"
    r = client.get(f"{V1}/merchants?{query}")
    assert r.status_code == 200 and _mids(r.json()) == expected
    plus = client.get(f"{V1}/merchants?{query.replace('%2B', '+')}")  # "+" decodes to a space: a client bug
    assert "+00:00" in str(plus.request.url) and (plus.status_code, plus.json()) == (405, VALIDATION)


@pytest.mark.parametrize("params", [
    {"date_filter": "modified", "start_date": "2025-01-01T00:00:00+00:00"},  # end_date missing
    {"date_filter": "opened", "end_date": "2025-01-01"},  # start_date missing
    {"date_filter": "modified", "start_date": "2025-01-01", "end_date": "2025-02-01"},  # created/modified need ISO
    {"date_filter": "modified", "start_date": "2025-01-01T00:00:00Z", "end_date": "2025-02-01T00:00:00Z"},  # no Z
    {"date_filter": "modified", "start_date": "2025-01-01T00:00:00.000+00:00", "end_date": "2025-02-01T00:00:00+00:00"},
    {"date_filter": "opened", "start_date": "2025-01-01T00:00:00+00:00", "end_date": "2025-02-01T00:00:00+00:00"},  # Y-m-d only
    {"date_filter": "closed", "start_date": "2025-02-30", "end_date": "2025-03-01"},
    {"date_filter": "last_batch", "start_date": "01/01/2025", "end_date": "02/01/2025"},
])
def test_unparsable_or_missing_filter_dates_are_rejected(client: httpx.Client, params: dict) -> None:
    r = client.get(f"{V1}/merchants", params=params)
    assert (r.status_code, r.json()) == (405, VALIDATION), params


@pytest.mark.parametrize("field", ["opened", "closed", "first_batch", "last_batch", "deactivated", "created"])
def test_date_filters_select_what_the_world_says(sandbox: IrisSandbox, client: httpx.Client, field: str) -> None:
    world = sandbox.world
    if field == "created":
        start, end = "2024-03-01T00:00:00-05:00", "2024-12-31T23:59:59-05:00"
        lo, hi = datetime.fromisoformat(start), datetime.fromisoformat(end)
    else:
        start, end = "2024-01-01", "2025-07-15"
        lo, hi = date.fromisoformat(start), date.fromisoformat(end)
    expected = {m.mid for m in world.merchants.values() if getattr(m, field) is not None and lo <= getattr(m, field) <= hi}
    body = ok(client, "/merchants", date_filter=field, start_date=start, end_date=end)
    assert _mids(body) == expected
    if field in ("opened", "first_batch", "created"):
        assert expected, field


def test_transactions_and_chargebacks_filter_on_their_dates(sandbox: IrisSandbox, client: httpx.Client) -> None:
    world = sandbox.world
    m = next(m for m in world.merchants.values() if m.batch_span and m.first_batch < date(2024, 11, 1))
    body = ok(client, f"/merchants/{m.mid}/transactions", start_date="2024-11-01", end_date="2024-11-30", per_page=100)
    assert body["data"] == world.batches_for(m.mid, 2024, 11) and body["adjustments"] == world.adjustments_for(m.mid, 2024, 11)
    assert all(b["date"].startswith("11/") and b["date"].endswith("/2024") for b in body["data"])
    for params in ({"start_date": "2024-11-01T00:00:00+00:00"}, {"end_date": "11/30/2024"}):
        r = client.get(f"{V1}/merchants/{m.mid}/transactions", params=params)
        assert (r.status_code, r.json()) == (405, VALIDATION)
    cases = [c for mid in world.merchants for c in world.chargebacks_for(mid)]
    assert cases, "the small world should hold chargebacks"
    case = cases[0]
    day = datetime.strptime(case["chargeback_date"], "%m/%d/%Y").date().isoformat()
    body = ok(client, f"/merchants/{case['merchant_id']}/chargebacks", start_date=day, end_date=day)
    assert case in body["data"] and all(c["chargeback_date"] == case["chargeback_date"] for c in body["data"])


def test_line_items_filter_on_created(sandbox: IrisSandbox, client: httpx.Client) -> None:
    y, m = sandbox.world.months()[3]
    items = sandbox.world.line_items(y, m)
    day = datetime.fromisoformat(items[-1]["created"]).date()
    body = ok(client, f"/residuals/lineitems/{y}/{m}", created=day.isoformat())
    assert body["data"] == sandbox.world.line_items(y, m, created=day) and items[-1] in body["data"]
    r = client.get(f"{V1}/residuals/lineitems/{y}/{m}", params={"created": "yesterday"})
    assert (r.status_code, r.json()) == (405, VALIDATION)


# --------------------------------------------------------------------------------------
# Keys and the rate limit
# --------------------------------------------------------------------------------------


def test_a_missing_or_wrong_key_is_401_and_never_echoed(sandbox: IrisSandbox, client: httpx.Client) -> None:
    wrong = "wrong-key-should-not-appear"
    for headers in ({}, {"X-API-KEY": wrong}, {"Authorization": f"Bearer {KEY}"}):
        r = httpx.get(f"{client.base_url}{V1}/merchants", headers=headers)
        assert (r.status_code, r.json()) == (401, {"message": "Unauthenticated"})
        assert wrong not in r.text and wrong not in str(r.headers)
    assert httpx.get(f"{client.base_url}{V1}/processors", headers={"X-API-KEY": OTHER_KEY}).status_code == 200
    admin = httpx.get(f"{client.base_url}/_sandbox/state").text + httpx.get(f"{client.base_url}/_sandbox/counters").text
    assert all(k not in admin for k in (KEY, OTHER_KEY, wrong)) and '"sync"' in admin


def test_rate_limit_fixed_window_per_key() -> None:
    clock = [100.0]
    with served(rate_limit=3, rate_limit_window=2, timer=lambda: clock[0]) as (sandbox, client):
        remaining = [client.get(f"{V1}/processors").headers["x-ratelimit-remaining"] for _ in range(3)]
        assert remaining == ["2", "1", "0"]
        r = client.get(f"{V1}/processors")
        assert (r.status_code, r.json()) == (429, {"message": "Too Many Attempts."})
        assert r.headers["retry-after"] == "2" and r.headers["x-ratelimit-limit"] == "3" and r.headers["x-ratelimit-remaining"] == "0"
        other = client.get(f"{V1}/processors", headers={"X-API-KEY": OTHER_KEY})  # per key
        assert other.status_code == 200 and other.headers["x-ratelimit-remaining"] == "2"
        clock[0] += 1.5
        assert client.get(f"{V1}/processors").headers["retry-after"] == "1"
        clock[0] += 0.5  # the window is over: a new one opens
        r = client.get(f"{V1}/processors")
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "2" and "retry-after" not in r.headers
        client.get(f"{V1}/processors")
        counters = sandbox.counters()["sync"]
        assert counters["requests"] == 7 and counters["rate_limited"] == 2 and counters["max_in_window"] == 3
        assert counters["routes"] == {"processors": 7} and counters["statuses"] == {"200": 5, "429": 2}
        assert sandbox.counters()["other"]["requests"] == 1


def test_sliding_maximum_sees_bursts_across_window_edges() -> None:
    clock = [0.0]
    with served(rate_limit=3, rate_limit_window=2, timer=lambda: clock[0]) as (sandbox, client):
        client.get(f"{V1}/processors")
        clock[0] = 1.9
        client.get(f"{V1}/processors"), client.get(f"{V1}/processors")
        clock[0] = 2.0  # a fresh fixed window: three more pass, five within 0.1 s
        assert all(client.get(f"{V1}/processors").status_code == 200 for _ in range(3))
        c = sandbox.counters()["sync"]
        assert (c["max_in_window"], c["max_in_sliding_window"], c["rate_limited"]) == (3, 5, 0)


def test_every_api_response_states_the_limit(client: httpx.Client) -> None:
    for path in ("/merchants?per_page=7", "/merchants/1", "/nowhere", "/processors"):
        r = client.get(V1 + path)
        assert r.headers["x-ratelimit-limit"] == "500" and int(r.headers["x-ratelimit-remaining"]) < 500, path
    r = httpx.get(f"{client.base_url}{V1}/processors")
    assert r.status_code == 401 and "x-ratelimit-remaining" in r.headers  # guests are throttled per IP


# --------------------------------------------------------------------------------------
# Fault knobs and admin routes
# --------------------------------------------------------------------------------------


def test_injected_5xx_mix_html_and_json() -> None:
    with served(error_rate=1.0, error_seed=3) as (sandbox, client):
        responses = [client.get(f"{V1}/processors") for _ in range(10)]
        assert all(r.status_code >= 500 and "x-ratelimit-remaining" in r.headers for r in responses)
        kinds = {r.headers["content-type"].split(";")[0] for r in responses}
        assert kinds == {"text/html", "application/json"}
        assert any(r.json() == {"message": "Unexpected server error"} for r in responses if r.headers["content-type"] == "application/json")
        assert httpx.get(f"{client.base_url}{V1}/processors").status_code == 401  # keys first
        admin = httpx.post(f"{client.base_url}/_sandbox/config", json={"error_rate": 0})
        assert admin.json()["error_rate"] == 0 and client.get(f"{V1}/processors").status_code == 200


def test_failing_merchants_fail_only_their_transactions() -> None:
    with served() as (sandbox, client):
        failing, healthy = list(sandbox.world.merchants)[:2]
        r = httpx.post(f"{client.base_url}/_sandbox/failing_merchants", json={"mids": [failing]})
        assert r.status_code == 200 and sandbox.config.failing_merchants == {failing}
        for _ in range(3):
            r = client.get(f"{V1}/merchants/{failing}/transactions")
            assert (r.status_code, r.json()) == (500, {"message": "Unexpected server error"})
        assert client.get(f"{V1}/merchants/{int(failing)}/transactions").status_code == 500  # the same merchant by number
        assert client.get(f"{V1}/merchants/{failing}").status_code == 200
        assert client.get(f"{V1}/merchants/{healthy}/transactions").status_code == 200
        sandbox.set_failing_merchants([])
        assert client.get(f"{V1}/merchants/{failing}/transactions").status_code == 200
        assert failing.startswith("0")
        sandbox.configure(failing_merchants=[str(int(failing))])  # the number names the same merchant
        assert client.get(f"{V1}/merchants/{failing}/transactions").status_code == 500


def test_latency_delays_api_requests() -> None:
    with served(latency=0.4) as (_, client):
        t0 = time.perf_counter()
        client.get(f"{V1}/processors")
        assert time.perf_counter() - t0 >= 0.4
        t0 = time.perf_counter()
        httpx.get(f"{client.base_url}/_sandbox/state")  # admin routes are never slowed
        assert time.perf_counter() - t0 < 0.4


def test_republish_bumps_modified_and_changes_figures() -> None:
    with served() as (sandbox, client):
        y, m = sandbox.world.months()[-2]
        pid = sandbox.world.processors[1].id
        rows_path = f"/residuals/reports/summary/rows/{pid}/{y}/{m}"
        before_summary = {s["processor_id"]: s for s in ok(client, f"/residuals/reports/summary/{y}/{m}")["data"]}
        before_rows = ok(client, rows_path)["data"]
        r = httpx.post(f"{client.base_url}/_sandbox/republish", json={"year": y, "month": m, "processor_id": pid, "drop_rows": 1})
        assert r.status_code == 200 and r.json()[0]["revision"] == sandbox.world.report(y, m, pid).revision
        after_summary = {s["processor_id"]: s for s in ok(client, f"/residuals/reports/summary/{y}/{m}")["data"]}
        after_rows = ok(client, rows_path)["data"]
        old, new = before_summary[pid], after_summary[pid]
        assert datetime.fromisoformat(new["modified"]) > datetime.fromisoformat(old["modified"]) and new["created"] == old["created"]
        assert new["sum_income"] != old["sum_income"] and new["merchants_count"] == old["merchants_count"] - 1
        assert len(after_rows) == len(before_rows) - 1 and after_rows == sandbox.world.residual_rows(pid, y, m)
        others = [p for p in before_summary if p != pid]
        assert all(after_summary[p] == before_summary[p] for p in others)  # one processor only
        assert httpx.post(f"{client.base_url}/_sandbox/republish", json={"year": TODAY.year, "month": TODAY.month}).status_code == 400


def test_close_add_and_modify_merchants_show_up_in_a_modified_sync() -> None:
    with served() as (sandbox, client):
        world, base = sandbox.world, client.base_url
        cursor = max(m.modified for m in world.merchants.values())
        open_mids = [m.mid for m in world.merchants.values() if not m.closed and m.batch_span]
        closed = httpx.post(f"{base}/_sandbox/merchants/close", json={"mid": open_mids[0]}).json()
        assert closed["status"] == "Closed" and closed["closed"] == TODAY.strftime("%m/%d/%Y")
        added = httpx.post(f"{base}/_sandbox/merchants/add", json={"name": "New Kiosk", "processor_id": 6}).json()
        assert added["opened"] == TODAY.strftime("%m/%d/%Y") and added["processor"] == "First Data North" and added["first_batch"] is None
        modified = httpx.post(f"{base}/_sandbox/merchants/modify", json={"mid": open_mids[1], "name": "Renamed Ltd"}).json()
        assert modified["name"] == "Renamed Ltd"
        start = (cursor + timedelta(seconds=1)).isoformat()
        end = (world.now() + timedelta(days=1)).replace(microsecond=0).isoformat()
        body = ok(client, "/merchants", date_filter="modified", start_date=start, end_date=end)
        assert _mids(body) == {open_mids[0], added["mid"], open_mids[1]}
        stamps = [datetime.fromisoformat(x["modified"]) for x in (closed, added, modified)]
        assert stamps == sorted(stamps) and len(set(stamps)) == 3 and stamps[0] > cursor
        assert ok(client, f"/merchants/{added['mid']}")["general"]["name"] == "New Kiosk"
        assert ok(client, "/merchants")["meta"]["total"] == 21
        bad = httpx.post(f"{base}/_sandbox/merchants/close", json={"mid": open_mids[0]})
        assert bad.status_code == 400 and "already closed" in bad.json()["error"]


def test_closing_earlier_in_the_month_drops_later_batches() -> None:
    with served() as (sandbox, client):
        world = sandbox.world
        m = next(m for m in world.merchants.values() if not m.closed and m.batch_span and m.last_batch == TODAY - timedelta(days=1))
        sandbox.close_merchant(m.mid, on=date(2025, 7, 8))
        assert m.last_batch <= date(2025, 7, 8)
        batches = ok(client, f"/merchants/{m.mid}/transactions", start_date="2025-07-01", per_page=100)["data"]
        assert batches and batches[-1]["date"] == m.last_batch.strftime("%m/%d/%Y")
        with pytest.raises(ValueError):
            world.close_merchant(next(x.mid for x in world.merchants.values() if not x.closed), on=date(2025, 6, 30))


def test_admin_counters_reset_and_errors() -> None:
    with served() as (sandbox, client):
        client.get(f"{V1}/processors")
        base = client.base_url
        assert httpx.get(f"{base}/_sandbox/counters").json()["sync"]["routes"] == {"processors": 1}
        assert httpx.post(f"{base}/_sandbox/counters/reset").json() == {"ok": True} and sandbox.counters() == {}
        assert httpx.post(f"{base}/_sandbox/limits/reset").json() == {"ok": True}
        unknown = httpx.get(f"{base}/_sandbox/nope")
        assert unknown.status_code == 404 and "GET /_sandbox/state" in unknown.json()["routes"]
        assert httpx.post(f"{base}/_sandbox/config", json={"bogus": 1}).status_code == 400
        assert httpx.post(f"{base}/_sandbox/merchants/close", json={"mid": "404"}).status_code == 400
        assert sandbox.counters() == {}  # admin requests are not counted
        state = httpx.get(f"{base}/_sandbox/state").json()
        assert state["merchants"] == 20 and state["today"] == TODAY.isoformat() and state["api_keys"] == ["other", "sync"]


# --------------------------------------------------------------------------------------
# The world: realism, consistency, determinism
# --------------------------------------------------------------------------------------


def _all_batches(world: IrisWorld, mid: str) -> list[dict]:
    return [b for y, m in (ym(d) for d in _month_starts()) for b in world.batches_for(mid, y, m)]


def _month_starts() -> list[date]:
    out, d = [], DATA_START
    while d <= TODAY:
        out.append(d)
        d = (d.replace(day=28) + timedelta(days=4)).replace(day=1)
    return out


def test_merchants_are_realistic_and_batch_dates_consistent(sandbox: IrisSandbox, client: httpx.Client) -> None:
    world = sandbox.world
    served_list = ok(client, "/merchants")["data"]
    assert served_list == world.merchant_list()
    mids = [m["mid"] for m in served_list]
    assert all(isinstance(x, str) for x in mids)
    assert any(x.startswith("0") for x in mids) and any(int(x) > 2**31 - 1 for x in mids)
    for name in ("closed", "deactivated"):
        assert any(m[name] for m in served_list) and any(m[name] is None for m in served_list), name
    assert any(m["first_batch"] is None for m in served_list)
    today00 = datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=world.tz)
    tx_ids: set[int] = set()
    for m in world.merchants.values():
        batches = _all_batches(world, m.mid)
        days = [datetime.strptime(b["date"], "%m/%d/%Y").date() for b in batches]
        assert days == sorted(days)
        assert (m.first_batch, m.last_batch) == ((days[0], days[-1]) if days else (None, None)), m.mid
        assert all(DATA_START <= d < TODAY and d.weekday() < 5 for d in days)
        if m.closed:
            assert not days or days[-1] <= m.closed
        assert m.created <= m.modified < today00 and m.opened < TODAY
        for b in batches:
            txs = b["transactions"]
            assert 1 <= len(txs) == int(b["count"]) <= 6
            assert sum(round(float(t["amount"]) * 100) for t in txs) == round(float(b["amount"]) * 100)
            tx_ids.update(t["id"] for t in txs)
    assert len(tx_ids) == sum(len(world.transactions_for(mid, y, mo)) for mid in world.merchants for y, mo in map(ym, _month_starts()))
    assert sum(1 for m in world.merchants.values() if m.opened < DATA_START) and sum(1 for m in world.merchants.values() if m.opened >= DATA_START)


def test_detail_matches_the_list_and_resolves_numbers(sandbox: IrisSandbox, client: httpx.Client) -> None:
    zero = next(mid for mid in sandbox.world.merchants if mid.startswith("0"))
    detail = ok(client, f"/merchants/{int(zero)}")  # the spec types merchantNumber integer
    assert detail["general"] == {k: v for k, v in sandbox.world.merchants[zero].api().items() if k != "leads"}
    assert detail["leads"] and detail["account_information"]["DBA Name"] == detail["general"]["name"]


def test_residuals_derive_from_transactions(sandbox: IrisSandbox, client: httpx.Client) -> None:
    world = sandbox.world
    y, m = world.months()[-1]
    summary = ok(client, f"/residuals/reports/summary/{y}/{m}")["data"]
    assert [s["processor_id"] for s in summary] == [p.id for p in world.processors]
    for s in summary:
        rows = rows_of(walk(client, f"/residuals/reports/summary/rows/{s['processor_id']}/{y}/{m}", per_page=10))
        assert rows == world.residual_rows(s["processor_id"], y, m)
        assert s["merchants_count"] == len(rows) and s["sum_transactions"] == sum(r["transactions"] for r in rows)
        assert round(s["sum_net"] * 100) == sum(round(r["net"] * 100) for r in rows)
        for row in rows:
            mid = next(x for x in world.merchants if int(x) == row["mid"])
            txs = world.transactions_for(mid, y, m)
            assert row["transactions"] == len(txs) > 0
            assert round(row["sales_amount"] * 100) == sum(round(float(t["amount"]) * 100) for t in txs if t["type"] == "SALE")
    with_nulls = [p.id for p in world.processors if len(world.residual_rows(p.id, y, m, hide_null_merchants=False)) > len(world.residual_rows(p.id, y, m))]
    assert with_nulls, "some report should hold merchants without transactions"
    pid = with_nulls[0]
    every = world.residual_rows(pid, y, m, hide_null_merchants=False)
    assert any(r["transactions"] == 0 and r["net"] == 0 for r in every)
    assert ok(client, f"/residuals/reports/summary/rows/{pid}/{y}/{m}", hide_null_merchants="false")["meta"]["total"] == len(every)
    raw = {r["mid"]: r for r in ok(client, f"/residuals/reports/summary/rows/{pid}/{y}/{m}", template="false")["data"]}
    for r in world.residual_rows(pid, y, m):
        assert raw[r["mid"]]["expense"] < r["expense"] and raw[r["mid"]]["sales_amount"] == r["sales_amount"]
    assert any(isinstance(r["bps"], float) and r["bps"] != int(r["bps"]) for r in every)
    assert ok(client, f"/residuals/reports/summary/{TODAY.year}/{TODAY.month}")["data"] == []  # not published yet
    assert client.get(f"{V1}/residuals/reports/summary/{y}/13").status_code == 404


def test_some_months_are_republished_at_seed(sandbox: IrisSandbox) -> None:
    reports = sandbox.world.reports.values()
    republished = [r for r in reports if r.revision]
    assert republished and all(r.modified > r.created for r in republished)
    assert all(r.modified == r.created for r in reports if not r.revision)
    assert len(sandbox.world.reports) == len(sandbox.world.months()) * len(sandbox.world.processors)
    assert sandbox.world.months()[0] == (2024, 4) and sandbox.world.months()[-1] == (2025, 6)


def test_the_world_is_deterministic_from_its_seed() -> None:
    a, b, c = IrisWorld(**WORLD), IrisWorld(**WORLD), IrisWorld(**{**WORLD, "seed": 8})

    def fingerprint(w: IrisWorld) -> Any:
        mid = sorted(w.merchants)[3]
        return (w.merchant_list(), w.batches_for(mid, 2025, 3), w.chargebacks_for(mid), w.residual_summary(2025, 2),
                w.residual_rows(3, 2025, 2, hide_null_merchants=False), w.line_items(2025, 2))

    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)


def test_default_world_builds_fast() -> None:
    before, t0 = datetime.now(IrisWorld(merchants=1, today=TODAY).tz).date(), time.perf_counter()
    world = IrisWorld()
    assert time.perf_counter() - t0 < 1.0 and len(world.merchants) == 300
    assert world.today in (before, datetime.now(world.tz).date())  # the real date unless told


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def test_cli_builds_the_sandbox_and_prints_no_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    configs: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: configs.append(self.config))
    main(["--port", "0", "--api-key", "cli-secret-1", "--merchants", "12", "--today", "2025-07-16", "--rate-limit", "9",
          "--validation-status", "422", "--failing-merchant", "123"])
    err = capsys.readouterr().err
    assert configs and "cli-secret-1" not in err and "12 merchants" in err and "1 API key(s)" in err
    configs[0].load()
    assert configs[0].interface == "asgi3"  # the CLI's uvicorn must not mistake the app for ASGI 2
    sandbox = configs[0].app
    assert sandbox.config.rate_limit == 9 and sandbox.config.validation_status == 422 and sandbox.key_labels == ["key1"]
    monkeypatch.setenv(KEYS_ENV, "a,b")
    assert sandbox_kwargs(build_parser().parse_args([]))["api_keys"] == ["a", "b"]
