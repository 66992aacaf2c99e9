"""What an API brings to the seam: one `ApiSpec` per API, as data plus a few small strategies.

The generic resource (`fetch.resource.ApiResource`) and the Dagster wiring are built from it; an
API adds a spec and dataset declarations, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import httpx

from ..core.datasets import Downtime
from ..core.limits import PER_REQUEST, CostModel, RateLimit
from .errors import ErrorClassifier
from .limits import HeaderDialect, IrisHeaders

# (client, credential, log=, max_budget_wait_s=) -> a ReportsApi (fetch.jobs) for report datasets
ReportsFactory = Callable[..., Any]
# (client) -> a reason to hold scheduled work (down, starting up, unreachable), or None
StatusProbe = Callable[[httpx.Client], "str | None"]


@dataclass(frozen=True)
class ApiKeyAuth:
    """Every request carries a key in a header (IRIS: X-API-KEY); the key comes from `env`."""

    header: str
    env: str


@dataclass(frozen=True)
class ApiSpec:
    name: str  # asset key prefix, Postgres schema, Dagster resource key and pool
    title: str  # for people: "EVE Online ESI"
    base_url: str  # the real API (users' default)
    base_url_env: str  # the environment variable that overrides it
    headers: Mapping[str, str] = field(default_factory=dict)  # sent with every request
    errors: ErrorClassifier = field(default_factory=ErrorClassifier)
    # declared rate limits by rate-limit group (a dataset's `rate_limit_group`); `default_limit`
    # covers datasets without a group (IRIS: one limit per key for every route)
    limits: Mapping[str, RateLimit] = field(default_factory=dict)
    default_limit: RateLimit | None = None
    costs: CostModel = PER_REQUEST
    # how responses state limits; the de-facto X-RateLimit-Limit/-Remaining/Retry-After by default
    rate_limit_headers: HeaderDialect = field(default_factory=IrisHeaders)
    error_limit: bool = False  # an API-wide error budget (ESI's X-ESI-Error-Limit-*, 420)
    api_key: ApiKeyAuth | None = None  # static credential of every request
    # the variable whose presence means a deployment uses the API, when it has no key (SP-API: the
    # application's LWA client id); an API with neither (ESI's public data) is always loaded
    configured_by: str | None = None
    credentials_resource: str | None = None  # Dagster resource giving per-partition credentials (ESI SSO)
    status: StatusProbe | None = None
    downtime: Downtime | None = None
    reports: ReportsFactory | None = None  # how report datasets (`Dataset.report`) are made (SP-API's Reports API)

    def declared_limit(self, group: str | None) -> RateLimit | None:
        if group is not None and group in self.limits:
            return self.limits[group]
        return self.default_limit

    def limit_group(self, group: str | None) -> str | None:
        """The bucket a dataset's requests spend: its own group, or the API's default one."""
        if group is not None:
            return group
        return "default" if self.default_limit is not None else None
