"""IRIS CRM (iriscrm.com; Ireland Pay's instance is https://crm.ireland-pay.com/api/v1): what the
vendor's OpenAPI v1.23.0 says, as an `ApiSpec`.

- Auth: `X-API-KEY` on every request (a user's token: it sees what that user sees).
- Limits: 500 requests a minute per key, stated in `X-RateLimit-Limit`/`-Remaining`, 429 with
  `Retry-After` beyond (Laravel's throttle): one sliding window shared by every route.
- Errors: `{"message": …}`; 405 "Validation exception" (or Laravel's 422) for a bad parameter.
- Lists: Laravel's paginator (`page`, `per_page` from each route's allowed values, `meta.last_page`).
"""

from __future__ import annotations

from ...core.limits import SlidingWindow
from ...fetch.spec import ApiKeyAuth, ApiSpec

DEFAULT_IRIS_URL = "https://crm.ireland-pay.com/api/v1"  # a tenant's own host: configurable

IRIS = ApiSpec(
    name="iris",
    title="IRIS CRM",
    base_url=DEFAULT_IRIS_URL,
    base_url_env="SYNC_ASSETS_IRIS_URL",
    api_key=ApiKeyAuth(header="X-API-KEY", env="IRIS_API_KEY"),
    default_limit=SlidingWindow(capacity=500, window_s=60),
)
