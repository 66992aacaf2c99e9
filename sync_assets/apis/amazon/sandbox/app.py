"""The sandbox's ASGI app: SP-API routes, LWA's token endpoint, document downloads and the admin API.

Order of an SP-API call, as on Amazon: route -> ``x-amz-access-token`` (403 Unauthorized) -> the
(seller, operation) bucket (429 QuotaExceeded, no rate header) -> latency and injected 5xx -> the
operation.  Every answer carries ``x-amzn-RequestId``; 2xx, 400 and 404 answers of an operation
also ``x-amzn-RateLimit-Limit`` (the plan's rate as applied).

Admin routes (:data:`ADMIN_ROUTES`, JSON in and out, no token) bypass limits, latency and counters.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .common import ApiError, error_body
from .limits import format_rate
from .operations import Call

if TYPE_CHECKING:
    from .sandbox import AmazonSandbox

__all__ = ["ADMIN_ROUTES", "DYNAMIC_ROUTES", "SpApiApp"]

_JSON = "application/json"
QUOTA_EXCEEDED = error_body("QuotaExceeded", "You exceeded your quota for the requested resource.")
_INJECTED = (
    (500, error_body("InternalFailure", "We encountered an internal error. Please try again.")),
    (500, error_body("InternalFailure", "We encountered an internal error. Please try again.")),
    (503, error_body("ServiceUnavailable", "Service temporarily unavailable. Please try again later.")),
)


@dataclass(frozen=True)
class Route:
    method: str
    regex: re.Pattern[str]
    op: str
    service: str  # "operations" | "reports"


def _route(method: str, path: str, op: str, service: str = "operations") -> Route:
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return Route(method, re.compile(f"^{pattern}/?$"), op, service)


DYNAMIC_ROUTES: tuple[Route, ...] = (
    _route("GET", "/fba/inventory/v1/summaries", "getInventorySummaries"),
    _route("GET", "/finances/v0/financialEventGroups", "listFinancialEventGroups"),
    _route("GET", "/finances/2024-06-19/transactions", "listTransactions"),
    _route("GET", "/orders/2026-01-01/orders", "searchOrders"),
    _route("POST", "/reports/2021-06-30/reports", "createReport", "reports"),
    _route("GET", "/reports/2021-06-30/reports", "getReports", "reports"),
    _route("GET", "/reports/2021-06-30/reports/{reportId}", "getReport", "reports"),
    _route("DELETE", "/reports/2021-06-30/reports/{reportId}", "cancelReport", "reports"),
    _route("GET", "/reports/2021-06-30/documents/{reportDocumentId}", "getReportDocument", "reports"),
)

ADMIN_ROUTES: dict[str, str] = {
    "GET /_sandbox/counters": "every counter (operations per seller|op, lwa, wide_windows, create_report, documents)",
    "POST /_sandbox/counters/reset": "zero the counters",
    "GET /_sandbox/config": "the knobs",
    "POST /_sandbox/config": "set knobs (see SandboxConfig); returns the knobs",
    "POST /_sandbox/clock": '{"advance": seconds} -> {"now": epoch seconds}',
    "GET /_sandbox/sellers": "sellers, marketplaces and data sizes",
    "GET /_sandbox/credentials": "client_id, client_secret and each seller's initial refresh token",
    "POST /_sandbox/lwa/revoke": '{"seller_id"}: its refresh tokens answer invalid_grant',
    "POST /_sandbox/lwa/expire_access_tokens": "every access token issued so far is expired",
    "POST /_sandbox/lwa/expire_client_secret": "calls with tokens of the current secret: 403 secret expired",
    "POST /_sandbox/lwa/rotate_client_secret": '-> {"client_secret"}',
    "POST /_sandbox/next_tokens/expire": "every next token issued so far is expired",
    "POST /_sandbox/reports/force": '{"outcome": "FATAL"|"CANCELLED", "count": 1, "report_type": null}',
    "GET /_sandbox/claims": "?seller_id=...&status=unreimbursed|reimbursed|all",
    "POST /_sandbox/claims/reimburse": '{"seller_id", "claim_id": null = the first open one} -> the reimbursement row',
    "POST /_sandbox/limits/reset": "refill every bucket",
}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    content = b"" if body is None or status == 204 else orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS, default=str)
    return Response(content, status, headers=headers, media_type=_JSON)


class SpApiApp:
    def __init__(self, sandbox: "AmazonSandbox") -> None:
        self.sandbox = sandbox
        self._admin: dict[tuple[str, str], Callable[[dict[str, Any], Request], Any]] = _admin_actions(sandbox)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self._dispatch(request)
        await response(scope, receive, send)

    async def _dispatch(self, request: Request) -> Response:
        path = request.url.path
        if path.startswith("/_sandbox/"):
            return await self._admin_call(request)
        request_id = str(uuid.uuid4())
        if path == "/auth/o2/token":
            return await self._token(request, request_id)
        if path.startswith("/_documents/") and request.method == "GET":
            status, headers, body = self.sandbox.reports.download(path.removeprefix("/_documents/"), dict(request.query_params))
            return Response(body, status, headers={**headers, "x-amz-request-id": request_id})
        return await self._sp_api(request, request_id)

    # ------------------------------------------------------------------ LWA

    async def _token(self, request: Request, request_id: str) -> Response:
        if request.method != "POST":
            return _json(405, {"error": "invalid_request", "error_description": "Use POST"}, {"x-amzn-RequestId": request_id})
        raw = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                parsed = orjson.loads(raw) if raw.strip() else {}
            except orjson.JSONDecodeError:
                parsed = {}
            form = {k: str(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {}
        else:
            form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        answer = self.sandbox.lwa.token(form)
        headers = {"x-amzn-RequestId": request_id, "cache-control": "no-store", "pragma": "no-cache"}
        return Response(orjson.dumps(answer.body), answer.status, headers=headers, media_type="application/json;charset=UTF-8")

    # ------------------------------------------------------------------ SP-API

    def _resolve(self, method: str, path: str) -> tuple[str, str, dict[str, str], Any] | None:
        """(operation, service, path parameters, static route or None) of a request."""
        if self.sandbox.config.mode == "static":
            found = self.sandbox.static.route(method, path)
            return None if found is None else (found[0].op, "static", found[1], found[0])
        for route in DYNAMIC_ROUTES:
            m = route.regex.match(path)
            if m and route.method == method:
                return route.op, route.service, m.groupdict(), None
        return None

    async def _sp_api(self, request: Request, request_id: str) -> Response:
        headers = {"x-amzn-RequestId": request_id}
        resolved = self._resolve(request.method, request.url.path)
        if resolved is None:
            return _json(404, error_body("NotFound", f"No SP-API operation at {request.method} {request.url.path} in this sandbox."), headers)
        op, service, path_params, static_route = resolved
        try:
            seller = self.sandbox.lwa.seller_for(request.headers.get("x-amz-access-token"))
        except ApiError as exc:
            self.sandbox.count_unauthorized()
            return _json(exc.status, exc.body(), headers)
        limiter = self.sandbox.limiter
        if not limiter.admit(seller, op):
            limiter.record_status(seller, op, 429)
            return _json(429, QUOTA_EXCEEDED, headers)
        status, body = await self._answer(request, seller, op, service, path_params, static_route)
        limiter.record_status(seller, op, status)
        if status < 300 or status in (400, 404):
            headers["x-amzn-RateLimit-Limit"] = format_rate(limiter.plan(op).rate)
        return _json(status, body, headers)

    async def _answer(self, request: Request, seller: str, op: str, service: str, path_params: dict[str, str], static_route: Any) -> tuple[int, Any]:
        sandbox = self.sandbox
        if sandbox.config.latency:
            await asyncio.sleep(sandbox.config.latency)
        if sandbox.inject_error():
            return _INJECTED[sandbox.injected_errors % len(_INJECTED)]
        query: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            query.setdefault(key, []).append(value)
        body = await request.body()
        call = Call(seller, op, query, path_params, body, sandbox.now_datetime(), str(request.base_url))
        try:
            if service == "static":
                return sandbox.static.answer(static_route, query, path_params, body)
            if service == "reports":
                return sandbox.reports.handle(call)
            with sandbox.world.lock:
                return sandbox.operations.handle(call)
        except ApiError as exc:
            return exc.status, exc.body()

    # ------------------------------------------------------------------ admin

    async def _admin_call(self, request: Request) -> Response:
        action = self._admin.get((request.method, request.url.path))
        if action is None:
            return _json(404, {"error": f"unknown admin route {request.method} {request.url.path}", "routes": ADMIN_ROUTES})
        try:
            raw = await request.body()
            payload = orjson.loads(raw) if raw.strip() else {}
            if not isinstance(payload, dict):
                raise ValueError("the JSON body must be an object")
            result = action(payload, request)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, result)


def _admin_actions(sb: "AmazonSandbox") -> dict[tuple[str, str], Callable[[dict[str, Any], Request], Any]]:
    def claims(_: dict[str, Any], request: Request) -> list[dict[str, Any]]:
        seller = request.query_params["seller_id"]
        status = request.query_params.get("status", "unreimbursed")
        found = {"unreimbursed": sb.world.unreimbursed_claims, "reimbursed": sb.world.reimbursed_claims, "all": sb.world.claims}[status](seller)
        return [{**c.__dict__, "reason_code": c.reason_code, "reimbursement_reason": c.reimbursement_reason} for c in found]

    def credentials(_: dict[str, Any], __: Request) -> dict[str, Any]:
        return {"client_id": sb.client_id, "client_secret": sb.client_secret, "refresh_tokens": sb.refresh_tokens}

    def with_ok(fn: Callable[[], Any]) -> Callable[[dict[str, Any], Request], Any]:
        return lambda _p, _r: {"ok": True, "result": fn()}

    return {
        ("GET", "/_sandbox/counters"): lambda _p, _r: sb.counters(),
        ("POST", "/_sandbox/counters/reset"): with_ok(sb.reset_counters),
        ("GET", "/_sandbox/config"): lambda _p, _r: sb.config.as_dict(),
        ("POST", "/_sandbox/config"): lambda p, _r: sb.configure(**p),
        ("POST", "/_sandbox/clock"): lambda p, _r: {"now": sb.advance(float(p.get("advance", 0)))},
        ("GET", "/_sandbox/sellers"): lambda _p, _r: sb.world.summary(),
        ("GET", "/_sandbox/credentials"): credentials,
        ("POST", "/_sandbox/lwa/revoke"): lambda p, _r: {"ok": True, "revoked": sb.revoke_refresh_token(p["seller_id"])},
        ("POST", "/_sandbox/lwa/expire_access_tokens"): with_ok(sb.expire_access_tokens),
        ("POST", "/_sandbox/lwa/expire_client_secret"): with_ok(sb.expire_client_secret),
        ("POST", "/_sandbox/lwa/rotate_client_secret"): lambda _p, _r: {"client_secret": sb.rotate_client_secret()},
        ("POST", "/_sandbox/next_tokens/expire"): with_ok(sb.expire_next_tokens),
        ("POST", "/_sandbox/reports/force"): lambda p, _r: {
            "ok": True,
            "result": sb.force_report_outcome(p["outcome"], int(p.get("count", 1)), p.get("report_type")),
        },
        ("GET", "/_sandbox/claims"): claims,
        ("POST", "/_sandbox/claims/reimburse"): lambda p, _r: sb.reimburse_claim(p["seller_id"], p.get("claim_id")),
        ("POST", "/_sandbox/limits/reset"): with_ok(sb.reset_limits),
    }
