"""The one API resource every SP-API asset shares: the generic resource on Amazon's spec."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ...fetch.resource import ApiResource
from ...fetch.spec import ApiSpec
from .spec import AMAZON


class AmazonResource(ApiResource):
    """Rate-limited SP-API client: token buckets per (seller, operation) shared by every process."""

    spec: ClassVar[ApiSpec] = AMAZON

    # searchOrders refills one token every ~3 minutes: a walk past its burst waits for the budget
    # (that paces it) rather than deferring page after page
    max_budget_wait_s: float = Field(
        default=240.0, ge=1.0, le=3600.0,
        description="Longest a request waits for a seller's operation bucket before the work is deferred (the "
        "slowest operation, searchOrders, refills a token every 180 s); env SYNC_ASSETS_AMAZON__MAX_BUDGET_WAIT_S",
    )
