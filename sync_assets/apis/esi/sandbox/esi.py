"""Offline stand-in for EVE Online's ESI (https://esi.evetech.net) as a Starlette ASGI app.

Routes (optionally prefixed by ``/latest``, ``/dev``, ``/legacy`` or ``/vN``, optional
trailing slash, ``datasource=`` and other unknown query parameters ignored):

* ``GET /markets/{region_id}/orders?order_type=all&page=N`` (X-Pages, rate-limit group ``market-order``)
* ``GET /markets/prices`` (single response, error-limited only)
* ``GET /status`` (rate-limit group ``status``)

and ESI's authenticated corporation routes for the configured sandbox corporations (data:
:mod:`.corporation`; route table with scopes/roles/cache ages/groups: :data:`CORP_ROUTES`), the
public ``GET /killmails/{killmail_id}/{killmail_hash}`` and ``GET /characters/{character_id}/roles``.
Bearer tokens come from the SSO simulator (:class:`.sso.SsoSandbox`, attribute :attr:`EsiSandbox.sso`)
whose routes (``POST /v2/oauth/token`` ...) are mounted at the root of the same app.  Authorization
order, like ESI: bad/missing token (the SSO's status/body) -> missing scope (403,
``sso_status`` 200) -> not a member of the corporation (403) -> none of the required roles (403).

Snapshot model: one immutable :class:`Snapshot` per (route, region) or (route, corporation,
division/observer/include_completed); its page bodies are
pre-rendered JSON bytes and each page's ETag is the quoted SHA-224 of that page's body.
``Last-Modified`` is the snapshot creation time (identical on all pages), ``Expires`` rolls
forward in steps of the route's cache time.  New data appears only through
:meth:`EsiSandbox.refresh`, :meth:`EsiSandbox.refresh_after_pages` or the ``auto_refresh`` knob.

Test knobs are available as Python methods and as a JSON admin API under ``/_sandbox/``
(see :data:`ADMIN_ROUTES`).  The admin API bypasses latency, error injection, limits and counters.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import orjson
import pandas as pd
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Route

from . import market_data as md
from .corp_activity import LEDGER_FIELDS
from .corp_common import ID_SLOTS, TableView, corp_slot
from .corporation import (
    ALL_CORP_SCOPES,
    CORP_ROUTE_KINDS,
    CORP_ROUTES,
    DEFAULT_CORPORATIONS,
    DIRECTOR_ROLES,
    WALLET_DIVISIONS,
    CorpData,
    CorpWorld,
    build_world,
    character_name,
)

__all__ = [
    "EsiSandbox",
    "Snapshot",
    "SandboxConfig",
    "ROUTES",
    "ROUTE_KINDS",
    "COUNTER_KEYS",
    "DEFAULT_CACHE_SECONDS",
    "RATE_LIMIT_GROUPS",
    "ERROR_420_TEXT",
    "ADMIN_ROUTES",
    "ALL_ROUTES",
    "CORP_ROUTES",
    "CORP_ROUTE_KINDS",
    "CORP_CACHE_SECONDS",
    "ALL_CORP_SCOPES",
    "DIRECTOR_ROLES",
    "DEFAULT_CORPORATIONS",
    "COUNTER_KINDS",
]

#: Market routes (snapshots, refresh, the original knobs).
ROUTES: tuple[str, ...] = ("orders", "prices", "status")
#: Every route kind the sandbox serves: the market routes and the corporation routes.
ALL_ROUTES: tuple[str, ...] = ROUTES + CORP_ROUTE_KINDS
#: Counter buckets always present: the three market routes, ``other`` (unknown paths) and
#: ``total``; a corporation route kind gets its bucket with its first request.
ROUTE_KINDS: tuple[str, ...] = ("orders", "prices", "status", "other")
COUNTER_KINDS: tuple[str, ...] = ROUTE_KINDS + CORP_ROUTE_KINDS
COUNTER_KEYS: tuple[str, ...] = (
    "requests",
    "status_200",
    "status_304",
    "status_4xx",
    "status_5xx",
    "status_420",
    "status_429",
    "body_bytes",
)
DEFAULT_CACHE_SECONDS: dict[str, int] = {"orders": 300, "prices": 3600, "status": 30}
#: x-cache-age of the corporation routes (override per route with the ``cache_seconds`` knob).
CORP_CACHE_SECONDS: dict[str, int] = {k: r.cache_seconds for k, r in CORP_ROUTES.items()}
#: route -> (x-rate-limit group, max tokens per window) as in the spec (compat 2026-08-18).
RATE_LIMIT_GROUPS: dict[str, tuple[str, int]] = {
    "orders": ("market-order", 12000),
    "status": ("status", 600),
    **{k: r.rate_limit for k, r in CORP_ROUTES.items() if r.rate_limit is not None},
}
ERROR_420_TEXT = (
    "This software has exceeded the error limit for ESI. If you are a user, please contact the "
    "maintainer of this software. If you are a developer/maintainer, please make a greater effort "
    "in the future to receive valid responses. For tips on how, come have a chat with us in "
    "#esi on tweetfleet slack. If you're not on tweetfleet slack yet, you can get an invite here "
    "-> https://www.fuzzwork.co.uk/tweetfleet-slack-invites/"
)
ERROR_PAGE_NOT_FOUND = "Undefined 404 response. Original message: Requested page does not exist!"

#: Admin API (JSON in, JSON out).
ADMIN_ROUTES: dict[str, str] = {
    "GET /_sandbox/counters": "counters (see EsiSandbox.counters)",
    "POST /_sandbox/counters/reset": "reset counters and the request log",
    "POST /_sandbox/refresh": (
        '{"route": "orders"|"prices"|"status"|"all"|"corporation"|<corporation route kind>, "region_id": int|null, '
        '"corporation_id": int|null, "division"|"observer_id"|"include_completed"|"character_id": ...|null, "after_pages": int|null}'
    ),
    "POST /_sandbox/refresh_after_pages": '{"n": int, "region_id": int} or {"n": int, "route": <corporation route kind>, "corporation_id": int, ...}',
    "GET /_sandbox/config": "current knobs",
    "POST /_sandbox/config": "set any knob(s) (see SandboxConfig); returns the knobs",
    "GET /_sandbox/state": "current snapshots (route, region, generation, pages, last_modified, ...)",
    "GET /_sandbox/requests": "per-request log (needs request_log=true); ?limit=N",
    "POST /_sandbox/limits/reset": "forget rate-limit buckets and error-limit windows",
    "POST /_sandbox/characters": '{"corporation_id": int, "director": bool, "character_id": int|null, "roles": [..]|null, "scopes": [..]|null} -> {"character_id", "refresh_token"}',
    "GET /_sandbox/killmail_fetches": "{killmail_id: requests of its detail answered 200/304}",
    "GET /_sandbox/corporations": "configured corporations and their sizes",
}

_JSON_CT = "application/json; charset=UTF-8"
_HTML_CT = "text/html"
_PATH_RE = re.compile(
    r"^(?:/(?:latest|dev|legacy|v\d+))?/(?:markets/(?P<region>[^/]+)/orders|(?P<prices>markets/prices)|(?P<status>status))/?$"
)
_PREFIX = r"^(?:/(?:latest|dev|legacy|v\d+))?"
_C = r"/corporations/(?P<corp>[^/]+)"
#: corporation route kind -> path regex (optional version prefix, optional trailing slash)
_CORP_PATH_RES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (kind, re.compile(_PREFIX + pattern + r"/?$"))
    for kind, pattern in (
        ("members", _C + r"/members"),
        ("membertracking", _C + r"/membertracking"),
        ("assets", _C + r"/assets"),
        ("industry_jobs", _C + r"/industry/jobs"),
        ("corp_orders", _C + r"/orders"),
        ("corp_orders_history", _C + r"/orders/history"),
        ("wallet_journal", _C + r"/wallets/(?P<division>[^/]+)/journal"),
        ("wallet_transactions", _C + r"/wallets/(?P<division>[^/]+)/transactions"),
        ("mining_observers", r"/corporation/(?P<corp>[^/]+)/mining/observers"),
        ("mining_ledger", r"/corporation/(?P<corp>[^/]+)/mining/observers/(?P<observer>[^/]+)"),
        ("killmails_recent", _C + r"/killmails/recent"),
        ("killmail", r"/killmails/(?P<killmail_id>[^/]+)/(?P<killmail_hash>[^/]+)"),
        ("container_logs", _C + r"/containers/logs"),
        ("character_roles", r"/characters/(?P<character>[^/]+)/roles"),
        ("character", r"/characters/(?P<character>[^/]+)"),
    )
)
ERROR_NOT_MEMBER = "Character is not in the corporation"
ERROR_NO_ROLE = "Character does not have required role(s)"
ERROR_KILLMAIL = "Invalid killmail_id and/or killmail_hash"


def _match_path(path: str) -> tuple[str, re.Match | None]:
    """(route kind, match) of an ESI path; ("other", None) when no route matches."""
    m = _PATH_RE.match(path)
    if m is not None:
        return ("prices" if m.group("prices") else "status" if m.group("status") else "orders"), m
    for kind, rx in _CORP_PATH_RES:
        m = rx.match(path)
        if m is not None:
            return kind, m
    return "other", None


_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)
_TIMEOUT_BODY = orjson.dumps({"error": "Timeout contacting tranquility", "timeout": 10})
#: (status, content-type, body, count) of injected upstream errors.  Errors are drawn from a
#: shuffled bag of these 10, so every 10 consecutive injected errors hold exactly 3 HTML 502s.
_INJECTED_ERRORS: tuple[tuple[int, str, bytes, int], ...] = (
    (502, _JSON_CT, _TIMEOUT_BODY, 3),
    (503, _JSON_CT, orjson.dumps({"error": "The datasource tranquility is temporarily unavailable"}), 2),
    (504, _JSON_CT, _TIMEOUT_BODY, 2),
    (502, _HTML_CT, _HTML_502, 3),
)
_ERROR_BAG: tuple[tuple[int, str, bytes, int], ...] = tuple(e for e in _INJECTED_ERRORS for _ in range(e[3]))
_EXTRA_HEADERS = {
    "access-control-allow-origin": "*",
    "access-control-expose-headers": (
        "Content-Type,Warning,ETag,X-Pages,X-ESI-Error-Limit-Remain,X-ESI-Error-Limit-Reset,"
        "X-Ratelimit-Group,X-Ratelimit-Limit,X-Ratelimit-Remaining,X-Ratelimit-Used,Retry-After"
    ),
    "strict-transport-security": "max-age=31536000",
}


def _http_date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(int(ts), tz=timezone.utc), usegmt=True)


def _err(message: str, **extra: Any) -> bytes:
    return orjson.dumps({"error": message, **extra})


def _window_label(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


# --------------------------------------------------------------------------------------
# Snapshot
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Immutable snapshot of one (route, region): rendered pages + their validators."""

    route: str
    region_id: int | None
    generation: int
    created_at: int  # epoch seconds (whole); Last-Modified
    pages: tuple[bytes, ...]
    etags: tuple[str, ...]
    data: Any  # OrderBook | PriceTable | dict (status payload) | corporation TableView/IdList | dict (roles)
    build_seconds: float = 0.0
    _filtered: dict = field(default_factory=dict, compare=False, repr=False)
    corporation_id: int | None = None  # corporation routes
    param: Any = None  # division | observer_id | include_completed | character_id (roles)

    @property
    def page_count(self) -> int:
        return len(self.pages)

    @property
    def last_modified(self) -> datetime:
        return datetime.fromtimestamp(self.created_at, tz=timezone.utc)

    @property
    def last_modified_http(self) -> str:
        return _http_date(self.created_at)

    @property
    def total_bytes(self) -> int:
        return sum(len(p) for p in self.pages)

    def expires_at(self, now: float, cache_seconds: int) -> int:
        """End of the current cache window: created + k*cache for the smallest k >= 1 in the future."""
        cache = max(int(cache_seconds), 1)
        k = max(1, int((now - self.created_at) // cache) + 1)
        return self.created_at + k * cache

    @property
    def key(self) -> tuple:
        if self.route in CORP_ROUTES:
            return (self.route, self.corporation_id, self.param)
        return (self.route, self.region_id)

    def summary(self) -> dict:
        if self.route == "character_roles":
            rows = len(self.data.get("roles", ()))
        else:
            rows = len(self.data) if hasattr(self.data, "__len__") and self.route != "status" else 1
        out = {
            "route": self.route,
            "region_id": self.region_id,
            "generation": self.generation,
            "pages": self.page_count,
            "rows": rows,
            "bytes": self.total_bytes,
            "created_at": self.created_at,
            "last_modified": self.last_modified_http,
            "build_seconds": round(self.build_seconds, 4),
        }
        if self.route in CORP_ROUTES:
            out["corporation_id"] = self.corporation_id
            out["param"] = self.param
        return out


# --------------------------------------------------------------------------------------
# Knobs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxConfig:
    """Runtime knobs (replace atomically via :meth:`EsiSandbox.configure`)."""

    latency: float = 0.0  # seconds per ESI request (asyncio.sleep; concurrent requests overlap)
    error_rate: float = 0.0  # share of ESI requests answered with an injected 502/503/504
    error_seed: int = 0  # seed of the error-injection RNG (setting it re-seeds)
    error_routes: tuple[str, ...] = ALL_ROUTES  # routes subject to error injection
    # market routes always listed; corporation routes only once overridden (else CORP_CACHE_SECONDS)
    cache_seconds: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_CACHE_SECONDS))
    error_limit: int = 100  # errors per window and client IP before 420
    error_limit_window: int = 60  # fixed window, seconds
    error_limit_enabled: bool = True
    error_limit_headers_everywhere: bool = True  # also send X-ESI-Error-Limit-* on rate-limited routes
    rate_limit_tokens: Mapping[str, int] = field(
        default_factory=lambda: {g: n for g, n in RATE_LIMIT_GROUPS.values()}
    )  # group -> max tokens per window
    rate_limit_window: int = 900  # sliding window, seconds (15m)
    rate_limit_enabled: bool = True
    auto_refresh: bool = False  # regenerate a snapshot once its first cache window has passed
    request_log: bool = False  # keep a per-request log (bounded)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["error_routes"] = list(self.error_routes)
        d["cache_seconds"] = dict(self.cache_seconds)
        d["rate_limit_tokens"] = dict(self.rate_limit_tokens)
        return d


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(SandboxConfig)}


def _coerce_config(base: SandboxConfig, knobs: Mapping[str, Any]) -> SandboxConfig:
    unknown = set(knobs) - _CONFIG_FIELDS
    if unknown:
        raise ValueError(f"unknown knob(s): {sorted(unknown)}; known: {sorted(_CONFIG_FIELDS)}")
    upd: dict[str, Any] = {}
    for k, v in knobs.items():
        if k == "latency":
            v = float(v)
            if v < 0:
                raise ValueError("latency must be >= 0")
        elif k == "error_rate":
            v = float(v)
            if not 0.0 <= v <= 1.0:
                raise ValueError("error_rate must be in [0, 1]")
        elif k in ("error_seed",):
            v = int(v)
        elif k in ("error_limit", "error_limit_window", "rate_limit_window"):
            v = int(v)
            if v < (0 if k == "error_limit" else 1):
                raise ValueError(f"{k} out of range")
        elif k == "error_routes":
            v = tuple(ALL_ROUTES if v is None else ([v] if isinstance(v, str) else v))
            bad = set(v) - set(ALL_ROUTES)
            if bad:
                raise ValueError(f"unknown route(s) in error_routes: {sorted(bad)}")
        elif k == "cache_seconds":
            if isinstance(v, (int, float)):
                v = {r: int(v) for r in ALL_ROUTES}
            bad = set(v) - set(ALL_ROUTES)
            if bad:
                raise ValueError(f"unknown route(s) in cache_seconds: {sorted(bad)}")
            if any(int(x) < 1 for x in v.values()):
                raise ValueError("cache_seconds must be >= 1")
            v = {**base.cache_seconds, **{r: int(x) for r, x in v.items()}}
        elif k == "rate_limit_tokens":
            groups = sorted({g for g, _ in RATE_LIMIT_GROUPS.values()})
            if isinstance(v, (int, float)):
                v = {g: int(v) for g in groups}
            else:
                # accept group names ("market-order") or route names ("orders")
                v = {RATE_LIMIT_GROUPS[g][0] if g in RATE_LIMIT_GROUPS else g: int(x) for g, x in v.items()}
                bad = set(v) - set(groups)
                if bad:
                    raise ValueError(f"unknown rate-limit group(s): {sorted(bad)}")
            if any(x < 1 for x in v.values()):
                raise ValueError("rate_limit_tokens must be >= 1")
            v = {**base.rate_limit_tokens, **v}
        elif k in (
            "error_limit_enabled",
            "error_limit_headers_everywhere",
            "rate_limit_enabled",
            "auto_refresh",
            "request_log",
        ):
            v = bool(v)
        upd[k] = v
    return dataclasses.replace(base, **upd)


# --------------------------------------------------------------------------------------
# Limiters and counters (all guarded by the sandbox lock)
# --------------------------------------------------------------------------------------


class _Bucket:
    """Sliding-window token bucket of one (group, client)."""

    __slots__ = ("events", "used")

    def __init__(self) -> None:
        self.events: collections.deque[tuple[float, int]] = collections.deque()
        self.used = 0

    def prune(self, now: float, window: int) -> None:
        ev = self.events
        while ev and ev[0][0] <= now - window:
            self.used -= ev.popleft()[1]

    def retry_after(self, now: float, window: int, max_tokens: int, need: int) -> int:
        free = max_tokens - self.used
        for ts, tok in self.events:
            if free >= need:
                break
            free += tok
            wait = ts + window - now
            if free >= need:
                return max(1, math.ceil(wait))
        return 1


def _new_counter() -> dict[str, int]:
    return {k: 0 for k in COUNTER_KEYS}


# --------------------------------------------------------------------------------------
# The sandbox
# --------------------------------------------------------------------------------------


class EsiSandbox:
    """In-process ESI simulator: data, snapshots, knobs, counters and the ASGI app (:attr:`app`).

    Args:
        regions: ``{region_id: pages}`` (default :data:`market_data.DEFAULT_REGION_PAGES`), or an
            iterable of region ids (each gets 1 page).
        orders_per_page: orders per page (ESI: 1000).
        n_price_types: rows of ``/markets/prices``.
        seed: data seed; the same config and seed give the same bytes (generation by generation).
        data_epoch: "game time" of generation 0 (issued dates derive from it, not from the clock).
        eager: build all market snapshots now (else on first use).
        clock: time source (epoch seconds) for Last-Modified/Expires/limits; default ``time.time``.
        corporations: ``{corporation_id: size}`` with size ``"small"|"default"|"large"``, a
            :class:`~.corp_profile.CorpSize` or a dict of :class:`CorpSize` fields (optionally with
            ``"base": "small"``); an iterable of ids means ``"default"`` each.  Default:
            :data:`DEFAULT_CORPORATIONS` (98000001 and 98000002, both ``"default"``).  ``{}``: none.
        sso: the :class:`~.sso.SsoSandbox` whose tokens the corporation routes accept and whose
            routes are mounted at the app root; default a new one (created on first use) sharing
            ``clock``.
        corp_page_size: rows per page of the corporation routes (``{route kind: n}`` or one int
            for all paged routes); default ESI's (1000, journal 2500, transactions 2500 per response).
        eager_corporations: build every corporation snapshot now (else on first use, in ~0.5 s
            per "default" corporation).
        **knobs: initial :class:`SandboxConfig` values (latency, error_rate, cache_seconds, ...).
    """

    def __init__(
        self,
        regions: Mapping[int, int] | Iterable[int] | None = None,
        *,
        orders_per_page: int = 1000,
        n_price_types: int = 15_000,
        seed: int = 0,
        data_epoch: datetime | int = md.DEFAULT_DATA_EPOCH,
        eager: bool = True,
        clock: Callable[[], float] = time.time,
        corporations: Mapping[int, Any] | Iterable[int] | None = None,
        sso: Any = None,
        corp_page_size: int | Mapping[str, int] | None = None,
        eager_corporations: bool = False,
        **knobs: Any,
    ) -> None:
        if regions is None:
            regions = md.DEFAULT_REGION_PAGES
        if not isinstance(regions, Mapping):
            regions = {int(r): 1 for r in regions}
        if orders_per_page < 1:
            raise ValueError("orders_per_page must be >= 1")
        self.region_pages: dict[int, int] = {int(r): max(int(p), 1) for r, p in regions.items()}
        self.orders_per_page = int(orders_per_page)
        self.n_price_types = int(n_price_types)
        self.seed = int(seed)
        self.data_epoch = data_epoch
        self.clock = clock

        self._lock = threading.RLock()
        self._config = _coerce_config(SandboxConfig(), knobs)
        self._error_rng = random.Random(self._config.error_seed)
        self._error_bag: list = []

        self.universe = md.Universe.build(self.seed, self.n_price_types)
        self._region_info = {r: md.region_info(r, self.seed) for r in self.region_pages}
        self._target = {
            r: md.initial_order_count(r, p, self.orders_per_page, self.seed) for r, p in self.region_pages.items()
        }

        self._snapshots: dict[tuple, Snapshot] = {}
        self._build_locks: dict[tuple, threading.Lock] = {k: threading.Lock() for k in self._keys()}
        self._due: set[tuple] = set()
        self._countdown: dict[tuple, int] = {}

        # corporations
        if corporations is None:
            corporations = DEFAULT_CORPORATIONS
        if not isinstance(corporations, Mapping):
            corporations = {int(c): "default" for c in corporations}
        slots: dict[int, int] = {}
        for c in corporations:
            other = slots.setdefault(corp_slot(int(c)), int(c))
            if other != int(c):  # ids (items, journal, orders, killmails ...) embed corporation_id % 97
                raise ValueError(f"corporations {other} and {c} are equal modulo {ID_SLOTS}: their ids would collide; pick another id")
        self._worlds: dict[int, CorpWorld] = {
            int(c): build_world(int(c), size, seed=self.seed, data_epoch=self.data_epoch, universe=self.universe)
            for c, size in corporations.items()
        }
        page_sizes = {k: r.page_size for k, r in CORP_ROUTES.items()}
        if isinstance(corp_page_size, (int, float)):
            page_sizes.update({k: int(corp_page_size) for k, r in CORP_ROUTES.items() if r.paged or k == "wallet_transactions"})
        elif corp_page_size:
            bad = set(corp_page_size) - set(CORP_ROUTES)
            if bad:
                raise ValueError(f"unknown route(s) in corp_page_size: {sorted(bad)}")
            page_sizes.update({k: int(v) for k, v in corp_page_size.items()})
        if any(v < 1 for k, v in page_sizes.items() if CORP_ROUTES[k].paged):
            raise ValueError("corp_page_size must be >= 1")
        self.corp_page_size: dict[str, int] = page_sizes
        self._sso = sso
        self._registered: dict[int, int] = {}  # characters added through this sandbox -> corporation at registration
        self._outsider_seq = 0
        self._killmail_index: dict[int, tuple[int, int, str, bool]] = {}  # id -> (corp, time, hash, corp is victim)
        self._killmail_bodies: dict[int, tuple[bytes, str, int]] = {}  # id -> (body, etag, created_at)
        self._killmail_fetches: collections.Counter = collections.Counter()

        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._err_windows: dict[str, tuple[int, int]] = {}  # ip -> (window id, errors)
        self._counters: dict[str, dict[str, int]] = {}
        self._log: collections.deque[dict] = collections.deque(maxlen=200_000)
        self.reset_counters()

        self.app = self._build_app()
        if eager:
            for key in self._keys():
                self._ensure_current(key)
        if eager_corporations:
            for key in self._corp_default_keys():
                self._ensure_current(key)

    # ------------------------------------------------------------------ keys & snapshots

    @property
    def regions(self) -> list[int]:
        return list(self.region_pages)

    def _keys(self) -> list[tuple[str, int | None]]:
        return [("orders", r) for r in self.region_pages] + [("prices", None), ("status", None)]

    def _key(self, route: str, region_id: int | None) -> tuple[str, int | None]:
        if route == "orders":
            if region_id is None:
                raise ValueError("region_id is required for route 'orders'")
            region_id = int(region_id)
            if region_id not in self.region_pages:
                raise KeyError(f"unknown region {region_id}; configured: {self.regions}")
            return ("orders", region_id)
        if route in ("prices", "status"):
            return (route, None)
        raise ValueError(f"unknown route {route!r}; expected one of {ROUTES}")

    def _build(self, key: tuple, prev: Snapshot | None) -> Snapshot:
        if key[0] in CORP_ROUTES:
            return self._build_corp(key, prev)
        t0 = time.perf_counter()
        route, region_id = key
        if route == "orders":
            info = self._region_info[region_id]
            if prev is None:
                data = md.generate_orders(
                    self.universe, info, self._target[region_id], seed=self.seed, data_epoch=self.data_epoch
                )
            else:
                data = md.evolve_orders(prev.data, self.universe, info, seed=self.seed, data_epoch=self.data_epoch)
            pages = md.render_order_pages(data, self.orders_per_page)
            generation = data.generation
        elif route == "prices":
            data = md.generate_prices(self.universe, seed=self.seed) if prev is None else md.evolve_prices(
                prev.data, seed=self.seed
            )
            pages = [md.render_prices(data)]
            generation = data.generation
        else:
            generation = 0 if prev is None else prev.generation + 1
            data = md.status_payload(generation, seed=self.seed, data_epoch=self.data_epoch)
            pages = [orjson.dumps(data)]
        etags = tuple(md.etag_of(p) for p in pages)
        created = int(self.clock())
        if prev is not None:
            created = max(created, prev.created_at + 1)  # Last-Modified must change on refresh
        return Snapshot(route, region_id, generation, created, tuple(pages), etags, data, time.perf_counter() - t0)

    def _cache_seconds(self, kind: str) -> int:
        cs = self._config.cache_seconds
        return int(cs[kind]) if kind in cs else CORP_CACHE_SECONDS[kind]

    def _lock_for(self, key: tuple) -> threading.Lock:
        lock = self._build_locks.get(key)
        if lock is None:
            with self._lock:
                lock = self._build_locks.setdefault(key, threading.Lock())
        return lock

    def _needs_build(self, key: tuple, snap: Snapshot | None, now: float) -> bool:
        if snap is None or key in self._due:
            return True
        return self._config.auto_refresh and now >= snap.created_at + self._cache_seconds(key[0])

    def _ensure_current(self, key: tuple, force: bool = False) -> Snapshot:
        """Return the current snapshot, building/refreshing it first if missing, due or forced."""
        with self._lock_for(key):
            snap = self._snapshots.get(key)
            if force or self._needs_build(key, snap, self.clock()):
                new = self._build(key, snap)
                with self._lock:
                    self._snapshots[key] = new
                    self._due.discard(key)
                snap = new
            return snap

    async def _current(self, key: tuple, now: float) -> Snapshot:
        snap = self._snapshots.get(key)
        if self._needs_build(key, snap, now):
            snap = await asyncio.to_thread(self._ensure_current, key)
        return snap

    def _page_served(self, key: tuple) -> None:
        """Count a served page of ``key`` for refresh_after_pages; start the refresh when due."""
        with self._lock:
            left = self._countdown.get(key)
            if left is None:
                return
            left -= 1
            if left > 0:
                self._countdown[key] = left
                return
            del self._countdown[key]
            self._due.add(key)
        try:  # start building right away so the next request waits as little as possible
            asyncio.get_running_loop().run_in_executor(None, self._ensure_current, key)
        except RuntimeError:
            pass

    # ------------------------------------------------------------------ corporations: keys & snapshots

    def _world(self, corporation_id: int | None) -> CorpWorld:
        if corporation_id is None:
            raise ValueError("corporation_id is required for corporation routes")
        try:
            return self._worlds[int(corporation_id)]
        except KeyError:
            raise KeyError(f"unknown corporation {corporation_id}; configured: {self.corporations}") from None

    def _corp_key(self, route: str, corporation_id: int | None = None, **params: Any) -> tuple:
        """Snapshot key ``(route, corporation_id, param)`` of a corporation route, validated."""
        unknown = set(params) - {"division", "observer_id", "include_completed", "character_id"}
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} for route {route!r}")
        if route == "character_roles":
            cid = params.get("character_id")
            if cid is None:
                raise ValueError("character_id is required for route 'character_roles'")
            return ("character_roles", None, int(cid))
        if route == "killmail":
            raise ValueError("killmail details are immutable: use EsiSandbox.killmail(killmail_id)")
        world = self._world(corporation_id)
        cid = world.corporation_id
        if route == "industry_jobs":
            return (route, cid, bool(params.get("include_completed", False)))
        if route in ("wallet_journal", "wallet_transactions"):
            d = params.get("division")
            if d is None or int(d) not in WALLET_DIVISIONS:
                raise ValueError(f"route {route!r} needs division=1..7 (got {d!r})")
            return (route, cid, int(d))
        if route == "mining_ledger":
            o = params.get("observer_id")
            if o is None:
                raise ValueError("route 'mining_ledger' needs observer_id")
            return (route, cid, int(o))
        if route not in CORP_ROUTES:
            raise ValueError(f"unknown route {route!r}; expected one of {ALL_ROUTES}")
        return (route, cid, None)

    def _corp_keys_for(self, route: str, corporation_id: int | None, **params: Any) -> list[tuple]:
        """Keys of ``route`` for one/all corporations, expanding unspecified parameters."""
        if route == "character_roles":
            if params.get("character_id") is not None:
                return [self._corp_key(route, **params)]
            with self._lock:
                return [k for k in self._snapshots if k[0] == "character_roles"]
        corps = [self._world(corporation_id).corporation_id] if corporation_id is not None else list(self._worlds)
        keys = []
        for c in corps:
            if route == "industry_jobs" and params.get("include_completed") is None:
                keys += [(route, c, False), (route, c, True)]
            elif route in ("wallet_journal", "wallet_transactions") and params.get("division") is None:
                keys += [(route, c, d) for d in WALLET_DIVISIONS]
            elif route == "mining_ledger" and params.get("observer_id") is None:
                keys += [(route, c, o) for o in self._worlds[c].observer_ids()]
            else:
                keys.append(self._corp_key(route, c, **{k: v for k, v in params.items() if v is not None}))
        return keys

    def _corp_default_keys(self) -> list[tuple]:
        keys: list[tuple] = []
        for kind in CORP_ROUTE_KINDS:
            if kind not in ("killmail", "character_roles"):
                keys += self._corp_keys_for(kind, None)
        return keys

    def _member_overrides(self, corporation_id: int) -> tuple[list[int], list[int]]:
        """Characters registered through this sandbox: members of ``corporation_id`` now (extra)
        and those who left it for another corporation (drop)."""
        extra, drop = [], []
        with self._lock:
            registered = list(self._registered)
        for cid in registered:
            try:
                corp_now = self.sso.character(cid).corporation_id
            except KeyError:
                continue
            (extra if corp_now == corporation_id else drop).append(cid)
        return extra, drop

    def _build_corp(self, key: tuple, prev: Snapshot | None) -> Snapshot:
        t0 = time.perf_counter()
        kind, corp_id, param = key
        route = CORP_ROUTES[kind]
        if kind == "character_roles":
            roles = list(dict.fromkeys(self.sso.character(param).roles))
            data = {
                "roles": roles,
                "roles_at_base": [],
                "roles_at_hq": [r for r in roles if r.startswith(("Hangar_", "Container_"))],
                "roles_at_other": [],
            }
            pages = [orjson.dumps(data)]
            generation = 0 if prev is None else prev.generation + 1
        else:
            world = self._worlds[corp_id]
            state = world.state(route.family) if prev is None else world.advance(route.family, prev.generation)
            extra, drop = self._member_overrides(corp_id) if kind in ("members", "membertracking") else ([], [])
            data = world.view(kind, param, state, extra_members=extra, drop_members=drop)
            if kind == "wallet_transactions":
                pages = [data.body(None, self.corp_page_size[kind])]
            elif route.paged:
                pages = data.render_pages(self.corp_page_size[kind])
            else:
                pages = data.render_pages(max(len(data), 1))
            generation = state.generation
            if kind == "killmails_recent":
                self._register_killmails(world, state)
        etags = tuple(md.etag_of(p) for p in pages)
        created = int(self.clock())
        if prev is not None:
            created = max(created, prev.created_at + 1)
        return Snapshot(kind, None, generation, created, tuple(pages), etags, data, time.perf_counter() - t0,
                        corporation_id=corp_id, param=param)

    def _register_killmails(self, world: CorpWorld, state: Any) -> None:
        c = state.cols
        cid = world.corporation_id
        with self._lock:
            index = self._killmail_index
            for kid, t, h, v in zip(c["killmail_id"].tolist(), c["killmail_time"].tolist(), c["killmail_hash"].tolist(), c["corp_is_victim"].tolist()):
                if kid not in index:
                    index[kid] = (cid, t, h, bool(v))

    def _killmail_entry(self, killmail_id: int) -> tuple[int, int, str, bool] | None:
        entry = self._killmail_index.get(int(killmail_id))
        if entry is None:
            for c in self._worlds:  # lists not built yet: build them (details need their ids)
                if ("killmails_recent", c, None) not in self._snapshots:
                    self._ensure_current(("killmails_recent", c, None))
            entry = self._killmail_index.get(int(killmail_id))
        return entry

    def _killmail_body(self, killmail_id: int) -> tuple[bytes, str, int] | None:
        hit = self._killmail_bodies.get(killmail_id)
        if hit is None:
            entry = self._killmail_entry(killmail_id)
            if entry is None:
                return None
            corp_id, t, _, victim = entry
            body = orjson.dumps(self._worlds[corp_id].killmail_detail(killmail_id, t, victim))
            hit = (body, md.etag_of(body), int(self.clock()))
            with self._lock:
                hit = self._killmail_bodies.setdefault(killmail_id, hit)
        return hit

    # ------------------------------------------------------------------ public Python API

    @property
    def config(self) -> SandboxConfig:
        return self._config

    def configure(self, **knobs: Any) -> dict:
        """Set knobs (see :class:`SandboxConfig`); returns all knobs as a dict."""
        with self._lock:
            self._config = _coerce_config(self._config, knobs)
            if "error_seed" in knobs:
                self._error_rng = random.Random(self._config.error_seed)
                self._error_bag = []
            return self._config.as_dict()

    def refresh(
        self,
        route: str = "orders",
        region_id: int | None = None,
        *,
        corporation_id: int | None = None,
        division: int | None = None,
        observer_id: int | None = None,
        include_completed: bool | None = None,
        character_id: int | None = None,
    ) -> list[dict]:
        """New generation now (Last-Modified = now) for ``route``.  Returns snapshot summaries.

        * market: ``orders`` (one region, or all when ``region_id`` is None), ``prices``, ``status``;
        * a corporation route kind (:data:`CORP_ROUTE_KINDS`): its snapshot(s) of ``corporation_id``
          (all corporations when None); unspecified ``division`` / ``observer_id`` /
          ``include_completed`` mean all of them.  The route's data *family* advances one
          generation (new journal entries and transactions, job status changes, filled orders
          moving to the history, assets moving/vanishing/appearing, ...); the other routes of the
          family (e.g. ``corp_orders_history`` after ``corp_orders``) catch up to it when they are
          refreshed themselves.  ``character_roles`` re-reads the roles from the SSO;
          ``killmail`` details are immutable;
        * ``corporation``: every corporation snapshot built so far (of ``corporation_id`` or all);
        * ``all``: every market snapshot and every corporation snapshot built so far.
        """
        if route == "all":
            with self._lock:
                corp_keys = [k for k in self._snapshots if k[0] in CORP_ROUTES]
            keys = self._keys() + corp_keys
        elif route == "corporation":
            cid = None if corporation_id is None else self._world(corporation_id).corporation_id
            with self._lock:
                keys = [k for k in self._snapshots if k[0] in CORP_ROUTES and k[0] != "character_roles" and (cid is None or k[1] == cid)]
        elif route in CORP_ROUTES:
            keys = self._corp_keys_for(
                route, corporation_id, division=division, observer_id=observer_id,
                include_completed=include_completed, character_id=character_id,
            )
            for k in keys:
                self._ensure_current(k)  # a never-served snapshot is built first, then refreshed
        elif route == "orders" and region_id is None:
            keys = [("orders", r) for r in self.region_pages]
        else:
            keys = [self._key(route, region_id)]
        return [self._ensure_current(k, force=True).summary() for k in keys]

    def refresh_after_pages(self, n: int, region_id: int | None = None, route: str = "orders", **corp: Any) -> None:
        """One-shot: the snapshot of ``region_id`` refreshes after ``n`` more page requests of it
        (the n-th is still served from the old snapshot, the (n+1)-th from the new one).
        ``n = 0`` refreshes before the next request.  Corporation routes: pass ``route`` and
        ``corporation_id=`` (plus ``division=`` / ``observer_id=`` / ``include_completed=``)."""
        key = self._corp_key(route, **corp) if route in CORP_ROUTES else self._key(route, region_id)
        n = int(n)
        if n < 0:
            raise ValueError("n must be >= 0")
        if route in CORP_ROUTES:
            self._ensure_current(key)
        with self._lock:
            if n == 0:
                self._countdown.pop(key, None)
                self._due.add(key)
            else:
                self._countdown[key] = n

    def snapshot(self, route: str = "orders", region_id: int | None = None, **corp: Any) -> Snapshot:
        """The current :class:`Snapshot` (pages, etags, generation, created_at, data).  Corporation
        routes: ``snapshot("assets", corporation_id=98000001)``, ``snapshot("wallet_journal",
        corporation_id=..., division=1)``, ``snapshot("character_roles", character_id=...)``."""
        if route in CORP_ROUTES:
            return self._ensure_current(self._corp_key(route, **corp))
        return self._ensure_current(self._key(route, region_id))

    def orders_snapshot(self, region_id: int) -> pd.DataFrame:
        """All orders of the region's current snapshot, in page order, spec columns and dtypes."""
        return self.snapshot("orders", region_id).data.to_frame()

    def prices_snapshot(self) -> pd.DataFrame:
        """Current /markets/prices rows; ``average_price`` is NaN where the API omits it."""
        return self.snapshot("prices").data.to_frame()

    def status_snapshot(self) -> dict:
        return dict(self.snapshot("status").data)

    def current_last_modified(self, route: str = "orders", region_id: int | None = None) -> datetime:
        """Last-Modified of the current snapshot (aware UTC datetime, whole seconds)."""
        return self.snapshot(route, region_id).last_modified

    def page_count(self, region_id: int) -> int:
        """X-Pages of the region's current orders snapshot."""
        return self.snapshot("orders", region_id).page_count

    def state(self) -> list[dict]:
        with self._lock:
            snaps = list(self._snapshots.values())
            due = set(self._due)
            countdown = dict(self._countdown)
        out = []
        for s in snaps:
            d = s.summary()
            d["refresh_due"] = s.key in due
            d["refresh_after_pages"] = countdown.get(s.key)
            out.append(d)
        return out

    # ------------------------------------------------------------------ corporations: public API

    @property
    def corporations(self) -> list[int]:
        """Configured corporation ids (the partitions of the corporation datasets)."""
        return list(self._worlds)

    def corp_profile(self, corporation_id: int) -> Any:
        """The :class:`~.corp_profile.CorpProfile` (size, home region, offices, structures, roster ...)."""
        return self._world(corporation_id).profile

    @property
    def sso(self) -> Any:
        """The SSO simulator (:class:`~.sso.SsoSandbox`) whose access tokens the ESI routes accept."""
        if self._sso is None:
            with self._lock:
                if self._sso is None:
                    from .sso import SsoSandbox

                    self._sso = SsoSandbox(clock=self.clock)
        return self._sso

    def add_character(
        self,
        corporation_id: int,
        *,
        character_id: int | None = None,
        name: str | None = None,
        scopes: Iterable[str] = ALL_CORP_SCOPES,
        roles: Iterable[str] = (),
    ) -> tuple[int, str]:
        """Register a character (in the SSO) who authorized the app; returns ``(character_id,
        refresh_token)``.  Without ``character_id`` a member of the sandbox corporation is picked
        (founding members first, never the same one twice), so it appears in ``/members``.  The
        character's corporation, roles and grants live in the SSO: ``sandbox.sso.set_roles(...)``,
        ``sandbox.sso.set_corporation(...)``, ``sandbox.sso.revoke(...)``."""
        corporation_id = int(corporation_id)
        with self._lock:
            if character_id is None:
                character_id = self._next_member(corporation_id)
            character_id = int(character_id)
            self._registered[character_id] = corporation_id
        token = self.sso.add_character(
            character_id, name or character_name(character_id), corporation_id, tuple(scopes), tuple(roles)
        )
        return character_id, token

    def add_director(
        self,
        corporation_id: int,
        scopes: Iterable[str] = ALL_CORP_SCOPES,
        roles: Iterable[str] = DIRECTOR_ROLES,
        *,
        character_id: int | None = None,
        name: str | None = None,
    ) -> tuple[int, str]:
        """A member with every corporation scope and :data:`DIRECTOR_ROLES` (Director, Accountant,
        Factory_Manager, Trader: enough for every corporation route); ``(character_id, refresh_token)``."""
        return self.add_character(corporation_id, character_id=character_id, name=name, scopes=scopes, roles=roles)

    def _next_member(self, corporation_id: int) -> int:
        world = self._worlds.get(corporation_id)
        if world is not None:
            taken = set(self._registered)
            for cid in world.profile.roster.tolist():
                if cid not in taken:
                    return int(cid)
        while True:  # an outsider (corporation not configured, or roster exhausted)
            self._outsider_seq += 1
            cid = 2_129_000_000 + (corporation_id % 1000) * 1000 + self._outsider_seq
            if cid not in self._registered:
                return cid

    def corp_snapshot(self, route: str, corporation_id: int | None = None, **params: Any) -> Any:
        """The rows ``route`` currently serves, as a DataFrame (spec columns in spec order;
        date-times tz-aware UTC, ``date`` fields ``datetime.date``, absent optional ints <NA>,
        absent floats NaN, absent strings None).  ``params``: ``division`` (wallet routes),
        ``observer_id`` (``mining_ledger``), ``include_completed`` (``industry_jobs``, default
        False like ESI), ``from_id`` (``wallet_transactions``: just that response; default every
        row, newest first).  ``members``: one column ``character_id``.  ``character_roles``
        (``character_id=``): the response dict."""
        from_id = params.pop("from_id", None)
        snap = self.snapshot(route, corporation_id=corporation_id, **params)
        if route == "character_roles":
            return dict(snap.data)
        if route == "wallet_transactions" and from_id is not None:
            return snap.data.from_id(int(from_id), self.corp_page_size[route]).to_frame()
        return snap.data.to_frame()

    def _empty_frame(self, route: str) -> pd.DataFrame:
        fields = {"mining_ledger": LEDGER_FIELDS}[route]
        return TableView(fields, {f.name: np.zeros(0, dtype=np.int64) for f in fields}).to_frame()

    def corp_data(self, corporation_id: int) -> CorpData:
        """Convenience view: ``sandbox.corp_data(98000001).assets`` / ``.journal`` / ``.orders_history``
        / ``.killmails`` ... (see :class:`~.corporation.CorpData`)."""
        return CorpData(self, self._world(corporation_id).corporation_id)

    def killmail(self, killmail_id: int) -> dict:
        """The detail body of a killmail (any sandbox corporation); KeyError if unknown."""
        hit = self._killmail_body(int(killmail_id))
        if hit is None:
            raise KeyError(f"unknown killmail {killmail_id}")
        return orjson.loads(hit[0])

    def killmail_hash(self, killmail_id: int) -> str:
        entry = self._killmail_entry(int(killmail_id))
        if entry is None:
            raise KeyError(f"unknown killmail {killmail_id}")
        return entry[2]

    def killmail_fetch_counts(self) -> dict[int, int]:
        """``{killmail_id: requests of its detail answered 200 or 304}`` (reset by reset_counters)."""
        with self._lock:
            return dict(self._killmail_fetches)

    def counters(self) -> dict[str, dict[str, int]]:
        """``{"total"|"orders"|"prices"|"status"|"other"|<corporation route kind>: {requests,
        status_200, status_304, status_4xx, status_5xx, status_420, status_429, body_bytes}}``
        (status_4xx includes 420/429).  Corporation route kinds appear once requested."""
        with self._lock:
            return {k: dict(v) for k, v in self._counters.items()}

    def reset_counters(self) -> None:
        with self._lock:
            self._counters = {k: _new_counter() for k in ("total", *ROUTE_KINDS)}
            self._log.clear()
            if hasattr(self, "_killmail_fetches"):
                self._killmail_fetches.clear()

    def _corporations_info(self) -> dict[int, dict]:
        return {c: {"size": w.profile.size.as_dict(), "home_region": w.profile.region.region_id} for c, w in self._worlds.items()}

    def counter(self, kind: str) -> dict[str, int]:
        """Counters of one route kind (zeros if it has not been requested yet)."""
        if kind not in ("total", *COUNTER_KINDS):
            raise ValueError(f"unknown route kind {kind!r}; expected one of {('total', *COUNTER_KINDS)}")
        with self._lock:
            return dict(self._counters.get(kind) or _new_counter())

    def request_log(self) -> list[dict]:
        with self._lock:
            return list(self._log)

    def reset_limits(self) -> None:
        with self._lock:
            self._buckets.clear()
            self._err_windows.clear()

    # ------------------------------------------------------------------ limiters

    def _error_window(self, ip: str, now: float) -> tuple[int, int, int]:
        """(window id, errors so far, seconds to reset) for ip; caller holds the lock."""
        w = self._config.error_limit_window
        wid = int(now // w)
        cur = self._err_windows.get(ip)
        errors = cur[1] if cur and cur[0] == wid else 0
        reset = max(1, math.ceil((wid + 1) * w - now))
        return wid, errors, reset

    # ------------------------------------------------------------------ HTTP

    def _build_app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/_sandbox/{action:path}", self._admin, methods=["GET", "POST"]),
                _SsoRoutes(self),  # the SSO's routes (built with the SSO, on first use)
                Route("/{path:path}", self._esi, methods=["GET"]),
            ]
        )

    async def __call__(self, scope, receive, send) -> None:  # the sandbox itself is an ASGI app
        await self.app(scope, receive, send)

    async def _esi(self, request: Request) -> Response:
        cfg = self._config
        path = request.url.path
        kind, m = _match_path(path)
        if cfg.latency > 0:
            await asyncio.sleep(cfg.latency)
        now = self.clock()
        ip = request.client.host if request.client else "unknown"
        headers: dict[str, str] = {}
        meta: dict[str, Any] = {}

        # 1) error limit exhausted -> 420 on every route
        limited = False
        if cfg.error_limit_enabled:
            with self._lock:
                _, errors, _ = self._error_window(ip, now)
            limited = errors >= cfg.error_limit
        if limited:
            status, ctype, body = 420, _JSON_CT, _err(ERROR_420_TEXT)
        else:
            injected = None
            if cfg.error_rate > 0 and kind in cfg.error_routes:
                with self._lock:
                    if self._error_rng.random() < cfg.error_rate:
                        if not self._error_bag:
                            self._error_bag = list(_ERROR_BAG)
                            self._error_rng.shuffle(self._error_bag)
                        injected = self._error_bag.pop()
            if injected is not None:
                status, ctype, body = injected[0], injected[1], injected[2]
                meta["injected"] = True
            elif kind == "other":
                status, ctype, body = 404, _JSON_CT, _err("Not found")
            elif kind == "character":
                status, ctype, body = self._character_route(m, request, now, headers)
            elif kind in CORP_ROUTES:
                status, ctype, body = await self._corp_route(kind, m, request, now, headers, meta)
            else:
                status, ctype, body = await self._route(kind, m, request, now, headers, meta)

        # 2) bucket rate limit (routes with an x-rate-limit group)
        group = RATE_LIMIT_GROUPS.get(kind)
        with self._lock:
            if group is not None and cfg.rate_limit_enabled:
                gname = group[0]
                max_tokens = cfg.rate_limit_tokens.get(gname, group[1])
                window = cfg.rate_limit_window
                principal = meta.get("principal", ip)  # authed routes: per (app, character), like ESI
                bucket = self._buckets.get((gname, principal))
                if bucket is None:
                    bucket = self._buckets[(gname, principal)] = _Bucket()
                bucket.prune(now, window)
                cost = 0 if status == 420 else 2 if status < 300 else 1 if status < 400 else 5 if status < 500 else 0
                remaining = max_tokens - bucket.used
                if status != 420 and (remaining <= 0 or remaining < cost):
                    retry = bucket.retry_after(now, window, max_tokens, max(cost, 1))
                    status, ctype, body, cost = 429, _JSON_CT, _err("Too many requests"), 0
                    for h in ("etag", "last-modified", "expires", "cache-control", "x-pages", "content-language", "vary"):
                        headers.pop(h, None)
                    headers["retry-after"] = str(retry)
                if cost:
                    bucket.events.append((now, cost))
                    bucket.used += cost
                headers["x-ratelimit-group"] = gname
                headers["x-ratelimit-limit"] = f"{max_tokens}/{_window_label(window)}"
                headers["x-ratelimit-remaining"] = str(max(max_tokens - bucket.used, 0))
                headers["x-ratelimit-used"] = str(cost)

            # 3) error limit accounting (every 4xx/5xx counts)
            if cfg.error_limit_enabled:
                wid, errors, reset = self._error_window(ip, now)
                if status >= 400:
                    errors += 1
                    self._err_windows[ip] = (wid, errors)
                if group is None or cfg.error_limit_headers_everywhere:
                    headers["x-esi-error-limit-remain"] = str(max(cfg.error_limit - errors, 0))
                    headers["x-esi-error-limit-reset"] = str(reset)

            # 4) counters / log
            nbytes = len(body)
            if kind not in self._counters:
                self._counters[kind] = _new_counter()
            for ck in (self._counters["total"], self._counters[kind]):
                ck["requests"] += 1
                ck["body_bytes"] += nbytes
                if status == 200:
                    ck["status_200"] += 1
                elif status == 304:
                    ck["status_304"] += 1
                elif 400 <= status < 500:
                    ck["status_4xx"] += 1
                    if status == 420:
                        ck["status_420"] += 1
                    elif status == 429:
                        ck["status_429"] += 1
                elif status >= 500:
                    ck["status_5xx"] += 1
            if cfg.request_log:
                self._log.append(
                    {
                        "time": now,
                        "client": ip,
                        "method": request.method,
                        "path": path,
                        "query": request.url.query,
                        "route": kind,
                        "status": status,
                        "body_bytes": nbytes,
                        **meta,
                    }
                )

        headers["date"] = _http_date(now)
        headers["x-esi-request-id"] = str(uuid.uuid4())
        if status != 304:
            headers["content-type"] = ctype
        if ctype == _JSON_CT and status != 304:
            headers.update(_EXTRA_HEADERS)
        return Response(content=body, status_code=status, headers=headers)

    async def _route(
        self, kind: str, m: re.Match, request: Request, now: float, headers: dict[str, str], meta: dict
    ) -> tuple[int, str, bytes]:
        q = request.query_params
        page = 1
        type_id = None
        if kind == "orders":
            region_raw = m.group("region")
            try:
                region_id = int(region_raw)
            except ValueError:
                return 400, _JSON_CT, _err(f"Invalid value for path parameter 'region_id': {region_raw!r} is not an integer")
            order_type = q.get("order_type")
            if order_type is None:
                return 400, _JSON_CT, _err("Missing required query parameter 'order_type'")
            if order_type not in ("buy", "sell", "all"):
                return 400, _JSON_CT, _err(
                    f"Invalid value for query parameter 'order_type': {order_type!r} is not one of buy, sell, all"
                )
            if "type_id" in q:
                try:
                    type_id = int(q["type_id"])
                except ValueError:
                    return 400, _JSON_CT, _err("Invalid value for query parameter 'type_id': not an integer")
            page_raw = q.get("page")
            if page_raw is not None and type_id is None:
                try:
                    page = int(page_raw)
                except ValueError:
                    page = 0
                if page < 1:
                    return 400, _JSON_CT, _err(
                        f"Invalid value for query parameter 'page': {page_raw!r} must be an integer >= 1"
                    )
            if region_id not in self.region_pages:
                return 404, _JSON_CT, _err("Region not found")
            key: tuple[str, int | None] = ("orders", region_id)
            meta["region_id"] = region_id
            meta["page"] = page
        else:
            key = (kind, None)

        snap = await self._current(key, now)
        if kind == "orders":
            self._page_served(key)
        meta["generation"] = snap.generation
        if type_id is not None:
            body, etag = self._filtered_orders(snap, type_id, order_type)
            pages = 1
        else:
            if page > snap.page_count:
                return 404, _JSON_CT, _err(ERROR_PAGE_NOT_FOUND)
            body, etag = snap.pages[page - 1], snap.etags[page - 1]
            pages = snap.page_count

        headers["cache-control"] = "public"
        headers["etag"] = etag
        headers["expires"] = _http_date(snap.expires_at(now, self._cache_seconds(kind)))
        headers["last-modified"] = _http_date(snap.created_at)
        if _not_modified(request, etag, snap.created_at):
            return 304, _JSON_CT, b""
        if kind == "orders":
            headers["x-pages"] = str(pages)
        headers["content-language"] = "en"
        headers["vary"] = "Accept-Language"
        meta["etag"] = etag
        return 200, _JSON_CT, body

    async def _corp_route(
        self, kind: str, m: re.Match, request: Request, now: float, headers: dict[str, str], meta: dict
    ) -> tuple[int, str, bytes]:
        """Corporation routes, ``/characters/{id}/roles`` and the public killmail details."""
        route = CORP_ROUTES[kind]
        q = request.query_params
        if kind == "killmail":
            return await self._killmail_route(m, request, now, headers, meta)

        # 1) parameters (400 before authorization, like ESI's request validation)
        def bad(name: str, raw: Any, what: str) -> tuple[int, str, bytes]:
            return 400, _JSON_CT, _err(f"Invalid value for {name}: {raw!r} {what}")

        ints: dict[str, int] = {}
        for name, group in (("corporation_id", "corp"), ("character_id", "character"), ("division", "division"), ("observer_id", "observer")):
            if group in m.re.groupindex:
                raw = m.group(group)
                try:
                    ints[name] = int(raw)
                except ValueError:
                    return bad(f"path parameter '{name}'", raw, "is not an integer")
        if "division" in ints and ints["division"] not in WALLET_DIVISIONS:
            return bad("path parameter 'division'", ints["division"], "must be between 1 and 7")
        page = 1
        if route.paged and q.get("page") is not None:
            raw = q["page"]
            try:
                page = int(raw)
            except ValueError:
                page = 0
            if page < 1:
                return bad("query parameter 'page'", raw, "must be an integer >= 1")
        include_completed = False
        if kind == "industry_jobs" and q.get("include_completed") is not None:
            raw = q["include_completed"].lower()
            if raw not in ("true", "false"):
                return bad("query parameter 'include_completed'", q["include_completed"], "is not a boolean")
            include_completed = raw == "true"
        from_id = None
        if kind == "wallet_transactions" and q.get("from_id") is not None:
            try:
                from_id = int(q["from_id"])
            except ValueError:
                return bad("query parameter 'from_id'", q["from_id"], "is not an integer")

        # 2) authorization: token -> scope -> membership -> roles
        auth = request.headers.get("authorization")
        token = auth if auth else q.get("token")  # legacy ?token= is accepted too
        from .sso import SsoAuthError  # imported with the SSO PyJWT, cryptography, on first use

        try:
            claims = self.sso.verify_access_token(token or "")
        except SsoAuthError as exc:
            meta["auth"] = "token"
            return int(exc.status), _JSON_CT, orjson.dumps(exc.body)
        meta["character_id"] = claims.character_id
        meta["principal"] = f"{getattr(claims, 'client_id', '')}:{claims.character_id}"
        if route.scope not in claims.scopes:
            meta["auth"] = "scope"
            return 403, _JSON_CT, _err(f"token not valid for scope(s): {route.scope}", sso_status=200)
        try:
            character = self.sso.character(claims.character_id)
        except KeyError:
            character = None
        if kind == "character_roles":
            if character is None or ints["character_id"] != claims.character_id:
                meta["auth"] = "character"
                return 403, _JSON_CT, _err("Character ID in the path does not match the token's character", sso_status=200)
            key: tuple = ("character_roles", None, claims.character_id)
        else:
            corp_id = ints["corporation_id"]
            if character is None or character.corporation_id != corp_id:
                meta["auth"] = "membership"
                return 403, _JSON_CT, _err(ERROR_NOT_MEMBER)
            if route.roles and not set(route.roles) & set(character.roles):
                meta["auth"] = "roles"
                return 403, _JSON_CT, _err(ERROR_NO_ROLE)
            world = self._worlds.get(corp_id)
            if world is None:
                return 404, _JSON_CT, _err("Corporation not found")
            param: Any = None
            if kind == "industry_jobs":
                param = include_completed
            elif kind in ("wallet_journal", "wallet_transactions"):
                param = ints["division"]
            elif kind == "mining_ledger":
                param = ints["observer_id"]
                if not world.has_state("mining"):
                    await asyncio.to_thread(world.state, "mining")
                if param not in world.observer_ids():
                    return 404, _JSON_CT, _err("Observer not found")
            key = (kind, corp_id, param)
            meta["corporation_id"] = corp_id
            meta["page"] = page

        # 3) the snapshot
        snap = await self._current(key, now)
        if route.paged or kind == "wallet_transactions":  # every response counts for refresh_after_pages
            self._page_served(key)
        meta["generation"] = snap.generation
        if kind == "wallet_transactions" and from_id is not None:
            hit = snap._filtered.get(from_id)
            if hit is None:
                body = snap.data.body(from_id, self.corp_page_size[kind])
                hit = (body, md.etag_of(body))
                if len(snap._filtered) > 4096:
                    snap._filtered.clear()
                snap._filtered[from_id] = hit
            body, etag = hit
        else:
            if page > snap.page_count:
                return 404, _JSON_CT, _err(ERROR_PAGE_NOT_FOUND)
            body, etag = snap.pages[page - 1], snap.etags[page - 1]
        headers["cache-control"] = "private"
        headers["etag"] = etag
        headers["expires"] = _http_date(snap.expires_at(now, self._cache_seconds(kind)))
        headers["last-modified"] = _http_date(snap.created_at)
        if _not_modified(request, etag, snap.created_at):
            return 304, _JSON_CT, b""
        if route.paged:
            headers["x-pages"] = str(snap.page_count)
        headers["content-language"] = "en"
        headers["vary"] = "Accept-Language"
        meta["etag"] = etag
        return 200, _JSON_CT, body

    def _character_route(self, m: re.Match, request: Request, now: float, headers: dict[str, str]) -> tuple[int, str, bytes]:
        """Public ``GET /characters/{character_id}`` of a character the SSO knows: where a token
        holder's corporation comes from. Deterministic sheet; cached 86400 s like ESI."""
        raw = m.group("character")
        try:
            character_id = int(raw)
        except ValueError:
            return 400, _JSON_CT, _err(f"Invalid value for path parameter 'character_id': {raw!r} is not an integer")
        try:
            character = self.sso.character(character_id)
        except KeyError:
            return 404, _JSON_CT, _err("Character not found")
        rng = random.Random(character_id)
        sheet = {
            "achievement_score": rng.randrange(0, 5000),
            "birthday": f"20{rng.randrange(3, 24):02d}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:00:00Z",
            "bloodline_id": rng.randrange(1, 15),
            "corporation_id": character.corporation_id,
            "gender": rng.choice(("male", "female")),
            "name": character.name,
            "race_id": rng.choice((1, 2, 4, 8)),
            "security_status": round(rng.uniform(-10, 5), 2),
        }
        body = orjson.dumps(sheet)
        etag = md.etag_of(body)
        headers["cache-control"] = "public"
        headers["etag"] = etag
        headers["expires"] = _http_date(now + 86400)
        headers["last-modified"] = _http_date(now)
        if request.headers.get("if-none-match") == etag:
            return 304, _JSON_CT, b""
        return 200, _JSON_CT, body

    async def _killmail_route(
        self, m: re.Match, request: Request, now: float, headers: dict[str, str], meta: dict
    ) -> tuple[int, str, bytes]:
        raw = m.group("killmail_id")
        try:
            killmail_id = int(raw)
        except ValueError:
            return 400, _JSON_CT, _err(f"Invalid value for path parameter 'killmail_id': {raw!r} is not an integer")
        meta["killmail_id"] = killmail_id
        entry = self._killmail_index.get(killmail_id)
        if entry is None:
            entry = await asyncio.to_thread(self._killmail_entry, killmail_id)
        if entry is None or entry[2] != m.group("killmail_hash"):
            return 422, _JSON_CT, _err(ERROR_KILLMAIL)
        hit = self._killmail_bodies.get(killmail_id) or await asyncio.to_thread(self._killmail_body, killmail_id)
        body, etag, created = hit
        with self._lock:
            self._killmail_fetches[killmail_id] += 1
        headers["cache-control"] = "public"
        headers["etag"] = etag
        cache = self._cache_seconds("killmail")
        k = max(1, int((now - created) // cache) + 1)
        headers["expires"] = _http_date(created + k * cache)
        headers["last-modified"] = _http_date(created)
        if _not_modified(request, etag, created):
            return 304, _JSON_CT, b""
        headers["content-language"] = "en"
        headers["vary"] = "Accept-Language"
        return 200, _JSON_CT, body

    def _filtered_orders(self, snap: Snapshot, type_id: int, order_type: str) -> tuple[bytes, str]:
        ck = (type_id, order_type)
        hit = snap._filtered.get(ck)
        if hit is None:
            c = snap.data.columns
            mask = c["type_id"] == type_id
            if order_type == "buy":
                mask &= c["is_buy_order"]
            elif order_type == "sell":
                mask &= ~c["is_buy_order"]
            body = orjson.dumps(md.render_order_rows(snap.data, np.flatnonzero(mask)))
            hit = (body, md.etag_of(body))
            if len(snap._filtered) > 512:
                snap._filtered.clear()
            snap._filtered[ck] = hit
        return hit

    # ------------------------------------------------------------------ admin API

    async def _admin(self, request: Request) -> Response:
        action = request.path_params["action"].strip("/")
        method = request.method
        try:
            payload: dict = {}
            if method == "POST":
                raw = await request.body()
                if raw.strip():
                    payload = orjson.loads(raw)
                    if not isinstance(payload, dict):
                        raise ValueError("JSON body must be an object")
            if method == "GET" and action == "counters":
                result: Any = self.counters()
            elif method == "POST" and action == "counters/reset":
                self.reset_counters()
                result = {"ok": True}
            elif method == "POST" and action == "refresh":
                route = payload.get("route", "orders")
                region_id = payload.get("region_id")
                after = payload.get("after_pages")
                corp = {k: payload[k] for k in ("corporation_id", "division", "observer_id", "include_completed", "character_id") if payload.get(k) is not None}
                if after is not None:
                    if route in CORP_ROUTES:
                        self.refresh_after_pages(int(after), None, route, **corp)
                        result = {"ok": True, "scheduled": {**corp, "route": route, "after_pages": int(after)}}
                    else:
                        if region_id is None:
                            raise ValueError("after_pages needs region_id")
                        self.refresh_after_pages(int(after), int(region_id), route)
                        result = {"ok": True, "scheduled": {"region_id": int(region_id), "after_pages": int(after)}}
                else:
                    result = {"ok": True, "refreshed": await asyncio.to_thread(lambda: self.refresh(route, region_id, **corp))}
            elif method == "POST" and action == "refresh_after_pages":
                route = payload.get("route", "orders")
                if route in CORP_ROUTES:
                    corp = {k: payload[k] for k in ("corporation_id", "division", "observer_id", "include_completed") if payload.get(k) is not None}
                    self.refresh_after_pages(int(payload["n"]), None, route, **corp)
                else:
                    self.refresh_after_pages(int(payload["n"]), int(payload["region_id"]), route)
                result = {"ok": True}
            elif action == "config" and method == "GET":
                result = self._config.as_dict()
            elif action == "config" and method == "POST":
                result = self.configure(**payload)
            elif method == "GET" and action == "state":
                result = {
                    "regions": self.region_pages,
                    "orders_per_page": self.orders_per_page,
                    "corporations": self._corporations_info(),
                    "snapshots": self.state(),
                }
            elif method == "GET" and action == "corporations":
                result = self._corporations_info()
            elif method == "POST" and action == "characters":
                kw: dict[str, Any] = {}
                if payload.get("character_id") is not None:
                    kw["character_id"] = int(payload["character_id"])
                if payload.get("scopes") is not None:
                    kw["scopes"] = list(payload["scopes"])
                if payload.get("roles") is not None:
                    kw["roles"] = list(payload["roles"])
                elif payload.get("director"):
                    kw["roles"] = list(DIRECTOR_ROLES)
                cid, token = self.add_character(int(payload["corporation_id"]), **kw)
                result = {"character_id": cid, "refresh_token": token, "client_id": self.sso.client_id}
            elif method == "GET" and action == "killmail_fetches":
                result = self.killmail_fetch_counts()
            elif method == "GET" and action == "requests":
                log = self.request_log()
                limit = request.query_params.get("limit")
                result = log[-int(limit):] if limit else log
            elif method == "POST" and action == "limits/reset":
                self.reset_limits()
                result = {"ok": True}
            else:
                return Response(
                    orjson.dumps({"error": f"unknown admin action {method} /_sandbox/{action}", "routes": ADMIN_ROUTES}),
                    404,
                    media_type="application/json",
                )
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            return Response(orjson.dumps({"error": str(exc)}), 400, media_type="application/json")
        return Response(
            orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS), 200, media_type="application/json"
        )


class _SsoRoutes(BaseRoute):
    """The SSO's routes, mounted at the app root without creating the SSO (an RSA key) until a
    request needs it: ESI paths never do."""

    def __init__(self, sandbox: "EsiSandbox") -> None:
        self._sandbox = sandbox
        self._routes: list[BaseRoute] | None = None

    def _get(self) -> list[BaseRoute]:
        if self._routes is None:
            self._routes = list(self._sandbox.sso.routes())
        return self._routes

    def matches(self, scope: dict) -> tuple[Match, dict]:
        if scope.get("type") != "http" or _match_path(scope.get("path", ""))[0] != "other":
            return Match.NONE, {}
        partial: tuple[Match, dict] | None = None
        for route in self._get():
            match, child = route.matches(scope)
            if match == Match.FULL:
                return Match.FULL, {**child, "sandbox.sso_route": route}
            if match == Match.PARTIAL and partial is None:
                partial = (Match.PARTIAL, {**child, "sandbox.sso_route": route})
        return partial or (Match.NONE, {})

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        await scope["sandbox.sso_route"].handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)


def _not_modified(request: Request, etag: str, created_at: int) -> bool:
    inm = request.headers.get("if-none-match")
    if inm is not None:
        for tag in inm.split(","):
            tag = tag.strip()
            if tag.startswith("W/"):
                tag = tag[2:]
            if tag == "*" or tag == etag:
                return True
        return False
    ims = request.headers.get("if-modified-since")
    if ims:
        try:
            dt = parsedate_to_datetime(ims)
        except (TypeError, ValueError, IndexError):
            return False
        if dt is None:
            return False
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp() >= created_at
    return False
