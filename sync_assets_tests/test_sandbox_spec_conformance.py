"""Every route the ESI sandbox serves, fetched over real HTTP and validated against CCP's official
OpenAPI spec (compat 2026-08-18, vendored in sync_assets_tests/data/) with jsonschema.

OpenAPI 3.0 schema objects are converted to JSON Schema: ``$ref`` resolved, ``nullable`` mapped to
a ``null`` type, ``example``/``description``/``x-*`` dropped, objects closed
(``additionalProperties: false``: the sandbox must not invent fields), and ``format`` checked only
for ``date-time`` (ESI's ``YYYY-MM-DDTHH:MM:SSZ``) and ``date`` (``YYYY-MM-DD``), which must parse.

One documented deviation is allowed, explicitly: ``/status`` omits ``vip`` while the cluster is open
(ESI.md Appendix A), although the spec lists it as required.
"""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import httpx
import jsonschema
import pytest
import yaml

from sync_assets.apis.esi.sandbox import market_data as md
from sync_assets.apis.esi.sandbox.corp_activity import JOB_STATUSES, ORDER_STATES
from sync_assets.apis.esi.sandbox.corp_assets import CONTAINER_ACTIONS, LOCATION_FLAGS, LOCATION_TYPES
from sync_assets.apis.esi.sandbox.corp_wallet import CONTEXT_ID_TYPES, REF_TYPES
from sync_assets.apis.esi.sandbox.corporation import CORP_ROUTES, CORPORATION_ROLES
from sync_assets.apis.esi.sandbox.esi import ALL_ROUTES, DEFAULT_CACHE_SECONDS, RATE_LIMIT_GROUPS, EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread

from .helpers import resolve_ref

SPEC_PATH = Path(__file__).resolve().parent / "data" / "openapi-2026-08-18.yaml"
FORGE = 10000002
CORPS = (98000001, 98000002)

#: route kind -> spec path, for the market routes (the corporation routes carry theirs)
MARKET_PATHS = {"orders": "/markets/{region_id}/orders", "prices": "/markets/prices", "status": "/status"}
SPEC_PATHS = {**MARKET_PATHS, **{k: r.path for k, r in CORP_ROUTES.items()}}
#: the one allowed deviation: (route kind, field the spec requires that the sandbox omits, like ESI)
ALLOWED_MISSING_REQUIRED = {("status", "vip")}


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.load(SPEC_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def to_json_schema(spec: dict, node: Any) -> Any:
    """OpenAPI 3.0 schema object -> JSON Schema (draft 4 semantics)."""
    if not isinstance(node, dict):
        return node
    node = resolve_ref(spec, node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("example", "description", "nullable", "title", "deprecated", "readOnly", "writeOnly") or key.startswith("x-"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(spec, sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_json_schema(spec, value)
        elif key in ("allOf", "oneOf", "anyOf"):
            out[key] = [to_json_schema(spec, sub) for sub in value]
        else:
            out[key] = copy.deepcopy(value)
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time", raises=ValueError)
    def _dt(value: object) -> bool:
        return not isinstance(value, str) or bool(datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))

    @checker.checks("date", raises=ValueError)
    def _d(value: object) -> bool:
        return not isinstance(value, str) or bool(datetime.strptime(value, "%Y-%m-%d"))

    return checker


def _operation(spec: dict, kind: str) -> dict:
    return spec["paths"][SPEC_PATHS[kind]]["get"]


def _validator(spec: dict, kind: str) -> jsonschema.Draft4Validator:
    response = _operation(spec, kind)["responses"]["200"]
    schema = to_json_schema(spec, response["content"]["application/json"]["schema"])
    for route, field in ALLOWED_MISSING_REQUIRED:
        if route == kind:
            schema["required"] = [f for f in schema["required"] if f != field]
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=_checker())


def _declared_headers(spec: dict, kind: str) -> set[str]:
    return {h.lower() for h in _operation(spec, kind)["responses"]["200"].get("headers", {})}


# --------------------------------------------------------------------------------------
# The sandbox, served, with a director token for each corporation
# --------------------------------------------------------------------------------------


class Fetcher:
    def __init__(self, sandbox: EsiSandbox, client: httpx.Client) -> None:
        self.sandbox, self.client = sandbox, client
        self.responses: dict[str, list[httpx.Response]] = {k: [] for k in ALL_ROUTES}
        self.tokens: dict[int, str] = {}
        self.directors: dict[int, int] = {}
        sso = sandbox.sso
        for corp in CORPS:
            cid, rt = sandbox.add_director(corp)
            r = client.post("/v2/oauth/token", data={"grant_type": "refresh_token", "refresh_token": rt}, auth=(sso.client_id, sso.client_secret))
            assert r.status_code == 200, r.text
            self.tokens[corp], self.directors[corp] = r.json()["access_token"], cid

    def get(self, kind: str, path: str, corp: int | None = None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[corp]}"} if corp else {}
        r = self.client.get(path, params=params, headers=headers)
        assert r.status_code == 200, (path, params, r.status_code, r.text)
        self.responses[kind].append(r)
        return r

    def walk(self, kind: str, path: str, corp: int | None = None, **params: Any) -> list[Any]:
        first = self.get(kind, path, corp, page=1, **params)
        rows = list(first.json())
        for page in range(2, int(first.headers["x-pages"]) + 1):
            rows += self.get(kind, path, corp, page=page, **params).json()
        return rows


@pytest.fixture(scope="module")
def fetched() -> Iterator[Fetcher]:
    sandbox = EsiSandbox({FORGE: 3}, orders_per_page=150, n_price_types=600, corporations={c: "small" for c in CORPS})
    with serve_in_thread(sandbox) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        f = Fetcher(sandbox, client)
        f.walk("orders", f"/markets/{FORGE}/orders", order_type="all")
        type_id = sandbox.orders_snapshot(FORGE)["type_id"].iloc[0]
        f.get("orders", f"/markets/{FORGE}/orders", order_type="sell", type_id=int(type_id))
        f.get("prices", "/markets/prices")
        f.get("status", "/status")
        for corp in CORPS:
            base = f"/corporations/{corp}"
            f.get("members", f"{base}/members", corp)
            f.get("membertracking", f"{base}/membertracking", corp)
            f.walk("assets", f"{base}/assets", corp)
            for flag in ("true", "false"):
                f.walk("industry_jobs", f"{base}/industry/jobs", corp, include_completed=flag)
            f.walk("corp_orders", f"{base}/orders", corp)
            f.walk("corp_orders_history", f"{base}/orders/history", corp)
            for division in range(1, 8):
                f.walk("wallet_journal", f"{base}/wallets/{division}/journal", corp)
                rows = f.get("wallet_transactions", f"{base}/wallets/{division}/transactions", corp).json()
                while len(rows) > 1:  # from_id walk to the end (ESI.md §3.2)
                    rows = f.get("wallet_transactions", f"{base}/wallets/{division}/transactions", corp, from_id=rows[-1]["transaction_id"]).json()
            observers = f.walk("mining_observers", f"/corporation/{corp}/mining/observers", corp)
            for o in observers:
                f.walk("mining_ledger", f"/corporation/{corp}/mining/observers/{o['observer_id']}", corp)
            recent = f.walk("killmails_recent", f"{base}/killmails/recent", corp)
            for km in recent[:40]:
                f.get("killmail", f"/killmails/{km['killmail_id']}/{km['killmail_hash']}")
            f.walk("container_logs", f"{base}/containers/logs", corp)
            f.get("character_roles", f"/characters/{f.directors[corp]}/roles", corp)
        yield f


# --------------------------------------------------------------------------------------
# Bodies and headers
# --------------------------------------------------------------------------------------


def test_every_served_route_was_fetched(fetched: Fetcher) -> None:
    assert set(SPEC_PATHS) == set(ALL_ROUTES)
    for kind in ALL_ROUTES:
        bodies = [r.json() for r in fetched.responses[kind]]
        assert bodies, f"no response fetched for {kind}"
        assert any(b for b in bodies), f"only empty bodies for {kind}"


@pytest.mark.parametrize("kind", ALL_ROUTES)
def test_bodies_match_the_official_schema(fetched: Fetcher, spec: dict, kind: str) -> None:
    validator = _validator(spec, kind)
    for r in fetched.responses[kind]:
        body = r.json()
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, f"{kind} {r.request.url}: {len(errors)} errors, first: {errors[0].message} at {list(errors[0].absolute_path)}"
        if kind == "status":
            assert "vip" not in body  # the documented deviation, and only while the cluster is open


@pytest.mark.parametrize("kind", ALL_ROUTES)
def test_response_headers_match_the_spec(fetched: Fetcher, spec: dict, kind: str) -> None:
    declared = _declared_headers(spec, kind)
    assert {"etag", "last-modified", "cache-control"} <= declared
    for r in fetched.responses[kind]:
        missing = declared - set(r.headers.keys())
        assert not missing, f"{kind} {r.request.url}: missing {missing}"
        assert ("x-pages" in r.headers) == ("x-pages" in declared) or r.request.url.params.get("type_id"), kind
        assert r.headers["etag"].startswith('"') and r.headers["last-modified"].endswith(" GMT")
        for h in ("expires", "date", "x-esi-request-id"):
            assert h in r.headers, (kind, h)
        limited = "x-ratelimit-group" in r.headers
        rl = _operation(spec, kind).get("x-rate-limit")
        assert limited == (rl is not None), kind
        if rl:
            assert r.headers["x-ratelimit-group"] == rl["group"] and r.headers["x-ratelimit-limit"] == f"{rl['max-tokens']}/15m"


def test_invalid_values_are_caught_by_the_converted_schemas(spec: dict) -> None:
    """The checker itself: wrong types, unknown fields, bad enums and bad dates are rejected."""
    jobs = _validator(spec, "industry_jobs")
    good = {"activity_id": 1, "blueprint_id": 1, "blueprint_location_id": 1, "blueprint_type_id": 1, "duration": 60,
            "end_date": "2026-11-20T12:00:00Z", "facility_id": 1, "installer_id": 1, "job_id": 1, "location_id": 1,
            "output_location_id": 1, "runs": 1, "start_date": "2026-11-20T11:59:00Z", "status": "active"}
    assert not list(jobs.iter_errors([good]))
    for bad in ({"status": "done"}, {"runs": "1"}, {"end_date": "2026-11-20 12:00:00"}, {"end_date": "2026-13-20T12:00:00Z"}, {"extra": 1}):
        assert list(jobs.iter_errors([{**good, **bad}])), bad
    assert list(jobs.iter_errors([{k: v for k, v in good.items() if k != "job_id"}]))
    observers = _validator(spec, "mining_observers")
    assert not list(observers.iter_errors([{"last_updated": "2026-11-20", "observer_id": 1, "observer_type": "structure"}]))
    assert list(observers.iter_errors([{"last_updated": "2026-11-20T00:00:00Z", "observer_id": 1, "observer_type": "structure"}]))
    status = _validator(spec, "status")
    assert not list(status.iter_errors({"players": 1, "server_version": "1", "start_time": "2026-11-20T11:00:00Z"}))
    assert list(status.iter_errors({"players": 1, "server_version": "1"}))  # only vip may be missing


# --------------------------------------------------------------------------------------
# The route table and enums against the spec
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CORP_ROUTES))
def test_route_table_matches_the_spec(spec: dict, kind: str) -> None:
    route = CORP_ROUTES[kind]
    op = _operation(spec, kind)
    assert op["operationId"] == route.operation_id
    scopes = [s for req in op.get("security", []) for s in req.get("OAuth2", [])]
    assert scopes == ([route.scope] if route.scope else [])
    assert set(op.get("x-required-roles", [])) == set(route.roles)
    assert op["x-cache-age"] == route.cache_seconds
    rl = op.get("x-rate-limit")
    assert route.rate_limit == ((rl["group"], rl["max-tokens"]) if rl else None)
    assert RATE_LIMIT_GROUPS.get(kind) == route.rate_limit
    query = {p["name"] for p in (resolve_ref(spec, p) for p in op.get("parameters", [])) if p["in"] == "query"}
    assert ("page" in query) == route.paged
    if kind == "wallet_transactions":
        assert "from_id" in query
    if kind == "industry_jobs":
        assert "include_completed" in query
    assert ("x-pages" in _declared_headers(spec, kind)) == route.paged


def test_market_route_table_matches_the_spec(spec: dict) -> None:
    for kind in MARKET_PATHS:
        op = _operation(spec, kind)
        assert DEFAULT_CACHE_SECONDS[kind] == op["x-cache-age"]
        rl = op.get("x-rate-limit")
        assert RATE_LIMIT_GROUPS.get(kind) == ((rl["group"], rl["max-tokens"]) if rl else None)


def _props(spec: dict, kind: str) -> dict:
    schema = resolve_ref(spec, _operation(spec, kind)["responses"]["200"]["content"]["application/json"]["schema"])
    if schema.get("type") == "array":
        schema = resolve_ref(spec, schema["items"])
    return {k: resolve_ref(spec, v) for k, v in schema.get("properties", {}).items()}


def test_sandbox_enums_are_spec_enums(spec: dict) -> None:
    assert set(LOCATION_FLAGS) <= set(_props(spec, "assets")["location_flag"]["enum"])
    assert list(LOCATION_TYPES) == _props(spec, "assets")["location_type"]["enum"]
    assert set(REF_TYPES) <= set(_props(spec, "wallet_journal")["ref_type"]["enum"])
    assert list(CONTEXT_ID_TYPES) == _props(spec, "wallet_journal")["context_id_type"]["enum"]
    assert list(CONTAINER_ACTIONS) == _props(spec, "container_logs")["action"]["enum"]
    assert list(JOB_STATUSES) == _props(spec, "industry_jobs")["status"]["enum"]
    assert list(ORDER_STATES) == _props(spec, "corp_orders_history")["state"]["enum"]
    assert set(md.RANGE_VALUES) == set(_props(spec, "corp_orders")["range"]["enum"])
    assert list(CORPORATION_ROLES) == _props(spec, "character_roles")["roles"]["items"]["enum"]


def test_frames_have_the_spec_columns(fetched: Fetcher, spec: dict) -> None:
    sb = fetched.sandbox
    corp = CORPS[0]
    params = {"industry_jobs": {"include_completed": True}, "wallet_journal": {"division": 1}, "wallet_transactions": {"division": 1}}
    observer = int(sb.corp_data(corp).mining_observers["observer_id"].iloc[0])
    params["mining_ledger"] = {"observer_id": observer}
    for kind in CORP_ROUTES:
        if kind in ("killmail", "character_roles", "members"):
            continue
        frame = sb.corp_snapshot(kind, corp, **params.get(kind, {}))
        assert list(frame.columns) == list(_props(spec, kind)), kind
    assert list(sb.corp_snapshot("members", corp).columns) == ["character_id"]
