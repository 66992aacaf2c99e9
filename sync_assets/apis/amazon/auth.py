"""SP-API authorization for seller-partitioned datasets: which LWA access token a request carries,
refreshing it once when SP-API says it expired, and recording on the seller what cannot be fixed
by a refresh.

>>> auth = AmazonAuthResource(database_url=..., client_id=..., client_secret=..., token_key=...)
>>> auth.add_seller("A2EXAMPLE12345", refresh_token, "na", ["ATVPDKIKX0DER"])  # a real grant first
>>> credential = auth.credential_for(dataset, "A2EXAMPLE12345", log)            # partition = seller id
>>> httpx.get(url, auth=credential.auth)                                        # x-amz-access-token

SP-API answers auth failures with 403 ``Unauthorized`` and says why in ``details``: "The access
token you provided has expired." (or "... is revoked, malformed or invalid.") gets one refresh
and the request again (:class:`SpApiToken`, a :class:`~sync_assets.fetch.auth.RefreshingToken`);
"The LWA secret token you provided has expired." marks the seller ``secret_expired`` and raises
:class:`~.sellers.LwaSecretExpired` telling to rotate the secret in ``SP_API_CLIENT_SECRET``.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Generator, Iterable, Mapping

import dagster as dg
import httpx
from pydantic import Field, PrivateAttr
from sqlalchemy import Engine

from ...core.datasets import Dataset
from ...fetch.auth import Credential, RefreshingToken
from ...fetch.log import DEFAULT_LOG, Log
from ...warehouse import PostgresWarehouse
from ..esi.sso.crypto import KEY_SETTING, TokenCipher
from . import sellers
from .lwa import (
    CLIENT_ID_SETTING,
    CLIENT_SECRET_SETTING,
    DEFAULT_LWA_URL,
    LWA_URL_SETTING,
    LwaClient,
    LwaConfigError,
    LwaError,
    LwaInvalidClient,
    LwaInvalidGrant,
    LwaUnavailable,
)
from .sellers import (
    LwaSecretExpired,
    SellerInfo,
    SellerNotUsable,
    UnknownSeller,
    access_token,
    add_seller,
    list_sellers,
    secret_expired_detail,
)

__all__ = [
    "ACCESS_TOKEN_HEADER",
    "CLIENT_ID_SETTING",
    "CLIENT_SECRET_SETTING",
    "DATABASE_URL_SETTING",
    "KEY_SETTING",
    "LWA_URL_SETTING",
    "AmazonAuthResource",
    "LwaClient",
    "LwaConfigError",
    "LwaError",
    "LwaInvalidClient",
    "LwaInvalidGrant",
    "LwaSecretExpired",
    "LwaUnavailable",
    "SellerInfo",
    "SellerNotUsable",
    "SpApiToken",
    "UnknownSeller",
    "access_token",
    "access_token_refused",
    "add_seller",
    "list_sellers",
    "secret_expired",
]

ACCESS_TOKEN_HEADER = "x-amz-access-token"
DATABASE_URL_SETTING = "SYNC_ASSETS_DATABASE_URL"
ENDPOINT_SETTING = "SYNC_ASSETS_AMAZON_URL"

log = logging.getLogger("sync_assets.apis.amazon.auth")


# ---------------------------------------------------------------------- SP-API's 403 answers


def _unauthorized_details(response: httpx.Response) -> list[str]:
    """The ``details`` of SP-API's 403 ``errors`` (lower-cased); empty for any other answer."""
    if response.status_code != 403:
        return []
    try:
        body = response.json()
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    return [str(e.get("details") or "").lower() for e in errors if isinstance(e, dict)]


def access_token_refused(response: httpx.Response) -> bool:
    """403 "The access token you provided has expired." (or "is revoked, malformed or invalid."):
    a new access token may help (a revoked app then fails at LWA with invalid_grant, clearly)."""
    return any("access token" in d and "secret" not in d for d in _unauthorized_details(response))


def secret_expired(response: httpx.Response) -> bool:
    """403 "The LWA secret token you provided has expired.": no token helps until the app's secret
    is rotated."""
    return any("secret" in d and "expired" in d for d in _unauthorized_details(response))


class SpApiToken(RefreshingToken):
    """A seller's LWA access token in ``x-amz-access-token``, refreshed once when SP-API refuses it
    as expired or invalid; an expired client secret calls ``on_secret_expired`` (which raises)
    instead of refreshing in vain."""

    def __init__(self, token: Callable[[bool], str], on_secret_expired: Callable[[], None] | None = None):
        super().__init__(token, header=ACCESS_TOKEN_HEADER, scheme=None, expired=access_token_refused)
        self._on_secret_expired = on_secret_expired

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        flow = super().auth_flow(request)  # the refresh-once flow, each of its answers checked first
        outgoing = next(flow)
        while True:
            response = yield outgoing
            if self._on_secret_expired is not None and secret_expired(response):
                self._on_secret_expired()
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return

    def __repr__(self) -> str:
        return f"SpApiToken({ACCESS_TOKEN_HEADER}: ***)"


# ---------------------------------------------------------------------- the resource


class AmazonAuthResource(dg.ConfigurableResource):
    """LWA for SP-API datasets partitioned by seller: hands out each seller's access token (cached
    in Postgres for every process, refreshed once when due or refused) and records permanent
    refusals on the seller instead of deleting anything."""

    database_url: str = Field(description=f"Where the sellers table lives (env {DATABASE_URL_SETTING})")
    client_id: str = Field(description=f"LWA client identifier of the SP-API application (env {CLIENT_ID_SETTING})")
    client_secret: str = Field(description=f"LWA client secret of the SP-API application (env {CLIENT_SECRET_SETTING})",
                               repr=False)
    token_key: str = Field(description=f"Fernet key encrypting tokens at rest (env {KEY_SETTING})", repr=False)
    lwa_url: str = Field(default=DEFAULT_LWA_URL, description=f"LWA token endpoint (env {LWA_URL_SETTING})")
    endpoint: str = Field(default="", description=f"One SP-API base URL for every seller (the offline sandbox, a proxy; "
                          f"env {ENDPOINT_SETTING}). Empty: each seller's regional endpoint (NA, EU or FE, stored with it)")

    _lwa: LwaClient | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "AmazonAuthResource":
        """Built from SYNC_ASSETS_DATABASE_URL, SP_API_CLIENT_ID, SP_API_CLIENT_SECRET,
        SYNC_ASSETS_TOKEN_KEY and (optional) SP_API_LWA_URL; missing values fail on first use,
        naming the variable."""
        env = os.environ if env is None else env
        return cls(
            database_url=env.get(DATABASE_URL_SETTING) or "",
            client_id=env.get(CLIENT_ID_SETTING) or "",
            client_secret=env.get(CLIENT_SECRET_SETTING) or "",
            token_key=env.get(KEY_SETTING) or "",
            lwa_url=env.get(LWA_URL_SETTING) or DEFAULT_LWA_URL,
            endpoint=env.get(ENDPOINT_SETTING) or "",
        )

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        if self._lwa is not None:
            self._lwa.close()
            self._lwa = None

    def engine(self) -> Engine:
        return PostgresWarehouse(database_url=self.database_url).engine()

    def lwa(self) -> LwaClient:
        if self._lwa is None:
            self._lwa = LwaClient(self.client_id, self.client_secret, self.lwa_url)
        return self._lwa

    def cipher(self) -> TokenCipher:
        return TokenCipher(self.token_key, KEY_SETTING)

    # ------------------------------------------------------------------ sellers

    def add_seller(self, seller_id: str, refresh_token: str, region: str, marketplaces: Iterable[str]) -> SellerInfo:
        """:func:`~.sellers.add_seller` with this resource's database, key and application."""
        return add_seller(self.engine(), self.cipher(), self.lwa(), seller_id, refresh_token, region, marketplaces)

    def sellers(self) -> list[SellerInfo]:
        return list_sellers(self.engine())

    def seller(self, seller_id: str) -> SellerInfo:
        return sellers.get_seller(self.engine(), seller_id)

    # ------------------------------------------------------------------ credentials

    def credential_for(self, dataset: Dataset, partition_key: str | None, log: Log = DEFAULT_LOG) -> Credential:
        """The credential of the seller ``partition_key``: its access token is obtained here, so a
        revoked, unknown or unusable seller fails before any data request. Mid-walk, an access token
        SP-API calls expired is refreshed once (once across processes) and the request sent again."""
        label = getattr(dataset, "key", str(dataset))
        if not partition_key:
            raise SellerNotUsable(f"{label}: SP-API datasets are partitioned by seller id; no partition key was given")
        seller_id = partition_key
        engine, cipher, lwa = self.engine(), self.cipher(), self.lwa()
        seller = sellers.get_seller(engine, seller_id)
        current = access_token(engine, cipher, lwa, seller_id)
        # RefreshingToken calls this under its lock: `current` is the token the refused request carried
        holder = [current]

        def token(refresh: bool) -> str:
            if refresh:
                holder[0] = access_token(engine, cipher, lwa, seller_id, stale=holder[0])
                log.info(f"{label}[{seller_id}]: SP-API refused the access token (expired); using a new one")
            return holder[0]

        def on_secret_expired() -> None:
            detail = secret_expired_detail(seller_id)
            sellers.mark_status(engine, seller_id, "secret_expired", detail, client_fingerprint=lwa.fingerprint)
            raise LwaSecretExpired(detail)

        log.info(f"{label}[{seller_id}]: using the LWA authorization of seller {seller_id}")
        return Credential(SpApiToken(token, on_secret_expired), principal=seller_id, owner=seller_id,
                          endpoint=(self.endpoint or seller.endpoint).rstrip("/"),
                          scope={"marketplace_id": seller.marketplace_ids})

    def report_forbidden(self, credential: Credential, dataset: Dataset, detail: str) -> None:
        """SP-API refused a request of this seller with 403 after the auth flow's one refresh: an
        expired client secret marks the seller; a refused access token is dropped from the cache
        (the next run asks LWA, which tells a revoked app by invalid_grant). Nothing is deleted."""
        seller_id = str(credential.owner)
        lowered = detail.lower()
        label = getattr(dataset, "key", str(dataset))
        if "secret" in lowered and "expired" in lowered:
            sellers.mark_status(self.engine(), seller_id, "secret_expired", secret_expired_detail(seller_id),
                                client_fingerprint=self.lwa().fingerprint)
        elif "access token" in lowered:
            sellers.forget_access_token(self.engine(), seller_id)
        else:  # a role the app lacks, a marketplace the seller is not in: the error says it, the seller stays valid
            log.warning(f"{label}[{seller_id}]: SP-API refused the request (403: {detail[:300]})")
