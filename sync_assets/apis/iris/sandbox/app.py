"""Offline IRIS CRM (v1.23.0, e.g. Ireland Pay's ``crm.ireland-pay.com``) as a raw ASGI app.

``/api/v1/...``: the routes of :mod:`.routes` over the world of :mod:`.data`, GET only.  Every
request passes, in order: latency -> the rate limiter (fixed window per key, Laravel's throttle:
guests are throttled per client IP) -> ``X-API-KEY`` (401 ``{"message":"Unauthenticated"}``) ->
injected faults -> the route (404 ``{"message":"Not found"}`` for anything else).  Every
``/api/v1`` response carries ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining``; a 429
``{"message":"Too Many Attempts."}`` adds ``Retry-After`` and ``X-RateLimit-Reset``.

``/_sandbox/...``: the admin API (JSON, no key, no limits, not counted; see :data:`ADMIN_ROUTES`).
Keys are never echoed: counters and state name a key by its label.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from email.utils import formatdate
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qsl

import orjson

from .data import DEFAULT_MERCHANTS, DEFAULT_TIMEZONE, PROCESSORS, IrisWorld, Merchant, ReportState, iso
from .laravel import Invalid
from .routes import ROUTE_NAMES, ApiRequest, NotFound, match_route

__all__ = ["ADMIN_ROUTES", "DEFAULT_API_KEY", "INJECTED_ERRORS", "IrisConfig", "IrisSandbox", "KeyCounters"]

#: The key a sandbox accepts when none is configured (not a secret: the sandbox is offline).
DEFAULT_API_KEY = "iris-sandbox-key"
_JSON = "application/json"
_HTML = "text/html; charset=UTF-8"
_MESSAGES = {
    401: b'{"message":"Unauthenticated"}', 404: b'{"message":"Not found"}', 429: b'{"message":"Too Many Attempts."}',
    500: b'{"message":"Unexpected server error"}',
}


def _html(status: int, title: str) -> bytes:
    return (f"<html>\r\n<head><title>{status} {title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n").encode()


#: (status, content type, body) of injected faults, drawn from a shuffled bag of all five so
#: any five consecutive injections hold both HTML (proxy) and JSON (application) bodies.
INJECTED_ERRORS: tuple[tuple[int, str, bytes], ...] = (
    (500, _JSON, _MESSAGES[500]),
    (502, _HTML, _html(502, "Bad Gateway")),
    (503, _HTML, _html(503, "Service Temporarily Unavailable")),
    (503, _JSON, b'{"message":"Service Unavailable"}'),
    (504, _HTML, _html(504, "Gateway Time-out")),
)

ADMIN_ROUTES: dict[str, str] = {
    "GET /_sandbox/state": "world summary, key labels, knobs",
    "GET /_sandbox/counters": "counters per key label (see KeyCounters)",
    "POST /_sandbox/counters/reset": "zero the counters",
    "POST /_sandbox/limits/reset": "forget the rate-limit windows",
    "GET /_sandbox/config": "the knobs (IrisConfig)",
    "POST /_sandbox/config": "set knobs, e.g. {\"error_rate\": 0.2, \"failing_merchants\": [\"0001234\"]}",
    "POST /_sandbox/failing_merchants": "{\"mids\": [...]}: their transactions route always answers 500",
    "POST /_sandbox/republish": "{\"year\", \"month\", \"processor_id\"?, \"drop_rows\"?} -> the new report states",
    "POST /_sandbox/merchants/add": "{\"mid\"?, \"name\"?, \"opened\"? (Y-m-d), \"processor_id\"?, \"group_id\"?} -> merchant",
    "POST /_sandbox/merchants/close": "{\"mid\", \"on\"? (Y-m-d)} -> merchant",
    "POST /_sandbox/merchants/modify": "{\"mid\", \"name\"?, \"group_id\"?, \"sic_code\"?, \"vim\"?, \"datasource_id\"?} -> merchant",
}


@dataclass(frozen=True)
class IrisConfig:
    """Runtime knobs (replaced atomically by :meth:`IrisSandbox.configure`)."""

    latency: float = 0.0  # seconds added to every /api/v1 request
    error_rate: float = 0.0  # share of authenticated requests answered by an injected 5xx
    error_seed: int = 0  # seeds the injection (setting it re-seeds)
    error_routes: tuple[str, ...] = ROUTE_NAMES  # routes subject to injection
    failing_merchants: frozenset[str] = frozenset()  # their transactions route always answers 500
    rate_limit: int = 500  # requests per window and key
    rate_limit_window: float = 60.0  # seconds; a window opens with its first request (Laravel)
    rate_limit_enabled: bool = True
    validation_status: int = 405  # the spec's 405 {"message"}; 422 adds Laravel's "errors"
    links_with_query: bool = False  # page links keep the query string (Laravel's withQueryString)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["error_routes"], d["failing_merchants"] = list(self.error_routes), sorted(self.failing_merchants)
        return d


def _coerce(base: IrisConfig, knobs: Mapping[str, Any]) -> IrisConfig:
    names = {f.name for f in dataclasses.fields(IrisConfig)}
    unknown = set(knobs) - names
    if unknown:
        raise ValueError(f"unknown knob(s) {sorted(unknown)}; known: {sorted(names)}")
    out = dict(knobs)
    for k in ("latency", "error_rate", "rate_limit_window"):
        if k in out:
            out[k] = float(out[k])
    for k in ("error_seed", "rate_limit", "validation_status"):
        if k in out:
            out[k] = int(out[k])
    for k in ("rate_limit_enabled", "links_with_query"):
        if k in out:
            out[k] = bool(out[k])
    if "failing_merchants" in out:
        out["failing_merchants"] = frozenset(str(m) for m in out["failing_merchants"])
    if "error_routes" in out:
        out["error_routes"] = tuple(out["error_routes"])
    cfg = dataclasses.replace(base, **out)
    if cfg.latency < 0 or not 0 <= cfg.error_rate <= 1 or cfg.rate_limit < 1 or cfg.rate_limit_window <= 0:
        raise ValueError("latency >= 0, 0 <= error_rate <= 1, rate_limit >= 1 and rate_limit_window > 0")
    if cfg.validation_status not in (405, 422):
        raise ValueError("validation_status must be 405 or 422")
    if set(cfg.error_routes) - set(ROUTE_NAMES):
        raise ValueError(f"error_routes must be among {ROUTE_NAMES}")
    return cfg


# --------------------------------------------------------------------------------------
# Limiter and counters
# --------------------------------------------------------------------------------------


@dataclass
class KeyCounters:
    """What one key (or one guest IP) did. ``requests`` includes the 429s."""

    requests: int = 0
    rate_limited: int = 0
    max_in_window: int = 0  # most requests admitted in one window of the limiter
    max_in_sliding_window: int = 0  # most admitted within any span of rate_limit_window seconds
    # per window of the limiter, in order: seconds from the request that opened it to its last admitted one
    window_spreads: list[float] = field(default_factory=list)
    routes: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    _admitted: collections.deque[float] = field(default_factory=collections.deque, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "rate_limited": self.rate_limited, "max_in_window": self.max_in_window,
            "max_in_sliding_window": self.max_in_sliding_window, "window_spreads": [round(x, 4) for x in self.window_spreads],
            "routes": dict(self.routes),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


@dataclass
class _Window:
    start: float
    count: int = 0


@dataclass(frozen=True)
class _Verdict:
    admitted: bool
    limit: int
    remaining: int
    retry_after: int  # seconds until the window resets


# --------------------------------------------------------------------------------------
# The sandbox
# --------------------------------------------------------------------------------------


def _key_labels(api_keys: Mapping[str, str] | Iterable[str] | str) -> dict[str, str]:
    """key -> label; a plain list gets labels key1, key2, ..."""
    if isinstance(api_keys, str):
        api_keys = [api_keys]
    pairs = api_keys.items() if isinstance(api_keys, Mapping) else ((f"key{i}", k) for i, k in enumerate(api_keys, 1))
    labels = {str(key): str(label) for label, key in pairs}
    if not labels or any(not k for k in labels):
        raise ValueError("at least one non-empty API key is needed")
    return labels


class IrisSandbox:
    """The IRIS simulator: its :attr:`world`, knobs, limiter, counters and the ASGI :attr:`app`.

    Args:
        world: the data; default ``IrisWorld(seed, merchants, today, timezone, processors)``.
        api_keys: accepted ``X-API-KEY`` values: ``{label: key}``, a list (labels key1...) or one key.
        timer: monotonic seconds for the limiter (tests may drive it).
        **knobs: initial :class:`IrisConfig` values.
    """

    def __init__(
        self,
        world: IrisWorld | None = None,
        *,
        api_keys: Mapping[str, str] | Iterable[str] | str = DEFAULT_API_KEY,
        seed: int = 0,
        merchants: int = DEFAULT_MERCHANTS,
        today: date | None = None,
        timezone: str = DEFAULT_TIMEZONE,
        processors: int = len(PROCESSORS),
        timer: Callable[[], float] = time.monotonic,
        **knobs: Any,
    ) -> None:
        self.world = world or IrisWorld(seed=seed, merchants=merchants, today=today, timezone=timezone, processors=processors)
        self._labels = _key_labels(api_keys)
        self._timer = timer
        self._lock = threading.Lock()
        self._config = _coerce(IrisConfig(), knobs)
        self._error_rng = random.Random(self._config.error_seed)
        self._error_bag: list[tuple[int, str, bytes]] = []
        self._windows: dict[str, _Window] = {}
        self._counters: dict[str, KeyCounters] = {}
        self._actions = self._admin_actions()

    @property
    def app(self) -> "IrisSandbox":
        """The ASGI app: the sandbox itself (an instance with an async ``__call__``, which
        uvicorn detects as ASGI 3; a bound method would be taken for ASGI 2)."""
        return self

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self._asgi(scope, receive, send)

    # ---------------------------------------------------------------- knobs

    @property
    def config(self) -> IrisConfig:
        return self._config

    @property
    def key_labels(self) -> list[str]:
        return sorted(self._labels.values())

    def configure(self, **knobs: Any) -> dict[str, Any]:
        with self._lock:
            self._config = _coerce(self._config, knobs)
            if "error_seed" in knobs:
                self._error_rng, self._error_bag = random.Random(self._config.error_seed), []
            return self._config.as_dict()

    def set_failing_merchants(self, mids: Iterable[str]) -> None:
        self.configure(failing_merchants=[self._mid(m) for m in mids])

    def _mid(self, number: str) -> str:
        m = self.world.merchant(str(number))
        if m is None:
            raise KeyError(f"unknown merchant {number}")
        return m.mid

    # ---------------------------------------------------------------- world mutations

    def republish(self, year: int, month: int, processor_id: int | None = None, drop_rows: int = 0) -> list[ReportState]:
        return self.world.republish(year, month, processor_id, drop_rows)

    def close_merchant(self, mid: str, on: date | None = None) -> Merchant:
        return self.world.close_merchant(mid, on)

    def add_merchant(self, **fields: Any) -> Merchant:
        return self.world.add_merchant(**fields)

    def modify_merchant(self, mid: str, **changes: Any) -> Merchant:
        return self.world.modify_merchant(mid, **changes)

    # ---------------------------------------------------------------- counters

    def counters(self) -> dict[str, dict[str, Any]]:
        """Per key label (guests: ``ip:<address>``)."""
        with self._lock:
            return {label: c.as_dict() for label, c in sorted(self._counters.items())}

    def reset_counters(self) -> None:
        with self._lock:
            self._counters.clear()

    def reset_limits(self) -> None:
        with self._lock:
            self._windows.clear()

    def state(self) -> dict[str, Any]:
        return {**self.world.summary(), "api_keys": self.key_labels, "config": self._config.as_dict()}

    def _admit(self, principal: str, now: float) -> _Verdict:
        """Laravel's fixed window: opened by its first request, rejected requests do not count."""
        cfg = self._config
        counters = self._counters.setdefault(principal, KeyCounters())
        counters.requests += 1
        window = self._windows.get(principal)
        if window is None or now >= window.start + cfg.rate_limit_window:
            window = self._windows[principal] = _Window(now)
        retry = max(1, math.ceil(window.start + cfg.rate_limit_window - now))
        if cfg.rate_limit_enabled and window.count >= cfg.rate_limit:
            counters.rate_limited += 1
            return _Verdict(False, cfg.rate_limit, 0, retry)
        window.count += 1
        if window.count == 1:
            counters.window_spreads.append(0.0)
        elif counters.window_spreads:
            counters.window_spreads[-1] = now - window.start
        admitted = counters._admitted
        admitted.append(now)
        while admitted and admitted[0] <= now - cfg.rate_limit_window:
            admitted.popleft()
        counters.max_in_window = max(counters.max_in_window, window.count)
        counters.max_in_sliding_window = max(counters.max_in_sliding_window, len(admitted))
        return _Verdict(True, cfg.rate_limit, max(cfg.rate_limit - window.count, 0), retry)

    def _injected(self, route: str) -> tuple[int, str, bytes] | None:
        cfg = self._config
        if cfg.error_rate <= 0 or route not in cfg.error_routes:
            return None
        with self._lock:
            if self._error_rng.random() >= cfg.error_rate:
                return None
            if not self._error_bag:
                self._error_bag = list(INJECTED_ERRORS)
                self._error_rng.shuffle(self._error_bag)
            return self._error_bag.pop()

    # ---------------------------------------------------------------- HTTP

    async def _asgi(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/_sandbox" or path.startswith("/_sandbox/"):
            status, ctype, body, headers = await self._admin(scope, receive)
        else:
            status, ctype, body, headers = await self._api(scope)
        raw = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
               (b"date", formatdate(usegmt=True).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _api(self, scope: dict) -> tuple[int, str, bytes, dict[str, str]]:
        cfg = self._config
        if cfg.latency > 0:
            await asyncio.sleep(cfg.latency)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        label = self._labels.get(headers.get("x-api-key", ""))
        client = scope.get("client") or ("unknown", 0)
        principal = label or f"ip:{client[0]}"
        found = match_route(scope["path"]) if scope["method"] == "GET" else None
        route = found[0].name if found else "other"
        with self._lock:
            verdict = self._admit(principal, self._timer())
            self._counters[principal].routes[route] += 1
        out = {"Cache-Control": "no-cache, private", "X-RateLimit-Limit": str(verdict.limit),
               "X-RateLimit-Remaining": str(verdict.remaining)}
        if not verdict.admitted:
            out |= {"Retry-After": str(verdict.retry_after), "X-RateLimit-Reset": str(int(time.time()) + verdict.retry_after)}
            status, ctype, body = 429, _JSON, _MESSAGES[429]
        elif label is None:
            status, ctype, body = 401, _JSON, _MESSAGES[401]
        elif found is None:
            status, ctype, body = 404, _JSON, _MESSAGES[404]
        else:
            status, ctype, body = self._injected(route) or await asyncio.to_thread(self._serve, scope, headers, *found)
        with self._lock:
            self._counters[principal].statuses[status] += 1
        return status, ctype, body, out

    def _serve(self, scope: dict, headers: dict[str, str], route: Any, path_params: dict[str, str]) -> tuple[int, str, bytes]:
        cfg = self._config
        if route.name == "transactions" and cfg.failing_merchants:
            m = self.world.merchant(path_params["mid"])
            if m is not None and any(self.world.merchant(f) is m for f in cfg.failing_merchants):  # "0012" or "12"
                return 500, _JSON, _MESSAGES[500]
        # PHP's query parsing: "+" decodes to a space, the last duplicate wins, "" is null (absent)
        query = tuple(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        host = headers.get("host") or "{}:{}".format(*scope.get("server", ("localhost", 80)))
        req = ApiRequest(
            params={k: v for k, v in dict(query).items() if v != ""}, path_params=path_params,
            url=f"{scope.get('scheme', 'http')}://{host}{scope['path']}", query=query, links_with_query=cfg.links_with_query,
        )
        try:
            return 200, _JSON, orjson.dumps(route.handler(self.world, req))
        except NotFound:
            return 404, _JSON, _MESSAGES[404]
        except Invalid as exc:
            body: dict[str, Any] = {"message": "Validation exception"}
            if cfg.validation_status == 422:
                body["errors"] = exc.errors
            return cfg.validation_status, _JSON, orjson.dumps(body)

    # ---------------------------------------------------------------- admin

    async def _admin(self, scope: dict, receive: Callable) -> tuple[int, str, bytes, dict[str, str]]:
        action = scope["path"].removeprefix("/_sandbox").strip("/")
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            payload = orjson.loads(raw) if raw.strip() else {}
            if not isinstance(payload, dict):
                raise ValueError("the JSON body must be an object")
            handler = self._actions.get(f"{scope['method']} {action}")
            if handler is None:
                body = {"error": f"unknown admin action {scope['method']} /_sandbox/{action}", "routes": ADMIN_ROUTES}
                return 404, _JSON, orjson.dumps(body), {}
            result = handler(payload)
        except (ValueError, KeyError, TypeError, StopIteration, orjson.JSONDecodeError) as exc:
            return 400, _JSON, orjson.dumps({"error": str(exc) or type(exc).__name__}), {}
        return 200, _JSON, orjson.dumps(result), {}

    def _admin_actions(self) -> dict[str, Callable[[dict], Any]]:
        def done(fn: Callable[[], Any]) -> dict[str, bool]:
            fn()
            return {"ok": True}

        day = lambda p, k: date.fromisoformat(p[k]) if p.get(k) else None  # noqa: E731
        return {
            "GET state": lambda p: self.state(),
            "GET counters": lambda p: self.counters(),
            "POST counters/reset": lambda p: done(self.reset_counters),
            "POST limits/reset": lambda p: done(self.reset_limits),
            "GET config": lambda p: self._config.as_dict(),
            "POST config": lambda p: self.configure(**p),
            "POST failing_merchants": lambda p: done(lambda: self.set_failing_merchants(p["mids"])),
            "POST republish": lambda p: [_state_api(s) for s in self.republish(
                int(p["year"]), int(p["month"]), None if p.get("processor_id") is None else int(p["processor_id"]),
                int(p.get("drop_rows", 0)))],
            "POST merchants/add": lambda p: self.add_merchant(**{**p, "opened": day(p, "opened")}).api(),
            "POST merchants/close": lambda p: self.close_merchant(str(p["mid"]), day(p, "on")).api(),
            "POST merchants/modify": lambda p: self.modify_merchant(str(p.pop("mid")), **p).api(),
        }


def _state_api(s: ReportState) -> dict[str, Any]:
    return {"year": s.year, "month": s.month, "processor_id": s.processor_id, "revision": s.revision,
            "created": iso(s.created), "modified": iso(s.modified), "dropped": sorted(s.dropped)}
