"""Which EVE SSO token serves a corporation request, and keeping its identity current."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Sequence

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy import Engine

from .sso import tokens
from .sso.crypto import TokenCipher
from .sso.sso import DEFAULT_SSO_URL, EveSso
from ...core.datasets import Dataset
from ...warehouse import PostgresWarehouse
from .resource import EsiResource
from ...fetch.auth import Credential, RefreshingToken
from ...fetch.http import DEFAULT_LOG, Log

ROLES_MAX_AGE = timedelta(hours=1)  # ESI caches /characters/{id}/roles for 3600 s: no point asking sooner


def lookup_identity(esi: EsiResource, access_token: str, character_id: int) -> tuple[int, Sequence[str]]:
    """(corporation id, corporation roles) of a character, from ESI: the public character sheet
    and /characters/{id}/roles (only `roles`: hq/base/other roles do not open corporation routes)."""
    http = esi._client()
    character = http.get_page(f"/characters/{character_id}", {}, None, None).data
    roles = http.get_page(
        f"/characters/{character_id}/roles", {}, None, None, auth=RefreshingToken(lambda refresh: access_token)
    ).data
    return int(character["corporation_id"]), list(roles.get("roles") or [])


class EsiAuthResource(dg.ConfigurableResource):
    """EVE SSO for corporation datasets: picks a token whose scopes and roles allow the route,
    refreshes it (rotation stored at once), and records 403s on the token instead of deleting data."""

    esi: EsiResource
    database_url: str = Field(description="Where the tokens table lives (env SYNC_ASSETS_DATABASE_URL)")
    client_id: str = Field(description="EVE application client id (env ESI_CLIENT_ID)")
    client_secret: str = Field(default="", description="EVE application secret (env ESI_CLIENT_SECRET)")
    token_key: str = Field(description="Fernet key encrypting refresh tokens at rest (env SYNC_ASSETS_TOKEN_KEY)")
    sso_url: str = Field(default=DEFAULT_SSO_URL, description="EVE SSO base URL (env ESI_SSO_URL)")
    sso_issuer: str | None = Field(default=None, description="Accepted JWT issuer host when it differs from sso_url's")

    _sso: EveSso | None = PrivateAttr(default=None)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._sso is not None:
            self._sso.close()
            self._sso = None

    def engine(self) -> Engine:
        return PostgresWarehouse(database_url=self.database_url).engine()

    def sso(self) -> EveSso:
        if self._sso is None:
            self._sso = EveSso(self.sso_url, self.client_id, self.client_secret, issuer=self.sso_issuer)
        return self._sso

    def cipher(self) -> TokenCipher:
        return TokenCipher(self.token_key)

    def credential_for(self, dataset: Dataset, partition_key: str | None, log: Log = DEFAULT_LOG) -> Credential:
        """A credential for the dataset's corporation, or NoUsableToken naming what is missing
        (raised before any ESI data request is made). Its token is refreshed once if ESI answers
        401 mid-walk (a token that expired during a long walk)."""
        assert dataset.auth is not None and partition_key is not None
        corporation_id = int(partition_key)
        engine = self.engine()
        self.recheck_identities(engine, corporation_id, log)
        token = tokens.select_token(engine, corporation_id, dataset.auth.scope, dataset.auth.roles)
        character_id = token.character_id
        first = tokens.access_token(engine, self.sso(), character_id, cipher=self.cipher())  # fails here, before any data request

        def access(refresh: bool) -> str:
            if not refresh:
                return first
            tokens.forget_access_token(engine, character_id)
            return tokens.access_token(engine, self.sso(), character_id, cipher=self.cipher())

        log.info(f"{dataset.key}[{partition_key}]: using the token of {token.label}")
        return Credential(RefreshingToken(access), principal=str(character_id), owner=character_id)

    def recheck_identities(self, engine: Engine, corporation_id: int | None = None, log: Log = DEFAULT_LOG) -> None:
        """Refresh corporation and roles of tokens not checked within the last hour (roles change
        in game; a character may leave the corporation)."""
        now = datetime.now(timezone.utc)
        for token in tokens.list_tokens(engine):
            stale = token.roles_checked_at is None or now - token.roles_checked_at > ROLES_MAX_AGE
            if not stale or token.status not in ("valid", "lost_role"):
                continue
            if corporation_id is not None and token.corporation_id not in (corporation_id, None):
                continue
            try:
                access = tokens.access_token(engine, self.sso(), token.character_id, cipher=self.cipher())
                corporation, roles = self.lookup_identity(access, token.character_id)
            except Exception as exc:  # the token may still serve; selection reports it if not
                log.warning(f"could not re-check {token.label}: {type(exc).__name__}: {exc}")
                continue
            tokens.update_identity(engine, token.character_id, corporation, roles)

    def lookup_identity(self, access_token: str, character_id: int) -> tuple[int, Sequence[str]]:
        return lookup_identity(self.esi, access_token, character_id)

    def report_forbidden(self, credential: Credential, dataset: Dataset, detail: str) -> None:
        """ESI refused the token (role lost, left the corporation): mark it so the next run picks
        another one or fails fast with the reason. Data is never deleted for this."""
        lowered = detail.lower()
        status = "missing_scope" if "scope" in lowered else "lost_role"
        tokens.mark_status(self.engine(), int(credential.owner), status, f"ESI refused {dataset.key}: {detail}")
