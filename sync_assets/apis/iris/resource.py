"""The one API resource every IRIS asset shares: the generic resource on IRIS's spec."""

from __future__ import annotations

from typing import ClassVar

from ...fetch.resource import ApiResource
from ...fetch.spec import ApiSpec
from .spec import IRIS


class IrisResource(ApiResource):
    """Rate-limited IRIS CRM client (500 requests a minute per key, shared by every process)."""

    spec: ClassVar[ApiSpec] = IRIS
