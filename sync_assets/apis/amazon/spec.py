"""Amazon Selling Partner API on the seam: what Amazon's models say, as an `ApiSpec`.

- Hosts: one per region (NA, EU, FE); each seller's requests go to its region's endpoint (the
  seller's credential carries it, `apis/amazon/auth.py`). `SYNC_ASSETS_AMAZON_URL` sends every
  region to one host instead (the offline sandbox, a proxy).
- Auth: a Login-with-Amazon access token per seller in `x-amz-access-token` (the credentials
  resource `amazon_auth`); no API key, no SigV4 (dropped by Amazon in 2023).
- Limits: a token bucket per (seller, operation) with each operation's published rate and burst
  (the models' descriptions); `x-amzn-RateLimit-Limit` on 20x/400/404 answers corrects the rate;
  a 429 `QuotaExceeded` carries no rate header and latches that bucket with backoff.
- Errors: `{"errors": [{code, message, details}]}`; auth failures are 403 `Unauthorized`.
- Reports (create, poll, download) run through `fetch.jobs.SpApiReports`, persisted per window.
"""

from __future__ import annotations

from typing import Any

from ...core.limits import TokenBucket
from ...fetch.auth import Credential
from ...fetch.http import ApiHttpClient
from ...fetch.jobs import SPAPI_REPORT_LIMITS, SpApiReports
from ...fetch.limits import AmznHeaders
from ...fetch.log import DEFAULT_LOG, Log
from ...fetch.spec import ApiSpec

DEFAULT_SPAPI_URL = "https://sellingpartnerapi-na.amazon.com"
CREDENTIALS_RESOURCE = "amazon_auth"

# Default usage plans (rate per second, burst) of the operations the datasets call, from each
# operation's description in the vendored models; a test checks them against the models.
OPERATION_LIMITS: dict[str, TokenBucket] = {
    "getInventorySummaries": TokenBucket(2.0, 2),
    "listFinancialEventGroups": TokenBucket(0.5, 30),
    "listTransactions": TokenBucket(0.5, 10),
    "searchOrders": TokenBucket(0.0056, 20),
    **SPAPI_REPORT_LIMITS,
}


def seller_reports(http: ApiHttpClient, credential: Credential | None, *, log: Log = DEFAULT_LOG,
                   max_budget_wait_s: float | None = None) -> SpApiReports:
    """The Reports API for one seller: its token, its buckets, its regional endpoint."""
    if credential is None:
        raise ValueError("SP-API reports are made per seller: a seller's credential is required")
    return SpApiReports(http, credential.auth, principal=credential.principal, log=log, limits=OPERATION_LIMITS,
                        max_budget_wait_s=max_budget_wait_s, endpoint=credential.endpoint)


AMAZON = ApiSpec(
    name="amazon",
    title="Amazon SP-API",
    base_url=DEFAULT_SPAPI_URL,
    base_url_env="SYNC_ASSETS_AMAZON_URL",
    limits=OPERATION_LIMITS,
    rate_limit_headers=AmznHeaders(),
    credentials_resource=CREDENTIALS_RESOURCE,
    configured_by="SP_API_CLIENT_ID",  # the application's LWA client id: the deployment syncs sellers
    reports=seller_reports,
)

__all__: list[Any] = ["AMAZON", "CREDENTIALS_RESOURCE", "DEFAULT_SPAPI_URL", "OPERATION_LIMITS", "seller_reports"]
