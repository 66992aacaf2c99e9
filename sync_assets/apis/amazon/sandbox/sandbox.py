"""The SP-API + LWA sandbox object: world, LWA, usage plans, next tokens, reports, knobs and counters.

>>> sb = AmazonSandbox(scale="tiny")
>>> with serve_in_thread(sb) as base_url:          # sync_assets.apis.sandbox_serving
...     seller = sb.seller_ids[0]
...     form = {"grant_type": "refresh_token", "refresh_token": sb.refresh_tokens[seller],
...             "client_id": sb.client_id, "client_secret": sb.client_secret}
...     # POST f"{base_url}/auth/o2/token" (form), then GET f"{base_url}/fba/inventory/v1/summaries?..."
...     # with header x-amz-access-token

Time: every expiry (access tokens, next tokens, report states, document URLs) and every bucket
reads :meth:`AmazonSandbox.now`, the ``clock`` plus an offset :meth:`AmazonSandbox.advance` moves.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from .common import from_epoch
from .limits import RATE_TABLE, STATIC_PLAN, Plan, RateLimiter
from .lwa import Lwa
from .operations import Operations, PagingConfig
from .paging import TokenStore
from .reports import LEDGER, REPORT_TYPES, ReportConfig, Reports
from .seed import DEFAULT_SELLERS, SellerSpec, build_world, default_anchor
from .static import StaticFixtures, load_fixtures
from .world import Claim, World

__all__ = ["AmazonSandbox", "SandboxConfig"]


@dataclass(frozen=True)
class SandboxConfig:
    """Runtime knobs (:meth:`AmazonSandbox.configure`, ``POST /_sandbox/config``)."""

    mode: str = "dynamic"  # "dynamic" (seeded world) | "static" (Amazon's canned examples)
    rate_limits_enabled: bool = True
    rate_scale: float = 1.0  # multiplies every plan's rate (bursts unchanged)
    rate_overrides: Mapping[str, tuple[float, int]] = field(default_factory=dict)  # op -> (rate, burst)
    latency: float = 0.0  # seconds added to every SP-API answer
    error_rate: float = 0.0  # share of SP-API calls answered 500/503 (after the bucket took its token)
    error_seed: int = 0
    access_token_ttl: int = 3600
    inventory_page_size: int = 50
    transactions_page_size: int = 500
    inventory_token_ttl: float = 30.0
    finances_token_ttl: float = 1500.0
    orders_token_ttl: float = 86400.0
    report_queue_seconds: float = 1.0
    report_processing_seconds: float = 2.0
    report_cooldown_seconds: float = 0.0
    document_url_ttl: float = 300.0
    gzip_report_types: tuple[str, ...] = (LEDGER,)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rate_overrides"] = {k: list(v) for k, v in self.rate_overrides.items()}
        d["gzip_report_types"] = list(self.gzip_report_types)
        return d


_FIELDS = {f.name: f for f in dataclasses.fields(SandboxConfig)}


def _coerce(base: SandboxConfig, knobs: Mapping[str, Any]) -> SandboxConfig:
    unknown = set(knobs) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown knob(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    values: dict[str, Any] = {}
    for name, value in knobs.items():
        if name == "mode":
            if value not in ("dynamic", "static"):
                raise ValueError("mode must be 'dynamic' or 'static'")
        elif name == "rate_overrides":
            value = {**base.rate_overrides, **{op: (float(r), int(b)) for op, (r, b) in dict(value).items()}}
        elif name == "gzip_report_types":
            value = tuple(value)
            if set(value) - set(REPORT_TYPES):
                raise ValueError(f"gzip_report_types must be among {REPORT_TYPES}")
        elif isinstance(_FIELDS[name].default, bool):
            value = bool(value)
        else:
            value = type(_FIELDS[name].default)(value)
            if value < 0 or (name == "error_rate" and value > 1):
                raise ValueError(f"{name} out of range")
        values[name] = value
    return dataclasses.replace(base, **values)


class AmazonSandbox:
    """Offline SP-API and LWA: serve :attr:`app` with ``serve_in_thread(sandbox)``.

    Args:
        seed: data seed; the same (seed, scale, anchor, sellers) give the same world.
        scale: SKUs per seller, ``"full"`` (2000), ``"small"`` (100), ``"tiny"`` (12) or a number.
        anchor: the end of the year of history (default: the start of today, UTC).
        sellers: the sellers' names and marketplaces (default two: US, and US + CA).
        clock: epoch-seconds time source (default ``time.time``); :meth:`advance` adds to it.
        **knobs: initial :class:`SandboxConfig` values.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        scale: str | int = "full",
        anchor: datetime | None = None,
        sellers: Sequence[SellerSpec] = DEFAULT_SELLERS,
        clock: Callable[[], float] = time.time,
        **knobs: Any,
    ) -> None:
        self._base_clock = clock
        self._offset = 0.0
        self._lock = threading.RLock()
        self._config = _coerce(SandboxConfig(), knobs)
        self.seed = seed
        built_scale = "tiny" if self._config.mode == "static" and scale == "full" else scale
        self.world: World = build_world(seed, built_scale, anchor if anchor is not None else default_anchor(self.now_datetime()), sellers)
        self.lwa = Lwa(self.world.seller_ids, self.now, seed=seed, access_token_ttl=self._config.access_token_ttl)
        self.limiter = RateLimiter(self.now, self._default_plan)
        self.next_tokens = TokenStore(self.now)
        self.operations = Operations(self.world, self.next_tokens, self._paging)
        self.reports = Reports(self.world, self.now, self.next_tokens, self._report_config, seed)
        self.static = StaticFixtures(load_fixtures())
        self._errors = random.Random(self._config.error_seed)
        self.injected_errors = 0
        self.unauthorized = 0
        self._apply()
        from .app import SpApiApp  # the app reads the sandbox; built last

        self.app = SpApiApp(self)

    # ------------------------------------------------------------------ identity

    @property
    def seller_ids(self) -> list[str]:
        return self.world.seller_ids

    @property
    def client_id(self) -> str:
        return self.lwa.client_id

    @property
    def client_secret(self) -> str:
        return self.lwa.client_secret

    @property
    def refresh_tokens(self) -> dict[str, str]:
        """Each seller's initial refresh token (fixed for a seed)."""
        return self.lwa.refresh_tokens

    # ------------------------------------------------------------------ time

    def now(self) -> float:
        return self._base_clock() + self._offset

    def now_datetime(self) -> datetime:
        return from_epoch(self.now())

    def advance(self, seconds: float) -> float:
        """Move the sandbox clock forward (tokens expire, reports finish, buckets refill)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds
        return self.now()

    # ------------------------------------------------------------------ knobs

    @property
    def config(self) -> SandboxConfig:
        return self._config

    def configure(self, **knobs: Any) -> dict[str, Any]:
        with self._lock:
            self._config = _coerce(self._config, knobs)
            if "error_seed" in knobs:
                self._errors = random.Random(self._config.error_seed)
            self._apply()
            return self._config.as_dict()

    def _apply(self) -> None:
        cfg = self._config
        overrides = {op: Plan(rate, burst) for op, (rate, burst) in cfg.rate_overrides.items()}
        self.limiter.configure(enabled=cfg.rate_limits_enabled, scale=cfg.rate_scale, overrides=overrides)
        self.lwa.access_token_ttl = cfg.access_token_ttl

    def _default_plan(self, op: str) -> Plan:
        return STATIC_PLAN if self._config.mode == "static" else RATE_TABLE.get(op, STATIC_PLAN)

    def _paging(self) -> PagingConfig:
        c = self._config
        return PagingConfig(c.inventory_page_size, c.transactions_page_size, c.inventory_token_ttl, c.finances_token_ttl, c.orders_token_ttl)

    def _report_config(self) -> ReportConfig:
        c = self._config
        return ReportConfig(c.report_queue_seconds, c.report_processing_seconds, c.report_cooldown_seconds, c.document_url_ttl, c.gzip_report_types)

    def inject_error(self) -> bool:
        """Draw whether this SP-API call fails with an injected 5xx."""
        with self._lock:
            if self._config.error_rate and self._errors.random() < self._config.error_rate:
                self.injected_errors += 1
                return True
            return False

    # ------------------------------------------------------------------ faults and changes

    def revoke_refresh_token(self, seller_id: str) -> int:
        self.world.seller(seller_id)
        return self.lwa.revoke(seller_id)

    def authorize_again(self, seller_id: str) -> str:
        """A new refresh token for the seller (after a revoke)."""
        self.world.seller(seller_id)
        return self.lwa.authorize(seller_id)

    def issue_access_token(self, seller_id: str) -> str:
        self.world.seller(seller_id)
        return self.lwa.issue(seller_id)

    def expire_access_tokens(self) -> int:
        return self.lwa.expire_access_tokens()

    def expire_client_secret(self) -> None:
        self.lwa.expire_client_secret()

    def rotate_client_secret(self) -> str:
        return self.lwa.rotate_client_secret()

    def expire_next_tokens(self) -> int:
        return self.next_tokens.expire_all()

    def force_report_outcome(self, outcome: str, count: int = 1, report_type: str | None = None) -> None:
        self.reports.force(outcome, count, report_type)

    def reimburse_claim(self, seller_id: str, claim_id: str | None = None) -> dict[str, str]:
        """Amazon pays one open claim now (the first unreimbursed one unless ``claim_id``)."""
        if claim_id is None:
            open_claims = self.world.unreimbursed_claims(seller_id)
            if not open_claims:
                raise ValueError(f"seller {seller_id} has no unreimbursed claim")
            claim_id = open_claims[0].claim_id
        return self.world.reimburse(seller_id, claim_id, self.now_datetime())

    def unreimbursed_claims(self, seller_id: str) -> list[Claim]:
        return self.world.unreimbursed_claims(seller_id)

    def reset_limits(self) -> None:
        self.limiter.reset_buckets()

    # ------------------------------------------------------------------ counters

    def reset_counters(self) -> None:
        self.limiter.reset_counters()
        self.lwa.reset_counters()
        self.operations.reset_counters()
        self.reports.reset_counters()
        with self._lock:
            self.injected_errors = self.unauthorized = 0

    def requests(self, seller_id: str, op: str) -> int:
        c = self.limiter.snapshot().get((seller_id, op))
        return c.requests if c else 0

    def throttled(self, seller_id: str | None = None, op: str | None = None) -> int:
        return sum(c.throttled for (s, o), c in self.limiter.snapshot().items() if seller_id in (None, s) and op in (None, o))

    def peak_rate(self, seller_id: str, op: str) -> float:
        c = self.limiter.snapshot().get((seller_id, op))
        return c.as_dict()["peak_per_second"] if c else 0.0

    def request_times(self, seller_id: str, op: str) -> list[float]:
        c = self.limiter.snapshot(with_times=True).get((seller_id, op))
        return list(c.times) if c else []

    def wide_window_requests(self, seller_id: str | None = None, op: str | None = None) -> int:
        """Finances requests whose window spanned more than 180 days (answered empty)."""
        return sum(n for (s, o), n in dict(self.operations.wide_windows).items() if seller_id in (None, s) and op in (None, o))

    def create_report_calls(self, seller_id: str | None = None, report_type: str | None = None) -> dict[tuple[str, str, str, str], int]:
        """createReport calls per (seller, report type, dataStartTime, dataEndTime) as sent."""
        return {k: n for k, n in dict(self.reports.counters.created).items() if seller_id in (None, k[0]) and report_type in (None, k[1])}

    def counters(self) -> dict[str, Any]:
        """Everything counted, JSON-ready (``GET /_sandbox/counters``)."""
        ops = self.limiter.snapshot()
        docs = self.reports.counters
        return {
            "operations": {f"{s}|{o}": c.as_dict() for (s, o), c in sorted(ops.items())},
            "throttled": sum(c.throttled for c in ops.values()),
            "lwa": dict(self.lwa.counters),
            "unauthorized": self.unauthorized,
            "injected_errors": self.injected_errors,
            "wide_windows": {f"{s}|{o}": n for (s, o), n in sorted(self.operations.wide_windows.items())},
            "create_report": [
                {"seller_id": s, "report_type": t, "dataStartTime": a, "dataEndTime": b, "calls": n}
                for (s, t, a, b), n in sorted(docs.created.items())
            ],
            "documents": {"downloads": docs.downloads, "expired": docs.expired_downloads, "refused": docs.refused_downloads},
        }

    def count_unauthorized(self) -> None:
        with self._lock:
            self.unauthorized += 1
