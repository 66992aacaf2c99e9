"""The offline SP-API + LWA sandbox over real HTTP (127.0.0.1): every answer of the operations it
serves is validated against Amazon's vendored models (``data/spapi/``, Swagger 2.0 converted to JSON
Schema with closed objects: the sandbox must not invent fields), and what a client walks equals the
world's data, so the product's sync tests can compute expected tables from the world.

The module's sandbox has a fixed seed and anchor and a clock that starts one hour after the anchor
and runs at real speed; tests that change shared state (clock jumps, revocations, throttling,
static mode) get a sandbox of their own.
"""

from __future__ import annotations

import copy
import csv
import gzip
import io
import json
import re
import time
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import httpx
import jsonschema
import pytest

from sync_assets.apis.amazon.sandbox import (
    LEDGER,
    LEDGER_COLUMNS,
    NO_MATCH,
    RATE_TABLE,
    REIMBURSEMENT_COLUMNS,
    REIMBURSEMENTS,
    AmazonSandbox,
    build_world,
)
from sync_assets.apis.amazon.sandbox import server as amazon_server
from sync_assets.apis.amazon.sandbox.common import fmt_s
from sync_assets.apis.sandbox_serving import serve_in_thread

MODELS = Path(__file__).resolve().parent / "data" / "spapi"
ANCHOR = datetime(2026, 1, 15, tzinfo=timezone.utc)
US, CA = "ATVPDKIKX0DER", "A2EUQ1WTGCTBG2"
UNAUTHORIZED = {"code": "Unauthorized", "message": "Access to requested resource is denied."}
QUOTA = {"errors": [{"code": "QuotaExceeded", "message": "You exceeded your quota for the requested resource.", "details": ""}]}
INVENTORY = "/fba/inventory/v1/summaries"
MARKETPLACE_US = {"granularityType": "Marketplace", "granularityId": "ATVPDKIKX0DER", "marketplaceIds": "ATVPDKIKX0DER"}
GROUPS = "/finances/v0/financialEventGroups"
TRANSACTIONS = "/finances/2024-06-19/transactions"
ORDERS = "/orders/2026-01-01/orders"
REPORTS = "/reports/2021-06-30/reports"
DOCUMENTS = "/reports/2021-06-30/documents"

#: operation -> (model file, model path, method)
OPERATIONS: dict[str, tuple[str, str, str]] = {
    "getInventorySummaries": ("fbaInventory.json", INVENTORY, "get"),
    "listFinancialEventGroups": ("financesV0.json", GROUPS, "get"),
    "listTransactions": ("finances_2024-06-19.json", TRANSACTIONS, "get"),
    "searchOrders": ("orders_2026-01-01.json", ORDERS, "get"),
    "createReport": ("reports_2021-06-30.json", REPORTS, "post"),
    "getReports": ("reports_2021-06-30.json", REPORTS, "get"),
    "getReport": ("reports_2021-06-30.json", REPORTS + "/{reportId}", "get"),
    "cancelReport": ("reports_2021-06-30.json", REPORTS + "/{reportId}", "delete"),
    "getReportDocument": ("reports_2021-06-30.json", DOCUMENTS + "/{reportDocumentId}", "get"),
}


class Clock:
    """Starts at ``start`` and runs at real speed (buckets refill in real time)."""

    def __init__(self, start: datetime) -> None:
        self.start, self.t0 = start.timestamp(), time.monotonic()

    def __call__(self) -> float:
        return self.start + time.monotonic() - self.t0


def new_sandbox(**kwargs: Any) -> AmazonSandbox:
    opts: dict[str, Any] = dict(seed=7, scale="small", anchor=ANCHOR, clock=Clock(ANCHOR + timedelta(hours=1)), rate_limits_enabled=False)
    opts.update(kwargs)
    return AmazonSandbox(**opts)


# --------------------------------------------------------------------------------------
# The models as JSON Schema
# --------------------------------------------------------------------------------------


_DROP = ("description", "example", "examples", "title", "readOnly", "x-example")


def to_json_schema(node: Any) -> Any:
    """Swagger 2.0 schema -> JSON Schema: objects closed, ``allOf`` of objects merged into one."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    if "allOf" in node and all("$ref" not in part for part in node["allOf"]):
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in node["allOf"]:
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        node = merged
    out = {k: (v if k in ("required", "enum") else to_json_schema(v)) for k, v in node.items() if k not in _DROP and not k.startswith("x-")}
    if "properties" in out:
        out["properties"] = {name: to_json_schema(sub) for name, sub in node["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


def _inline_all_of(model: dict[str, Any]) -> dict[str, Any]:
    """Resolve the ``$ref``s inside ``allOf`` (the Context of listTransactions) before merging."""
    defs = model["definitions"]
    for definition in defs.values():
        if "allOf" in definition:
            definition["allOf"] = [defs[p["$ref"].split("/")[-1]] if "$ref" in p else p for p in definition["allOf"]]
    return model


@cache
def model(file: str) -> dict[str, Any]:
    return _inline_all_of(json.loads((MODELS / file).read_text()))


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        return "T" in value and datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None

    return checker


def inline_refs(node: Any, definitions: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """Replace ``$ref``s by their definitions, except recursive ones (jsonschema resolves refs slowly)."""
    if isinstance(node, list):
        return [inline_refs(n, definitions, seen) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].split("/")[-1]
        return node if name in seen else inline_refs(definitions[name], definitions, (*seen, name))
    return {k: v if k in ("required", "enum") else inline_refs(v, definitions, seen) for k, v in node.items()}


@cache
def validator(op: str, status: int) -> jsonschema.Draft4Validator | None:
    file, path, method = OPERATIONS[op]
    spec = model(file)["paths"][path][method]["responses"][str(status)]
    if "schema" not in spec:
        return None
    definitions = to_json_schema(copy.deepcopy(model(file)["definitions"]))
    schema = {**inline_refs(to_json_schema(spec["schema"]), definitions), "definitions": definitions}
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=_format_checker())


def declared_headers(op: str, status: int) -> set[str]:
    file, path, method = OPERATIONS[op]
    return {h.lower() for h in model(file)["paths"][path][method]["responses"][str(status)].get("headers", {})}


def conform(op: str, response: httpx.Response) -> httpx.Response:
    """Assert the answer is one the model declares: status, body schema and headers."""
    file, path, method = OPERATIONS[op]
    assert str(response.status_code) in model(file)["paths"][path][method]["responses"], (op, response.status_code)
    check = validator(op, response.status_code)
    if check is None:
        assert response.content == b"", (op, response.content)
    else:
        errors = sorted(check.iter_errors(response.json()), key=lambda e: list(e.path))
        assert not errors, (op, response.status_code, [f"{list(e.path)}: {e.message}" for e in errors[:5]])
    missing = declared_headers(op, response.status_code) - set(response.headers)
    assert not missing, (op, response.status_code, missing)
    if response.status_code in (403, 429, 500, 503):
        assert "x-amzn-ratelimit-limit" not in response.headers
    return response


# --------------------------------------------------------------------------------------
# A client
# --------------------------------------------------------------------------------------


class Api:
    """httpx on one sandbox; every SP-API answer is checked against its model."""

    def __init__(self, sandbox: AmazonSandbox, base_url: str) -> None:
        self.sandbox = sandbox
        self.http = httpx.Client(base_url=base_url, timeout=10)
        self.tokens: dict[str, str] = {}

    def lwa(self, **form: str) -> httpx.Response:
        return self.http.post("/auth/o2/token", data=form)

    def grant(self, seller: str) -> dict[str, Any]:
        sb = self.sandbox
        r = self.lwa(grant_type="refresh_token", refresh_token=sb.refresh_tokens[seller], client_id=sb.client_id, client_secret=sb.client_secret)
        assert r.status_code == 200, r.text
        return r.json()

    def token(self, seller: str) -> str:
        if seller not in self.tokens:
            self.tokens[seller] = self.grant(seller)["access_token"]
        return self.tokens[seller]

    def call(self, op: str, seller: str, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
        headers = {"x-amz-access-token": self.token(seller), "user-agent": "sandbox-tests/1.0 (Language=Python/3.11)"}
        return conform(op, self.http.request(method, path, headers=headers, **kwargs))

    def ok(self, op: str, seller: str, path: str, method: str = "GET", **kwargs: Any) -> dict[str, Any]:
        r = self.call(op, seller, path, method, **kwargs)
        assert r.status_code in (200, 202), (op, r.status_code, r.text)
        return r.json()

    # walks --------------------------------------------------------------------------

    def inventory(self, seller: str, marketplace: str, details: bool = True, **extra: str) -> list[dict[str, Any]]:
        params = {"details": str(details).lower(), "granularityType": "Marketplace", "granularityId": marketplace, "marketplaceIds": marketplace, **extra}
        rows, token = [], None
        while True:
            body = self.ok("getInventorySummaries", seller, INVENTORY, params={**params, **({"nextToken": token} if token else {})})
            assert len(body["payload"]["inventorySummaries"]) <= 50
            rows += body["payload"]["inventorySummaries"]
            token = body.get("pagination", {}).get("nextToken")
            if not token:
                return rows

    def token_walk(self, op: str, seller: str, path: str, params: dict[str, Any], list_key: str, token_key: str, param: str) -> list[dict[str, Any]]:
        rows, token = [], None
        while True:
            body = self.ok(op, seller, path, params={**params, **({param: token} if token else {})})["payload"]
            rows += body[list_key]
            token = body.get(token_key)
            if not token:
                return rows

    def windows(self, days: int = 90) -> Iterator[tuple[str, str]]:
        """Windows of ``days`` covering the year of history up to two minutes ago."""
        end = self.sandbox.now_datetime() - timedelta(minutes=3)
        start = ANCHOR - timedelta(days=370)
        while start < end:
            stop = min(start + timedelta(days=days), end)
            yield fmt_s(start), fmt_s(stop)
            start = stop

    def groups(self, seller: str) -> list[dict[str, Any]]:
        out = []
        for a, b in self.windows():
            params = {"FinancialEventGroupStartedAfter": a, "FinancialEventGroupStartedBefore": b, "MaxResultsPerPage": 7}
            out += self.token_walk("listFinancialEventGroups", seller, GROUPS, params, "FinancialEventGroupList", "NextToken", "NextToken")
        return out

    def transactions(self, seller: str, **extra: str) -> list[dict[str, Any]]:
        out = []
        for a, b in self.windows():
            out += self.transaction_walk(seller, {"postedAfter": a, "postedBefore": b, **extra})
        return out

    def transaction_walk(self, seller: str, params: dict[str, str]) -> list[dict[str, Any]]:
        return self.token_walk("listTransactions", seller, TRANSACTIONS, params, "transactions", "nextToken", "nextToken")

    def orders(self, seller: str, page_size: int = 40, **params: str) -> list[dict[str, Any]]:
        """Next pages send the token with the two arguments that may change, not the filters."""
        rows, token = [], None
        per_page = {"maxResultsPerPage": page_size, **({"includedData": params["includedData"]} if "includedData" in params else {})}
        while True:
            query = {"paginationToken": token, **per_page} if token else {**per_page, **params}
            body = self.ok("searchOrders", seller, ORDERS, params=query)
            rows += body["orders"]
            token = body.get("pagination", {}).get("nextToken")
            if not token:
                return rows

    def report(self, seller: str, spec: dict[str, Any]) -> str:
        return self.ok("createReport", seller, REPORTS, "POST", json=spec)["reportId"]

    def get_report(self, seller: str, report_id: str) -> dict[str, Any]:
        return self.ok("getReport", seller, f"{REPORTS}/{report_id}")

    def document(self, seller: str, doc_id: str, **params: str) -> dict[str, Any]:
        return self.ok("getReportDocument", seller, f"{DOCUMENTS}/{doc_id}", params=params)


@pytest.fixture(scope="module")
def sandbox() -> AmazonSandbox:
    return new_sandbox(report_queue_seconds=1, report_processing_seconds=1)


@pytest.fixture(scope="module")
def api(sandbox: AmazonSandbox) -> Iterator[Api]:
    with serve_in_thread(sandbox) as url:
        yield Api(sandbox, url)


@pytest.fixture
def fresh() -> Iterator[Any]:
    """Serve a sandbox of the test's own (tiny unless told): ``api = fresh(**knobs)``."""
    stack: list[Any] = []

    def start(**kwargs: Any) -> Api:
        sb = new_sandbox(**{"scale": "tiny", **kwargs})
        cm = serve_in_thread(sb)
        stack.append(cm)
        return Api(sb, cm.__enter__())

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def sellers(sb: AmazonSandbox) -> tuple[str, str]:
    first, second = sb.seller_ids
    return first, second


# --------------------------------------------------------------------------------------
# The declared usage plans are the models'
# --------------------------------------------------------------------------------------


def test_rate_table_is_the_models_usage_plans() -> None:
    plan = re.compile(r"\|\s*Rate \(requests per second\)\s*\|\s*Burst\s*\|\s*\n\|[ \-|]+\|\s*\n\|\s*([\d.]+)\s*\|\s*(\d+)\s*\|")
    for op, (file, path, method) in OPERATIONS.items():
        rate, burst = plan.search(model(file)["paths"][path][method]["description"]).groups()  # type: ignore[union-attr]
        assert (RATE_TABLE[op].rate, RATE_TABLE[op].burst) == (float(rate), int(burst)), op


# --------------------------------------------------------------------------------------
# LWA and authorization
# --------------------------------------------------------------------------------------


def test_lwa_grant_and_its_errors(fresh: Any) -> None:
    api = fresh(access_token_ttl=120)
    sb, (seller, other) = api.sandbox, sellers(api.sandbox)
    r = api.lwa(grant_type="refresh_token", refresh_token=sb.refresh_tokens[seller], client_id=sb.client_id, client_secret=sb.client_secret)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store" and "x-amzn-requestid" in r.headers
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert (body["token_type"], body["expires_in"], body["refresh_token"]) == ("bearer", 120, sb.refresh_tokens[seller])
    assert body["access_token"].startswith("Atza|") and len(body["access_token"]) <= 2048

    good = dict(grant_type="refresh_token", refresh_token=sb.refresh_tokens[seller], client_id=sb.client_id)
    bad_client = api.lwa(**good, client_secret="wrong")
    assert bad_client.status_code == 401
    assert (bad_client.json()["error"], bad_client.json()["error_description"]) == ("invalid_client", "Client authentication failed")
    unknown = api.lwa(**{**good, "refresh_token": "Atzr|IwEBInot-a-token"}, client_secret=sb.client_secret)
    assert unknown.status_code == 400
    assert (unknown.json()["error"], unknown.json()["error_description"]) == ("invalid_grant", "The request has an invalid grant parameter : refresh_token")

    # a revoked seller's refresh token answers invalid_grant; the other seller is unaffected
    assert api.http.post("/_sandbox/lwa/revoke", json={"seller_id": seller}).json() == {"ok": True, "revoked": 1}
    assert api.lwa(**good, client_secret=sb.client_secret).json()["error"] == "invalid_grant"
    assert api.grant(other)["access_token"]
    assert sb.lwa.counters["token_requests"] == 5
    assert (sb.lwa.counters["invalid_grant"], sb.lwa.counters["invalid_client"], sb.lwa.counters["tokens_issued"]) == (2, 1, 2)


def test_access_token_errors_are_403_unauthorized(fresh: Any) -> None:
    api = fresh(access_token_ttl=600)
    sb, (seller, _) = api.sandbox, sellers(api.sandbox)
    params = MARKETPLACE_US

    def call(headers: dict[str, str]) -> httpx.Response:
        return conform("getInventorySummaries", api.http.get(INVENTORY, params=params, headers=headers))

    missing, garbage = call({}), call({"x-amz-access-token": "Atza|forged"})
    assert missing.status_code == garbage.status_code == 403
    assert missing.json() == {"errors": [{**UNAUTHORIZED, "details": ""}]}
    assert garbage.json() == {"errors": [{**UNAUTHORIZED, "details": "The access token you provided is revoked, malformed or invalid."}]}
    token = api.token(seller)
    assert call({"x-amz-access-token": token}).status_code == 200
    sb.advance(601)  # past expires_in
    expired = call({"x-amz-access-token": token})
    assert expired.status_code == 403
    assert expired.json() == {"errors": [{**UNAUTHORIZED, "details": "The access token you provided has expired."}]}
    fresh_token = api.grant(seller)["access_token"]
    assert call({"x-amz-access-token": fresh_token}).status_code == 200
    assert api.http.post("/_sandbox/lwa/expire_access_tokens").status_code == 200
    assert call({"x-amz-access-token": fresh_token}).json()["errors"][0]["details"] == "The access token you provided has expired."
    assert sb.counters()["unauthorized"] == 4


def test_expired_client_secret_until_rotated(fresh: Any) -> None:
    api = fresh()
    sb, (seller, _) = api.sandbox, sellers(api.sandbox)
    params = MARKETPLACE_US
    sb.expire_client_secret()
    token = api.grant(seller)["access_token"]  # LWA still issues tokens
    r = api.http.get(INVENTORY, params=params, headers={"x-amz-access-token": token})
    assert r.status_code == 403
    assert r.json() == {"errors": [{**UNAUTHORIZED, "details": "The LWA secret token you provided has expired."}]}
    old_secret = sb.client_secret
    new_secret = api.http.post("/_sandbox/lwa/rotate_client_secret").json()["client_secret"]
    assert new_secret != old_secret and new_secret == sb.client_secret
    stale = api.lwa(grant_type="refresh_token", refresh_token=sb.refresh_tokens[seller], client_id=sb.client_id, client_secret=old_secret)
    assert stale.status_code == 401
    token = api.grant(seller)["access_token"]
    assert api.http.get(INVENTORY, params=params, headers={"x-amz-access-token": token}).status_code == 200


# --------------------------------------------------------------------------------------
# Conformance, and what a client walks equals the world
# --------------------------------------------------------------------------------------


def test_inventory_walk_equals_the_world(api: Api) -> None:
    sb = api.sandbox
    first, second = sellers(sb)
    for seller in (first, second):
        for mp in sb.world.seller(seller).marketplaces:
            expected = sb.world.seller(seller).inventory[mp]
            assert len(expected) > 50 or mp == CA  # paging is exercised
            assert api.inventory(seller, mp) == expected
    brief = api.inventory(first, US, details=False)
    assert brief == [{k: v for k, v in r.items() if k != "inventoryDetails"} for r in sb.world.seller(first).inventory[US]]
    # the sellers' data differ: a token decides what is served
    assert {r["fnSku"] for r in api.inventory(second, US)}.isdisjoint({r["fnSku"] for r in brief})


def test_inventory_filters(api: Api) -> None:
    sb = api.sandbox
    seller = sellers(sb)[0]
    rows = sb.world.seller(seller).inventory[US]
    odd = [r["sellerSku"] for r in rows if " " in r["sellerSku"] or "+" in r["sellerSku"]][:3]
    assert odd and api.inventory(seller, US, sellerSkus=",".join(odd)) == [r for r in rows if r["sellerSku"] in odd]
    assert api.inventory(seller, US, sellerSku=odd[0]) == [r for r in rows if r["sellerSku"] == odd[0]]
    since = sorted(r["lastUpdatedTime"] for r in rows)[len(rows) // 2]
    assert api.inventory(seller, US, startDateTime=since) == [r for r in rows if r["lastUpdatedTime"] >= since]
    too_old = fmt_s(sb.now_datetime() - timedelta(days=600))
    r = api.call("getInventorySummaries", seller, INVENTORY, params={**MARKETPLACE_US, "startDateTime": too_old})
    assert r.status_code == 400 and r.json()["errors"][0]["message"].startswith("Query startDateTime cannot not be earlier than")
    assert r.headers["x-amzn-ratelimit-limit"] == "2.0"


def test_inventory_next_token_expires_and_must_come_back_intact(api: Api) -> None:
    sb = api.sandbox
    seller = sellers(sb)[0]
    params = {"details": "true", "granularityType": "Marketplace", "granularityId": US, "marketplaceIds": US}
    token = api.ok("getInventorySummaries", seller, INVENTORY, params=params)["pagination"]["nextToken"]
    assert "+" in token and "/" in token
    invalid = {"errors": [{"code": "InvalidInput", "message": "Next token is invalid or expired", "details": ""}]}
    # sent without URL-encoding: "+" arrives as a space
    unencoded = f"{INVENTORY}?details=true&granularityType=Marketplace&granularityId={US}&marketplaceIds={US}&nextToken={token}"
    raw = api.http.get(unencoded, headers={"x-amz-access-token": api.token(seller)})
    assert conform("getInventorySummaries", raw).status_code == 400 and raw.json() == invalid
    changed = api.call("getInventorySummaries", seller, INVENTORY, params={**params, "details": "false", "nextToken": token})
    assert changed.status_code == 400 and changed.json()["errors"][0]["message"] == invalid["errors"][0]["message"]
    assert api.call("getInventorySummaries", seller, INVENTORY, params={**params, "nextToken": token}).status_code == 200
    sb.advance(31)
    expired = api.call("getInventorySummaries", seller, INVENTORY, params={**params, "nextToken": token})
    assert expired.status_code == 400 and expired.json() == invalid
    token = api.ok("getInventorySummaries", seller, INVENTORY, params=params)["pagination"]["nextToken"]
    assert api.http.post("/_sandbox/next_tokens/expire").status_code == 200
    assert api.call("getInventorySummaries", seller, INVENTORY, params={**params, "nextToken": token}).json() == invalid


def test_event_groups_walk_equals_the_world(api: Api) -> None:
    sb = api.sandbox
    for seller in sellers(sb):
        walked = api.groups(seller)
        assert walked == sb.world.event_groups(seller)
        open_groups = [g for g in walked if g["ProcessingStatus"] == "Open"]
        assert len(open_groups) == len(sb.world.seller(seller).marketplaces)  # one per currency
        assert all("FundTransferDate" not in g and "FinancialEventGroupEnd" not in g for g in open_groups)
        assert all(g["ProcessingStatus"] == "Closed" and "FundTransferDate" in g for g in walked if g not in open_groups)


def test_transactions_walk_equals_the_world(api: Api) -> None:
    sb = api.sandbox
    for seller in sellers(sb):
        walked = api.transactions(seller)
        expected = sb.world.transactions(seller, sb.now_datetime())
        assert walked == expected
        assert len({t["transactionId"] for t in walked}) == len(walked)
        nested = [b for t in walked for b in t["breakdowns"] if b["breakdowns"]]
        assert nested and all(isinstance(b["breakdownAmount"]["currencyAmount"], float) for b in nested)
    second = sellers(sb)[1]
    ca = api.transactions(second, marketplaceId=CA)
    assert ca and all(t["marketplaceDetails"]["marketplaceId"] == CA and t["totalAmount"]["currencyCode"] == "CAD" for t in ca)
    deferred = api.transactions(second, transactionStatus="DEFERRED")
    assert deferred and all(t["transactionStatus"] == "DEFERRED" for t in deferred)
    group = next(g for g in sb.world.event_groups(second) if g["ProcessingStatus"] == "Closed")
    by_group = api.transaction_walk(second, {"relatedIdentifierName": "FINANCIAL_EVENT_GROUP_ID", "relatedIdentifierValue": group["FinancialEventGroupId"]})
    assert by_group and sum(t["totalAmount"]["currencyAmount"] for t in by_group) == pytest.approx(group["OriginalTotal"]["CurrencyAmount"])


def test_transactions_paginate_with_the_same_arguments(fresh: Any) -> None:
    api = fresh(transactions_page_size=10)
    sb, seller = api.sandbox, sellers(api.sandbox)[0]
    assert api.transactions(seller) == sb.world.transactions(seller, sb.now_datetime())
    now = sb.now_datetime()
    a, b = fmt_s(now - timedelta(days=170)), fmt_s(now - timedelta(minutes=3))
    first = api.ok("listTransactions", seller, TRANSACTIONS, params={"postedAfter": a, "postedBefore": b})["payload"]
    assert len(first["transactions"]) == 10
    moved = api.call("listTransactions", seller, TRANSACTIONS, params={"postedAfter": b, "nextToken": first["nextToken"]})
    assert moved.status_code == 400


def test_finance_window_rules(api: Api) -> None:
    sb = api.sandbox
    seller = sellers(sb)[0]
    now = sb.now_datetime()
    wide = {"postedAfter": fmt_s(now - timedelta(days=200)), "postedBefore": fmt_s(now - timedelta(days=19))}
    before = sb.wide_window_requests(seller, "listTransactions")
    r = api.call("listTransactions", seller, TRANSACTIONS, params=wide)
    assert r.status_code == 200 and r.json() == {"payload": {"transactions": []}}  # silently empty
    only_after = api.call("listTransactions", seller, TRANSACTIONS, params={"postedAfter": wide["postedAfter"]})  # end defaults to now - 2 min
    assert only_after.json() == {"payload": {"transactions": []}}
    assert sb.wide_window_requests(seller, "listTransactions") == before + 2
    narrow = {"postedAfter": fmt_s(now - timedelta(days=170)), "postedBefore": fmt_s(now - timedelta(days=1))}
    assert api.ok("listTransactions", seller, TRANSACTIONS, params=narrow)["payload"]["transactions"]
    assert sb.wide_window_requests(seller, "listTransactions") == before + 2

    too_recent = api.call("listTransactions", seller, TRANSACTIONS, params={**narrow, "postedBefore": fmt_s(now - timedelta(seconds=60))})
    assert too_recent.status_code == 400 and too_recent.json()["errors"][0]["code"] == "InvalidInput"
    no_start = api.call("listTransactions", seller, TRANSACTIONS, params={"postedBefore": narrow["postedBefore"]})
    assert no_start.status_code == 400 and no_start.json()["errors"][0]["message"] == "Start date cannot be null"

    groups_wide = api.call("listFinancialEventGroups", seller, GROUPS, params={"FinancialEventGroupStartedAfter": wide["postedAfter"]})
    assert groups_wide.json() == {"payload": {"FinancialEventGroupList": []}}
    assert sb.wide_window_requests(seller, "listFinancialEventGroups") >= 1
    no_dates = api.call("listFinancialEventGroups", seller, GROUPS, params={"MaxResultsPerPage": 10})
    assert no_dates.status_code == 400 and no_dates.json()["errors"][0]["message"] == "Date range is invalid."
    recent = {"FinancialEventGroupStartedAfter": narrow["postedAfter"], "FinancialEventGroupStartedBefore": fmt_s(now)}
    assert api.call("listFinancialEventGroups", seller, GROUPS, params=recent).status_code == 400


def test_deferred_transactions_are_released(fresh: Any) -> None:
    api = fresh(scale="small")
    sb, seller = api.sandbox, sellers(api.sandbox)[1]  # the seller under the DD+7 policy
    deferred = {t["transactionId"] for t in api.transactions(seller, transactionStatus="DEFERRED")}
    assert deferred
    sb.advance(8 * 86400)
    api.tokens.clear()  # the access tokens expired meanwhile
    after = {t["transactionId"]: t["transactionStatus"] for t in api.transactions(seller)}
    assert {after[t] for t in deferred} == {"DEFERRED_RELEASED"}
    assert not api.transactions(seller, transactionStatus="DEFERRED")


def test_orders_walk_equals_the_world(api: Api) -> None:
    sb = api.sandbox
    since = fmt_s(ANCHOR - timedelta(days=400))
    for seller in sellers(sb):
        world = sb.world.seller(seller).orders
        full = api.orders(seller, lastUpdatedAfter=since, includedData="BUYER,PROCEEDS,FULFILLMENT")
        assert full == sorted(world, key=lambda o: (o["lastUpdatedTime"], o["orderId"]))
        core = api.orders(seller, createdAfter=since)
        assert [o["orderId"] for o in core] == [o["orderId"] for o in world]
        assert all("proceeds" not in o and "fulfillment" not in o and "buyer" not in o for o in core)
    seller = sellers(sb)[0]
    shipped = api.orders(seller, lastUpdatedAfter=since, fulfillmentStatuses="SHIPPED", fulfilledBy="AMAZON", includedData="FULFILLMENT")
    assert shipped and all(o["fulfillment"]["fulfillmentStatus"] == "SHIPPED" and o["fulfillment"]["fulfilledBy"] == "AMAZON" for o in shipped)


def test_search_orders_rules(api: Api) -> None:
    sb = api.sandbox
    seller = sellers(sb)[0]
    now, since = sb.now_datetime(), fmt_s(ANCHOR - timedelta(days=30))
    both = api.call("searchOrders", seller, ORDERS, params={"createdAfter": since, "lastUpdatedAfter": since})
    mixed = api.call("searchOrders", seller, ORDERS, params={"createdAfter": since, "lastUpdatedBefore": fmt_s(now - timedelta(hours=1))})
    too_recent = api.call("searchOrders", seller, ORDERS, params={"lastUpdatedAfter": since, "lastUpdatedBefore": fmt_s(now - timedelta(seconds=30))})
    assert both.status_code == mixed.status_code == too_recent.status_code == 400
    body = api.ok("searchOrders", seller, ORDERS, params={"lastUpdatedAfter": since, "maxResultsPerPage": 2})
    assert len(body["orders"]) == 2 and "lastUpdatedBefore" in body
    other_filters = api.call("searchOrders", seller, ORDERS, params={"createdAfter": since, "paginationToken": body["pagination"]["nextToken"]})
    assert other_filters.status_code == 400


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def _tsv(content: bytes) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.reader(io.StringIO(content.decode("utf-8")), delimiter="\t")
    header = next(reader)
    return header, [dict(zip(header, row)) for row in reader]


def _wait_done(api: Api, seller: str, report_id: str) -> dict[str, Any]:
    api.sandbox.advance(2.5)  # queue 1 s + processing 1 s
    return api.get_report(seller, report_id)


def test_report_lifecycle_with_documents(api: Api) -> None:
    sb = api.sandbox
    seller = sellers(sb)[0]
    now = sb.now_datetime()
    start, end = fmt_s(ANCHOR - timedelta(days=365)), fmt_s(now - timedelta(minutes=5))
    rid = api.report(seller, {"reportType": REIMBURSEMENTS, "marketplaceIds": [US], "dataStartTime": start, "dataEndTime": end})
    assert api.get_report(seller, rid)["processingStatus"] == "IN_QUEUE"
    sb.advance(1.2)
    assert api.get_report(seller, rid)["processingStatus"] == "IN_PROGRESS"
    report = _wait_done(api, seller, rid)
    assert report["processingStatus"] == "DONE" and report["reportDocumentId"]
    search = {"reportTypes": REIMBURSEMENTS, "processingStatuses": "DONE,IN_PROGRESS", "createdSince": fmt_s(now - timedelta(hours=1))}
    found = api.ok("getReports", seller, REPORTS, params=search)
    assert rid in [r["reportId"] for r in found["reports"]]
    none = api.ok("getReports", seller, REPORTS, params={"reportTypes": REIMBURSEMENTS, "processingStatuses": "FATAL"})
    assert rid not in [r["reportId"] for r in none["reports"]]

    doc = api.document(seller, report["reportDocumentId"])
    assert "compressionAlgorithm" not in doc
    download = httpx.get(doc["url"])
    assert download.status_code == 200
    header, rows = _tsv(download.content)
    assert tuple(header) == REIMBURSEMENT_COLUMNS
    expected = sb.world.reimbursement_rows(seller, ANCHOR - timedelta(days=365), now - timedelta(minutes=5))
    assert rows == expected and rows
    assert all(re.fullmatch(r"-?\d+\.\d\d", r["amount-total"]) for r in rows)
    assert all(datetime.fromisoformat(r["approval-date"]).utcoffset() == timedelta(0) for r in rows)

    sb.advance(301)  # the URL lived 5 minutes
    gone = httpx.get(doc["url"])
    assert gone.status_code == 403 and b"<Code>AccessDenied</Code>" in gone.content and b"Request has expired" in gone.content
    tampered = httpx.get(doc["url"].replace("X-Amz-Expires=300", "X-Amz-Expires=3000"))
    assert tampered.status_code == 403 and b"SignatureDoesNotMatch" in tampered.content
    assert httpx.get(api.document(seller, report["reportDocumentId"])["url"]).status_code == 200  # a new URL works
    assert sb.counters()["documents"]["expired"] == 1

    # only IN_QUEUE reports can be cancelled
    cancel_done = api.call("cancelReport", seller, f"{REPORTS}/{rid}", "DELETE")
    assert cancel_done.status_code == 400
    queued = api.report(seller, {"reportType": REIMBURSEMENTS, "marketplaceIds": [US], "dataStartTime": start, "dataEndTime": end})
    assert api.call("cancelReport", seller, f"{REPORTS}/{queued}", "DELETE").status_code == 200
    cancelled = _wait_done(api, seller, queued)
    assert cancelled["processingStatus"] == "CANCELLED" and "reportDocumentId" not in cancelled
    calls = sb.create_report_calls(seller, REIMBURSEMENTS)
    assert calls[(seller, REIMBURSEMENTS, start, end)] == 2


def test_ledger_report_is_gzip_and_holds_the_claims(api: Api) -> None:
    sb = api.sandbox
    seller = sellers(sb)[1]
    start, end = ANCHOR - timedelta(days=365), sb.now_datetime() - timedelta(minutes=5)
    rid = api.report(seller, {"reportType": LEDGER, "marketplaceIds": [US], "dataStartTime": fmt_s(start), "dataEndTime": fmt_s(end)})
    report = _wait_done(api, seller, rid)
    doc = api.document(seller, report["reportDocumentId"])
    assert doc["compressionAlgorithm"] == "GZIP"
    raw = httpx.get(doc["url"])
    assert "content-encoding" not in raw.headers
    header, rows = _tsv(gzip.decompress(raw.content))
    assert tuple(header) == LEDGER_COLUMNS
    assert raw.content[:2] == b"\x1f\x8b" and gzip.decompress(raw.content).startswith(b'"Date"\t"FNSKU"')
    assert rows == sb.world.ledger_rows(seller, start, end)
    assert all(re.fullmatch(r"\d\d/\d\d/\d{4}", r["Date"]) for r in rows)
    # transparent decoding when the client asks for the Content-Encoding header
    decoded = httpx.get(api.document(seller, report["reportDocumentId"], enableContentEncodingUrlHeader="true")["url"])
    assert decoded.headers["content-encoding"] == "gzip" and _tsv(decoded.content)[1] == rows

    # the claims: Adjustments rows with a negative SELLABLE quantity, reason M or E
    claim_rows = {r["Reference ID"]: r for r in rows if r["Event Type"] == "Adjustments" and r["Reason"] in ("M", "E") and int(r["Quantity"]) < 0}
    claims = sb.world.claims(seller)
    assert set(claim_rows) == {c.claim_id for c in claims}
    paid = sb.world.reimbursement_rows(seller, start, end)
    for claim in claims:
        key = (claim.fnsku, claim.reimbursement_reason, str(claim.quantity))
        matches = [p for p in paid if (p["fnsku"], p["reason"], p["quantity-reimbursed-total"]) == key]
        assert len(matches) == (claim not in sb.world.unreimbursed_claims(seller)), claim
    window = {"reportType": LEDGER, "marketplaceIds": [US], "dataStartTime": fmt_s(start), "dataEndTime": fmt_s(end)}
    adjustments = api.report(seller, {**window, "reportOptions": {"eventType": "Adjustments"}})
    doc = api.document(seller, _wait_done(api, seller, adjustments)["reportDocumentId"])
    assert {r["Event Type"] for r in _tsv(gzip.decompress(httpx.get(doc["url"]).content))[1]} == {"Adjustments"}


def test_reimbursing_a_claim(api: Api) -> None:
    sb = api.sandbox
    seller = sellers(sb)[0]
    open_claims = sb.unreimbursed_claims(seller)
    assert open_claims
    claim = open_claims[0]
    row = api.http.post("/_sandbox/claims/reimburse", json={"seller_id": seller, "claim_id": claim.claim_id}).json()
    assert (row["fnsku"], row["reason"], row["quantity-reimbursed-total"]) == (claim.fnsku, claim.reimbursement_reason, str(claim.quantity))
    assert claim.claim_id not in {c["claim_id"] for c in api.http.get("/_sandbox/claims", params={"seller_id": seller}).json()}
    assert claim not in sb.unreimbursed_claims(seller)
    sb.advance(1)
    rid = api.report(seller, {"reportType": REIMBURSEMENTS, "marketplaceIds": [US], "dataStartTime": fmt_s(sb.now_datetime() - timedelta(hours=1))})
    doc = api.document(seller, _wait_done(api, seller, rid)["reportDocumentId"])
    assert _tsv(httpx.get(doc["url"]).content)[1] == [row]
    # the cash payout posts an FBA Inventory Reimbursement into the open event group
    sb.advance(180)
    hour_ago = fmt_s(sb.now_datetime() - timedelta(hours=1))
    payout = [t for t in api.transactions(seller) if t["postedDate"] >= hour_ago]
    assert [(t["transactionType"], t["totalAmount"]["currencyAmount"]) for t in payout] == [("Adjustment", float(row["amount-total"]))]
    open_group = next(g for g in api.groups(seller) if g["ProcessingStatus"] == "Open")
    group_id = {"relatedIdentifierName": "FINANCIAL_EVENT_GROUP_ID", "relatedIdentifierValue": open_group["FinancialEventGroupId"]}
    assert group_id in payout[0]["relatedIdentifiers"]
    with pytest.raises(ValueError):
        sb.world.reimburse(seller, claim.claim_id, sb.now_datetime())


def test_report_outcomes_fatal_cancelled_and_empty(api: Api) -> None:
    sb = api.sandbox
    seller = sellers(sb)[0]
    window = {"reportType": REIMBURSEMENTS, "marketplaceIds": [US], "dataStartTime": fmt_s(ANCHOR - timedelta(days=300))}
    assert api.http.post("/_sandbox/reports/force", json={"outcome": "FATAL", "report_type": REIMBURSEMENTS}).status_code == 200
    fatal = _wait_done(api, seller, api.report(seller, window))
    assert fatal["processingStatus"] == "FATAL"
    error_doc = api.document(seller, fatal["reportDocumentId"])
    assert set(httpx.get(error_doc["url"]).json()) == {"errorDetails"}
    sb.force_report_outcome("CANCELLED")
    forced = _wait_done(api, seller, api.report(seller, window))
    assert forced["processingStatus"] == "CANCELLED" and "reportDocumentId" not in forced
    empty = _wait_done(api, seller, api.report(seller, {"reportType": REIMBURSEMENTS, "marketplaceIds": [US]}))  # dataStartTime defaults to now
    assert empty["processingStatus"] == "CANCELLED"
    assert _wait_done(api, seller, api.report(seller, window))["processingStatus"] == "DONE"


def test_report_request_errors(api: Api) -> None:
    sb = api.sandbox
    seller = sellers(sb)[0]
    future = fmt_s(sb.now_datetime() + timedelta(hours=1))
    for spec in (
        {"reportType": "GET_NOTHING", "marketplaceIds": [US]},
        {"reportType": REIMBURSEMENTS},
        {"reportType": REIMBURSEMENTS, "marketplaceIds": [CA]},  # not a marketplace of this seller
        {"reportType": REIMBURSEMENTS, "marketplaceIds": [US], "dataEndTime": future},
    ):
        assert api.call("createReport", seller, REPORTS, "POST", json=spec).status_code == 400, spec
    assert api.call("getReports", seller, REPORTS).status_code == 400  # reportTypes or nextToken
    assert api.call("getReport", seller, f"{REPORTS}/12345").status_code == 404
    assert api.call("getReportDocument", seller, f"{DOCUMENTS}/amzn1.spdoc.1.4.na.none").status_code == 404
    other_seller_report = api.report(sellers(sb)[1], {"reportType": REIMBURSEMENTS, "marketplaceIds": [US]})
    assert api.call("getReport", seller, f"{REPORTS}/{other_seller_report}").status_code == 404


def test_get_reports_next_token_must_be_alone(fresh: Any) -> None:
    api = fresh()
    seller = sellers(api.sandbox)[0]
    ids = [api.report(seller, {"reportType": LEDGER, "marketplaceIds": [US]}) for _ in range(3)]
    first = api.ok("getReports", seller, REPORTS, params={"reportTypes": LEDGER, "pageSize": 2})
    assert [r["reportId"] for r in first["reports"]] == ids[::-1][:2]  # newest first
    not_alone = api.call("getReports", seller, REPORTS, params={"reportTypes": LEDGER, "nextToken": first["nextToken"]})
    assert not_alone.status_code == 400
    rest = api.ok("getReports", seller, REPORTS, params={"nextToken": first["nextToken"]})
    assert [r["reportId"] for r in rest["reports"]] == ids[:1] and "nextToken" not in rest


def test_report_cooldown_cancels_repeats(fresh: Any) -> None:
    api = fresh(report_cooldown_seconds=1800, report_queue_seconds=0, report_processing_seconds=0)
    seller = sellers(api.sandbox)[0]
    spec = {"reportType": REIMBURSEMENTS, "marketplaceIds": [US], "dataStartTime": fmt_s(ANCHOR - timedelta(days=300))}
    assert api.get_report(seller, api.report(seller, spec))["processingStatus"] == "DONE"
    assert api.get_report(seller, api.report(seller, spec))["processingStatus"] == "CANCELLED"
    api.sandbox.advance(1801)
    api.tokens.clear()
    assert api.get_report(seller, api.report(seller, spec))["processingStatus"] == "DONE"


# --------------------------------------------------------------------------------------
# Usage plans, faults and admin
# --------------------------------------------------------------------------------------


def test_429_quota_exceeded_when_the_bucket_is_spent(fresh: Any) -> None:
    api = fresh(rate_limits_enabled=True, rate_overrides={"getInventorySummaries": (0.001, 2)})
    sb, (seller, other) = api.sandbox, sellers(api.sandbox)
    params = MARKETPLACE_US
    answers = [api.call("getInventorySummaries", seller, INVENTORY, params=params) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert answers[0].headers["x-amzn-ratelimit-limit"] == "0.001"
    assert answers[2].json() == QUOTA and "x-amzn-requestid" in answers[2].headers
    assert api.call("getInventorySummaries", other, INVENTORY, params=params).status_code == 200  # per seller
    assert (sb.requests(seller, "getInventorySummaries"), sb.throttled(seller, "getInventorySummaries")) == (3, 1)
    assert len(sb.request_times(seller, "getInventorySummaries")) == 3
    assert sb.peak_rate(seller, "getInventorySummaries") == 3.0
    assert api.http.get("/_sandbox/counters").json()["operations"][f"{seller}|getInventorySummaries"]["statuses"] == {"200": 2, "429": 1}
    api.http.post("/_sandbox/limits/reset")
    assert api.call("getInventorySummaries", seller, INVENTORY, params=params).status_code == 200


def test_default_plans_and_scale(fresh: Any) -> None:
    api = fresh(rate_limits_enabled=True)
    sb, seller = api.sandbox, sellers(api.sandbox)[0]
    statuses = [api.call("getReports", seller, REPORTS, params={"reportTypes": LEDGER}).status_code for _ in range(11)]
    assert statuses == [200] * 10 + [429]  # burst 10, then one token per 45 s
    assert api.call("getReport", seller, f"{REPORTS}/1").headers["x-amzn-ratelimit-limit"] == "2.0"
    sb.configure(rate_scale=1000)  # 22.2 tokens/s
    time.sleep(0.1)
    ok = api.call("getReports", seller, REPORTS, params={"reportTypes": LEDGER})
    assert ok.status_code == 200 and ok.headers["x-amzn-ratelimit-limit"] == "22.2"


def test_injected_errors_and_latency(fresh: Any) -> None:
    api = fresh()
    sb, seller = api.sandbox, sellers(api.sandbox)[0]
    params = MARKETPLACE_US
    assert api.http.post("/_sandbox/config", json={"error_rate": 1.0, "latency": 0.05}).json()["error_rate"] == 1.0
    t0 = time.perf_counter()
    answers = [api.call("getInventorySummaries", seller, INVENTORY, params=params) for _ in range(3)]
    assert time.perf_counter() - t0 >= 0.15
    assert sorted(r.status_code for r in answers) == [500, 500, 503]
    assert {r.json()["errors"][0]["code"] for r in answers} == {"InternalFailure", "ServiceUnavailable"}
    assert sb.counters()["injected_errors"] == 3
    sb.configure(error_rate=0.0, latency=0.0)
    assert api.call("getInventorySummaries", seller, INVENTORY, params=params).status_code == 200
    api.http.post("/_sandbox/counters/reset")
    assert sb.counters()["injected_errors"] == 0 and sb.requests(seller, "getInventorySummaries") == 0


def test_admin_api(api: Api) -> None:
    sb = api.sandbox
    creds = api.http.get("/_sandbox/credentials").json()
    assert creds == {"client_id": sb.client_id, "client_secret": sb.client_secret, "refresh_tokens": sb.refresh_tokens}
    summary = api.http.get("/_sandbox/sellers").json()
    assert set(summary) == set(sb.seller_ids) and summary[sb.seller_ids[1]]["marketplaces"] == [US, CA]
    before = sb.now()
    assert api.http.post("/_sandbox/clock", json={"advance": 2}).json()["now"] >= before + 2
    assert api.http.post("/_sandbox/config", json={"no_such_knob": 1}).status_code == 400
    assert api.http.get("/_sandbox/nothing").status_code == 404
    assert api.http.get("/orders/v0/orders", headers={"x-amz-access-token": api.token(sb.seller_ids[0])}).status_code == 404


# --------------------------------------------------------------------------------------
# Static mode
# --------------------------------------------------------------------------------------


def test_static_mode_matches_exact_parameters(fresh: Any) -> None:
    api = fresh(mode="static", rate_limits_enabled=True)
    seller = sellers(api.sandbox)[0]
    headers = {"x-amz-access-token": api.token(seller)}
    exact = {"details": "true", "granularityType": "Marketplace", "granularityId": US, "marketplaceIds": US}
    r = api.http.get(INVENTORY, params=exact, headers=headers)
    assert r.status_code == 200 and r.headers["x-amzn-ratelimit-limit"] == "5.0"
    assert r.json()["pagination"] == {"nextToken": "seed"} and len(r.json()["payload"]["inventorySummaries"]) == 3
    assert api.http.get(INVENTORY, params={**exact, "extra": "ignored"}, headers=headers).status_code == 200
    failing = api.http.get(INVENTORY, params={"marketplaceIds": "1"}, headers=headers)
    assert failing.status_code == 500 and failing.json()["errors"][0]["code"] == "InternalFailure"
    miss = api.http.get(INVENTORY, params={**exact, "granularityId": "A2EUQ1WTGCTBG2"}, headers=headers)
    assert miss.status_code == 400 and miss.json() == {"errors": [{"code": "InvalidInput", "message": NO_MATCH, "details": ""}]}
    listing = {"reportType": "GET_MERCHANT_LISTINGS_ALL_DATA", "dataStartTime": "2024-03-10T20:11:24.000Z", "marketplaceIds": ["A1PA6795UKMFR9", US]}
    created = api.http.post(REPORTS, headers=headers, json=listing)
    assert created.status_code == 202 and created.json() == {"reportId": "ID323"}
    other_body = api.http.post(REPORTS, headers=headers, json={**listing, "marketplaceIds": [US]})
    assert other_body.json()["errors"][0]["message"] == NO_MATCH
    case = {"CreatedAfter": "TEST_CASE_200_NEXT_TOKEN", "MarketplaceIds": US}
    page = api.http.get("/orders/v0/orders", params=case, headers=headers).json()
    last = api.http.get("/orders/v0/orders", params={**case, "NextToken": page["payload"]["NextToken"]}, headers=headers)
    assert last.status_code == 200 and "NextToken" not in last.json()["payload"]
    shipped = api.http.post("/orders/v0/orders/902-1845936-5435065/shipment", json={"marketplaceId": US, "shipmentStatus": "ReadyForPickup"}, headers=headers)
    assert shipped.status_code == 204 and shipped.content == b""
    txns = api.http.get(TRANSACTIONS, params={"postedAfter": "2023-03-07", "nextToken": "jehgri34yo7jr9e8f984tr9i4o"}, headers=headers)
    assert txns.status_code == 200 and txns.json()["payload"]["nextToken"] == "Next token value"
    assert api.http.get(INVENTORY, params=exact).status_code == 403  # the same auth as production


# --------------------------------------------------------------------------------------
# Determinism, every operation validated, the CLI
# --------------------------------------------------------------------------------------


def test_world_is_deterministic() -> None:
    a, b = build_world(3, "tiny", ANCHOR), build_world(3, "tiny", ANCHOR)
    assert a.fingerprint() == b.fingerprint()
    assert a.seller_ids == b.seller_ids and a.unreimbursed_claims(a.seller_ids[0]) == b.unreimbursed_claims(b.seller_ids[0])
    assert build_world(4, "tiny", ANCHOR).fingerprint() != a.fingerprint()
    assert build_world(3, "tiny", ANCHOR + timedelta(days=1)).fingerprint() != a.fingerprint()
    t0 = time.perf_counter()
    AmazonSandbox(seed=3, scale="small", anchor=ANCHOR)
    assert time.perf_counter() - t0 < 2.0


def test_every_operation_and_error_answer_conforms(fresh: Any) -> None:
    """One 2xx and one 4xx of each operation, each validated by ``conform`` (through Api.call)."""
    api = fresh(report_queue_seconds=0, report_processing_seconds=0)
    seller = sellers(api.sandbox)[0]
    seen: set[tuple[str, int]] = set()

    def hit(op: str, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
        r = api.call(op, seller, path, method, **kwargs)
        seen.add((op, r.status_code // 100))
        return r

    spec = {"reportType": REIMBURSEMENTS, "marketplaceIds": [US], "dataStartTime": fmt_s(ANCHOR - timedelta(days=200))}
    rid = hit("createReport", REPORTS, "POST", json=spec).json()["reportId"]
    doc_id = hit("getReport", f"{REPORTS}/{rid}").json()["reportDocumentId"]
    hit("getReportDocument", f"{DOCUMENTS}/{doc_id}")
    hit("getReports", REPORTS, params={"reportTypes": REIMBURSEMENTS})
    api.sandbox.configure(report_queue_seconds=60)  # a report to cancel stays IN_QUEUE
    hit("cancelReport", f"{REPORTS}/{api.report(seller, {'reportType': LEDGER, 'marketplaceIds': [US]})}", "DELETE")
    a, b = next(api.windows())
    hit("getInventorySummaries", INVENTORY, params={"granularityType": "Marketplace", "granularityId": US, "marketplaceIds": US, "details": "true"})
    hit("listFinancialEventGroups", GROUPS, params={"FinancialEventGroupStartedAfter": a, "FinancialEventGroupStartedBefore": b})
    hit("listTransactions", TRANSACTIONS, params={"postedAfter": a, "postedBefore": b})
    hit("searchOrders", ORDERS, params={"createdAfter": a, "includedData": "BUYER,PROCEEDS,FULFILLMENT"})
    hit("getInventorySummaries", INVENTORY, params={"granularityType": "Store", "granularityId": US, "marketplaceIds": US})
    hit("listFinancialEventGroups", GROUPS, params={"MaxResultsPerPage": 101, "FinancialEventGroupStartedAfter": a})
    hit("listTransactions", TRANSACTIONS, params={"postedAfter": "yesterday"})
    hit("searchOrders", ORDERS, params={"createdAfter": a, "fulfillmentStatuses": "LOST"})
    hit("createReport", REPORTS, "POST", content=b"not json")
    hit("getReports", REPORTS, params={"reportTypes": LEDGER, "processingStatuses": "BAD_VALUE"})
    hit("getReport", f"{REPORTS}/0")
    hit("cancelReport", f"{REPORTS}/{rid}", "DELETE")
    hit("getReportDocument", f"{DOCUMENTS}/nope")
    assert seen == {(op, cls) for op in OPERATIONS for cls in (2, 4)}


def test_cli_parses_into_run(monkeypatch: pytest.MonkeyPatch) -> None:
    got: dict[str, Any] = {}
    monkeypatch.setattr(amazon_server, "run", lambda host, port, **kw: got.update(host=host, port=port, **kw))
    amazon_server.main(["--port", "9001", "--scale", "50", "--mode", "static", "--rate-scale", "10", "--no-rate-limits", "--error-rate", "0.1"])
    assert got == {
        "host": "127.0.0.1", "port": 9001, "scale": 50, "seed": 0, "mode": "static", "rate_scale": 10.0,
        "rate_limits_enabled": False, "latency": 0.0, "error_rate": 0.1, "access_token_ttl": 3600,
    }
