"""Offline stand-in for EVE Online's ESI (https://esi.evetech.net) as a Starlette ASGI app.

Routes (optionally prefixed by ``/latest``, ``/dev``, ``/legacy`` or ``/vN``, optional
trailing slash, ``datasource=`` and other unknown query parameters ignored):

* ``GET /markets/{region_id}/orders?order_type=all&page=N`` (X-Pages, rate-limit group ``market-order``)
* ``GET /markets/prices`` (single response, error-limited only)
* ``GET /status`` (rate-limit group ``status``)

Snapshot model: one immutable :class:`Snapshot` per (route, region); its page bodies are
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
from starlette.routing import Route

from . import market_data as md

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
]

#: Routes that have snapshots (and may be refreshed).
ROUTES: tuple[str, ...] = ("orders", "prices", "status")
#: Counter buckets: the three routes, ``other`` (unknown paths) and ``total``.
ROUTE_KINDS: tuple[str, ...] = ("orders", "prices", "status", "other")
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
#: route -> (x-rate-limit group, max tokens per window) as in the spec (compat 2026-08-18).
RATE_LIMIT_GROUPS: dict[str, tuple[str, int]] = {
    "orders": ("market-order", 12000),
    "status": ("status", 600),
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
    "POST /_sandbox/refresh": '{"route": "orders"|"prices"|"status"|"all", "region_id": int|null, "after_pages": int|null}',
    "POST /_sandbox/refresh_after_pages": '{"n": int, "region_id": int}',
    "GET /_sandbox/config": "current knobs",
    "POST /_sandbox/config": "set any knob(s) (see SandboxConfig); returns the knobs",
    "GET /_sandbox/state": "current snapshots (route, region, generation, pages, last_modified, ...)",
    "GET /_sandbox/requests": "per-request log (needs request_log=true); ?limit=N",
    "POST /_sandbox/limits/reset": "forget rate-limit buckets and error-limit windows",
}

_JSON_CT = "application/json; charset=UTF-8"
_HTML_CT = "text/html"
_PATH_RE = re.compile(
    r"^(?:/(?:latest|dev|legacy|v\d+))?/(?:markets/(?P<region>[^/]+)/orders|(?P<prices>markets/prices)|(?P<status>status))/?$"
)
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
    data: Any  # OrderBook | PriceTable | dict (status payload)
    build_seconds: float = 0.0
    _filtered: dict = field(default_factory=dict, compare=False, repr=False)

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

    def summary(self) -> dict:
        return {
            "route": self.route,
            "region_id": self.region_id,
            "generation": self.generation,
            "pages": self.page_count,
            "rows": len(self.data) if hasattr(self.data, "__len__") and self.route != "status" else 1,
            "bytes": self.total_bytes,
            "created_at": self.created_at,
            "last_modified": self.last_modified_http,
            "build_seconds": round(self.build_seconds, 4),
        }


# --------------------------------------------------------------------------------------
# Knobs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxConfig:
    """Runtime knobs (replace atomically via :meth:`EsiSandbox.configure`)."""

    latency: float = 0.0  # seconds per ESI request (asyncio.sleep; concurrent requests overlap)
    error_rate: float = 0.0  # share of ESI requests answered with an injected 502/503/504
    error_seed: int = 0  # seed of the error-injection RNG (setting it re-seeds)
    error_routes: tuple[str, ...] = ROUTES  # routes subject to error injection
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
            v = tuple(ROUTES if v is None else ([v] if isinstance(v, str) else v))
            bad = set(v) - set(ROUTES)
            if bad:
                raise ValueError(f"unknown route(s) in error_routes: {sorted(bad)}")
        elif k == "cache_seconds":
            if isinstance(v, (int, float)):
                v = {r: int(v) for r in ROUTES}
            bad = set(v) - set(ROUTES)
            if bad:
                raise ValueError(f"unknown route(s) in cache_seconds: {sorted(bad)}")
            if any(int(x) < 1 for x in v.values()):
                raise ValueError("cache_seconds must be >= 1")
            v = {**base.cache_seconds, **{r: int(x) for r, x in v.items()}}
        elif k == "rate_limit_tokens":
            groups = [g for g, _ in RATE_LIMIT_GROUPS.values()]
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
        eager: build all snapshots now (else on first use).
        clock: time source (epoch seconds) for Last-Modified/Expires/limits; default ``time.time``.
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

        self._snapshots: dict[tuple[str, int | None], Snapshot] = {}
        self._build_locks: dict[tuple[str, int | None], threading.Lock] = {k: threading.Lock() for k in self._keys()}
        self._due: set[tuple[str, int | None]] = set()
        self._countdown: dict[tuple[str, int | None], int] = {}

        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._err_windows: dict[str, tuple[int, int]] = {}  # ip -> (window id, errors)
        self._counters: dict[str, dict[str, int]] = {}
        self._log: collections.deque[dict] = collections.deque(maxlen=200_000)
        self.reset_counters()

        self.app = self._build_app()
        if eager:
            for key in self._keys():
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

    def _build(self, key: tuple[str, int | None], prev: Snapshot | None) -> Snapshot:
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

    def _needs_build(self, key: tuple[str, int | None], snap: Snapshot | None, now: float) -> bool:
        if snap is None or key in self._due:
            return True
        cfg = self._config
        return cfg.auto_refresh and now >= snap.created_at + cfg.cache_seconds[key[0]]

    def _ensure_current(self, key: tuple[str, int | None], force: bool = False) -> Snapshot:
        """Return the current snapshot, building/refreshing it first if missing, due or forced."""
        with self._build_locks[key]:
            snap = self._snapshots.get(key)
            if force or self._needs_build(key, snap, self.clock()):
                new = self._build(key, snap)
                with self._lock:
                    self._snapshots[key] = new
                    self._due.discard(key)
                snap = new
            return snap

    async def _current(self, key: tuple[str, int | None], now: float) -> Snapshot:
        snap = self._snapshots.get(key)
        if self._needs_build(key, snap, now):
            snap = await asyncio.to_thread(self._ensure_current, key)
        return snap

    def _page_served(self, key: tuple[str, int | None]) -> None:
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

    def refresh(self, route: str = "orders", region_id: int | None = None) -> list[dict]:
        """New generation now (Last-Modified = now) for ``route``: ``orders`` (one region, or all
        when ``region_id`` is None), ``prices``, ``status`` or ``all``. Returns snapshot summaries."""
        if route == "all":
            keys = self._keys()
        elif route == "orders" and region_id is None:
            keys = [("orders", r) for r in self.region_pages]
        else:
            keys = [self._key(route, region_id)]
        return [self._ensure_current(k, force=True).summary() for k in keys]

    def refresh_after_pages(self, n: int, region_id: int, route: str = "orders") -> None:
        """One-shot: the snapshot of ``region_id`` refreshes after ``n`` more page requests of it
        (the n-th is still served from the old snapshot, the (n+1)-th from the new one).
        ``n = 0`` refreshes before the next request."""
        key = self._key(route, region_id)
        n = int(n)
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            if n == 0:
                self._countdown.pop(key, None)
                self._due.add(key)
            else:
                self._countdown[key] = n

    def snapshot(self, route: str = "orders", region_id: int | None = None) -> Snapshot:
        """The current :class:`Snapshot` (pages, etags, generation, created_at, data)."""
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
            d["refresh_due"] = (s.route, s.region_id) in due
            d["refresh_after_pages"] = countdown.get((s.route, s.region_id))
            out.append(d)
        return out

    def counters(self) -> dict[str, dict[str, int]]:
        """``{"total"|"orders"|"prices"|"status"|"other": {requests, status_200, status_304,
        status_4xx, status_5xx, status_420, status_429, body_bytes}}`` (status_4xx includes 420/429)."""
        with self._lock:
            return {k: dict(v) for k, v in self._counters.items()}

    def reset_counters(self) -> None:
        with self._lock:
            self._counters = {k: _new_counter() for k in ("total", *ROUTE_KINDS)}
            self._log.clear()

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
                Route("/{path:path}", self._esi, methods=["GET"]),
            ]
        )

    async def __call__(self, scope, receive, send) -> None:  # the sandbox itself is an ASGI app
        await self.app(scope, receive, send)

    async def _esi(self, request: Request) -> Response:
        cfg = self._config
        path = request.url.path
        m = _PATH_RE.match(path)
        if m is None:
            kind = "other"
        elif m.group("prices"):
            kind = "prices"
        elif m.group("status"):
            kind = "status"
        else:
            kind = "orders"
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
            else:
                status, ctype, body = await self._route(kind, m, request, now, headers, meta)

        # 2) bucket rate limit (routes with an x-rate-limit group)
        group = RATE_LIMIT_GROUPS.get(kind)
        with self._lock:
            if group is not None and cfg.rate_limit_enabled:
                gname = group[0]
                max_tokens = cfg.rate_limit_tokens.get(gname, group[1])
                window = cfg.rate_limit_window
                bucket = self._buckets.get((gname, ip))
                if bucket is None:
                    bucket = self._buckets[(gname, ip)] = _Bucket()
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

        cfg = self._config
        headers["cache-control"] = "public"
        headers["etag"] = etag
        headers["expires"] = _http_date(snap.expires_at(now, cfg.cache_seconds[kind]))
        headers["last-modified"] = _http_date(snap.created_at)
        if _not_modified(request, etag, snap.created_at):
            return 304, _JSON_CT, b""
        if kind == "orders":
            headers["x-pages"] = str(pages)
        headers["content-language"] = "en"
        headers["vary"] = "Accept-Language"
        meta["etag"] = etag
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
                if after is not None:
                    if region_id is None:
                        raise ValueError("after_pages needs region_id")
                    self.refresh_after_pages(int(after), int(region_id), route)
                    result = {"ok": True, "scheduled": {"region_id": int(region_id), "after_pages": int(after)}}
                else:
                    result = {"ok": True, "refreshed": await asyncio.to_thread(self.refresh, route, region_id)}
            elif method == "POST" and action == "refresh_after_pages":
                self.refresh_after_pages(int(payload["n"]), int(payload["region_id"]), payload.get("route", "orders"))
                result = {"ok": True}
            elif action == "config" and method == "GET":
                result = self._config.as_dict()
            elif action == "config" and method == "POST":
                result = self.configure(**payload)
            elif method == "GET" and action == "state":
                result = {"regions": self.region_pages, "orders_per_page": self.orders_per_page, "snapshots": self.state()}
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
