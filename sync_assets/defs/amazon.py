"""Amazon SP-API: FBA inventory, finances, reimbursements, the inventory ledger, orders and the
reimbursement claims still owed, per seller. Loaded when the deployment uses it: SP_API_CLIENT_ID
set, or `amazon` named in SYNC_ASSETS_APIS."""

from __future__ import annotations

import os

import dagster as dg

from sync_assets.apis.amazon import AMAZON, AMAZON_DATASETS, SELLERS_PARTITIONS, AmazonResource
from sync_assets.apis.amazon.auth import AmazonAuthResource
from sync_assets.apis.amazon.lwa import CLIENT_ID_SETTING, CLIENT_SECRET_SETTING, DEFAULT_LWA_URL, LWA_URL_SETTING
from sync_assets.apis.amazon.sellers import list_sellers
from sync_assets.apis.esi.sso.crypto import KEY_SETTING
from sync_assets.orchestration.apis import ApiDefinition, enabled
from sync_assets.orchestration.build import DATABASE_URL_ENV, api_definitions, budget_settings


def seller_partitions_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name="amazon_sellers_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={"warehouse"},  # sellers live in the data database; no LWA call to list them
        description="Adds a seller partition when a seller's authorization is stored (`sync-assets amazon add-seller`); "
        "reports (never deletes) sellers whose authorization stopped working.",
    )
    def amazon_sellers_sensor(context: dg.SensorEvaluationContext):
        stored = list_sellers(getattr(context.resources, "warehouse").engine())
        known = set(context.instance.get_dynamic_partitions(SELLERS_PARTITIONS))
        new = sorted(s.seller_id for s in stored if s.status == "valid" and s.seller_id not in known)
        unusable = sorted(f"{s.seller_id} ({s.status})" for s in stored if s.status != "valid")
        report = f"; not usable (partition and data kept): {', '.join(unusable)}" if unusable else ""
        if unusable:
            context.log.warning(f"sellers whose authorization does not work: {', '.join(unusable)}")
        if not new:
            return dg.SkipReason(f"no new seller ({len(known)} known){report}")
        context.log.info(f"adding seller partitions: {', '.join(new)}")
        return dg.SensorResult(dynamic_partitions_requests=[
            dg.DynamicPartitionsDefinition(name=SELLERS_PARTITIONS).build_add_request(new)])

    return amazon_sellers_sensor


def amazon_api(amazon: AmazonResource | None = None, amazon_auth: AmazonAuthResource | None = None) -> ApiDefinition:
    """SP-API wired from the environment: SP_API_CLIENT_ID/SECRET (the application's LWA
    credentials), SYNC_ASSETS_TOKEN_KEY (encrypts sellers' tokens), SP_API_LWA_URL and
    SYNC_ASSETS_AMAZON_URL (one endpoint for every region: the sandbox) when not Amazon's."""
    endpoint = os.environ.get(AMAZON.base_url_env) or ""
    amazon = amazon or AmazonResource(base_url=endpoint, budget_database_url=dg.EnvVar(DATABASE_URL_ENV),
                                      **budget_settings("amazon"))
    amazon_auth = amazon_auth or AmazonAuthResource(
        database_url=dg.EnvVar(DATABASE_URL_ENV),
        client_id=dg.EnvVar(CLIENT_ID_SETTING),
        client_secret=dg.EnvVar(CLIENT_SECRET_SETTING),
        token_key=dg.EnvVar(KEY_SETTING),
        lwa_url=os.environ.get(LWA_URL_SETTING) or DEFAULT_LWA_URL,
        endpoint=endpoint,
    )
    return ApiDefinition(AMAZON, AMAZON_DATASETS, amazon, credentials=amazon_auth, sensors=(seller_partitions_sensor(),))


if enabled(AMAZON):
    defs = api_definitions(amazon_api())
