"""IRIS CRM (Ireland Pay): merchants, transactions, residuals and monthly metrics. Loaded when the
deployment uses it: IRIS_API_KEY set, or `iris` named in SYNC_ASSETS_APIS."""

from __future__ import annotations

import os

import dagster as dg

from sync_assets.apis.iris import IRIS, IRIS_DATASETS, IrisResource
from sync_assets.orchestration.apis import ApiDefinition, enabled
from sync_assets.orchestration.build import DATABASE_URL_ENV, api_definitions, budget_settings


def iris_api(iris: IrisResource | None = None) -> ApiDefinition:
    """IRIS wired from the environment (SYNC_ASSETS_IRIS_URL: the tenant's `/api/v1`, IRIS_API_KEY)."""
    iris = iris or IrisResource(base_url=os.environ.get(IRIS.base_url_env) or IRIS.base_url,
                                api_key=dg.EnvVar(IRIS.api_key.env),  # type: ignore[union-attr]
                                budget_database_url=dg.EnvVar(DATABASE_URL_ENV), **budget_settings("iris"))
    return ApiDefinition(IRIS, IRIS_DATASETS, iris)


if enabled(IRIS):
    defs = api_definitions(iris_api())
