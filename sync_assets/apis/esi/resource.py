"""The one API resource every ESI asset shares: the generic resource on ESI's spec."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ... import __version__
from ...fetch.resource import ApiResource
from ...fetch.spec import ApiSpec
from .spec import COMPATIBILITY_DATE, DEFAULT_ESI_URL, ESI

DEFAULT_USER_AGENT = f"sync_assets/{__version__} (Dagster ESI sync; python-httpx)"


class EsiResource(ApiResource):
    """Rate-limit-aware, ETag-aware ESI client. Returns snapshots; never writes tables."""

    spec: ClassVar[ApiSpec] = ESI

    base_url: str = Field(default=DEFAULT_ESI_URL, description="ESI base URL (env SYNC_ASSETS_ESI_URL)")
    user_agent: str = Field(default=DEFAULT_USER_AGENT, description="CCP asks for an app name and a contact")


__all__ = ["COMPATIBILITY_DATE", "DEFAULT_ESI_URL", "EsiResource"]
