"""EVE Online ESI: public market data and the corporation datasets (EVE SSO tokens)."""

from __future__ import annotations

import os

import dagster as dg

from sync_assets.apis.esi import ESI_DATASETS, EsiResource
from sync_assets.apis.esi.auth import EsiAuthResource
from sync_assets.apis.esi.datasets import CORPORATIONS
from sync_assets.apis.esi.spec import DEFAULT_ESI_URL, ESI
from sync_assets.apis.esi.sso.sso import DEFAULT_SSO_URL
from sync_assets.orchestration.apis import ApiDefinition, enabled
from sync_assets.orchestration.build import DATABASE_URL_ENV, api_definitions, budget_settings
from sync_assets.orchestration.sensors import build_corporation_sensor


def esi_api(esi: EsiResource | None = None, esi_auth: EsiAuthResource | None = None) -> ApiDefinition:
    """ESI wired from the environment (SYNC_ASSETS_ESI_URL, ESI_CLIENT_ID/SECRET, SYNC_ASSETS_TOKEN_KEY)."""
    esi = esi or EsiResource(base_url=os.environ.get(ESI.base_url_env) or DEFAULT_ESI_URL,
                             budget_database_url=dg.EnvVar(DATABASE_URL_ENV), **budget_settings("esi"))
    esi_auth = esi_auth or EsiAuthResource(
        esi=esi,
        database_url=dg.EnvVar(DATABASE_URL_ENV),
        client_id=dg.EnvVar("ESI_CLIENT_ID"),
        client_secret=dg.EnvVar("ESI_CLIENT_SECRET"),
        token_key=dg.EnvVar("SYNC_ASSETS_TOKEN_KEY"),
        sso_url=os.environ.get("ESI_SSO_URL") or DEFAULT_SSO_URL,
        sso_issuer=os.environ.get("ESI_SSO_ISSUER") or None,
    )
    return ApiDefinition(ESI, ESI_DATASETS, esi, credentials=esi_auth,
                         sensors=(build_corporation_sensor(CORPORATIONS.dynamic or ""),))


if enabled(ESI):
    defs = api_definitions(esi_api())
