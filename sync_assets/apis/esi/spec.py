"""EVE Online ESI on the seam: base URL, headers, error bodies and the 420, declared rate-limit
groups (from CCP's OpenAPI spec), the error limit, /status and the daily downtime."""

from __future__ import annotations

import httpx

from ...core.errors import ErrorLimited, HttpStatusError, PageOutOfRange
from ...core.limits import ESI_COSTS, SlidingWindow
from ...fetch.errors import ErrorClassifier
from ...fetch.limits import EsiHeaders
from ...fetch.spec import ApiSpec
from .datasets import ESI_DOWNTIME

DEFAULT_ESI_URL = "https://esi.evetech.net"
COMPATIBILITY_DATE = "2026-08-18"  # the spec our routes and fields are checked against
WINDOW_15M = 900.0

# x-rate-limit groups of the spec at COMPATIBILITY_DATE: max-tokens per 15-minute window (ESI's
# buckets are per group and per character, or per application for public routes). A test checks
# this table and every dataset's group against the vendored spec.
RATE_LIMIT_GROUPS: dict[str, int] = {
    "activity": 30, "alliance-social": 300, "char-access": 600, "char-activity": 150, "char-asset": 1800,
    "char-contract": 600, "char-detail": 600, "char-freelance-job": 300, "char-industry": 600,
    "char-killmail": 30, "char-location": 1200, "char-military-campaign": 150, "char-notification": 15,
    "char-paragon-hub": 150, "char-skinr": 30, "char-social": 600, "char-structure": 30, "char-wallet": 150,
    "corp-asset": 1800, "corp-contract": 600, "corp-detail": 300, "corp-freelance-job": 300,
    "corp-industry": 600, "corp-killmail": 30, "corp-member": 300, "corp-project": 600, "corp-social": 300,
    "corp-structure": 300, "corp-wallet": 300, "factional-warfare": 150, "fitting": 150, "fleet": 1800,
    "freelance-job": 12000, "incursion": 150, "industry": 150, "insurance": 150, "killmail": 3600,
    "market-order": 12000, "meta": 150, "military-campaign": 300, "paragon-hub": 150, "routes": 3600,
    "skinr": 12000, "sovereignty": 600, "status": 600, "ui": 900,
}


class EsiErrors(ErrorClassifier):
    """ESI's `{"error": …}` bodies, its 420 (error limit spent) and a page number past X-Pages."""

    def error(self, response: httpx.Response, where: str, page: int | None) -> HttpStatusError:
        if response.status_code == 420:
            reset = _float(response.headers.get("x-esi-error-limit-reset"))
            return ErrorLimited("GET", where, 420, self.detail(response), reset_s=reset if reset is not None else 60.0)
        error = super().error(response, where, page)
        if error.status == 404 and page and page > 1 and "page does not exist" in error.detail.lower():
            return PageOutOfRange("GET", where, 404, error.detail)
        return error


def esi_status(client: httpx.Client) -> str | None:
    """One cheap GET /status (cached 30 s by ESI), not retried: a schedule tick just skips."""
    try:
        response = client.get("/status", timeout=5.0)
    except httpx.HTTPError as exc:
        return f"ESI unreachable ({type(exc).__name__})"
    if response.status_code >= 500:
        return f"ESI /status answered {response.status_code} (downtime or outage)"
    try:
        if response.status_code == 200 and response.json().get("vip"):
            return "ESI is in VIP mode (the cluster is starting after downtime)"
    except ValueError:
        return "ESI /status answered a body that is not JSON"
    return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


ESI = ApiSpec(
    name="esi",
    title="EVE Online ESI",
    base_url=DEFAULT_ESI_URL,
    base_url_env="SYNC_ASSETS_ESI_URL",
    headers={"X-Compatibility-Date": COMPATIBILITY_DATE},
    errors=EsiErrors(),
    limits={group: SlidingWindow(tokens, WINDOW_15M) for group, tokens in RATE_LIMIT_GROUPS.items()},
    costs=ESI_COSTS,
    rate_limit_headers=EsiHeaders(),
    error_limit=True,
    credentials_resource="esi_auth",
    status=esi_status,
    downtime=ESI_DOWNTIME,
)
