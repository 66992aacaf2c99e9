"""EVE SSO for the authenticated (corporation) ESI routes: tokens, their store, the login CLI.

>>> sso = EveSso.from_env()                      # ESI_CLIENT_ID, ESI_CLIENT_SECRET, ESI_SSO_URL...
>>> token = select_token(engine, corporation_id, "esi-assets.read_corporation_assets.v1", ["Director"])
>>> bearer = access_token(engine, sso, token.character_id)   # cached across processes, refreshed once
"""

from .crypto import KEY_SETTING, TokenCipher, generate_key
from .errors import (
    AuthError,
    InvalidAccessToken,
    InvalidClient,
    InvalidGrant,
    LoginError,
    NoUsableToken,
    SsoConfigError,
    SsoError,
    SsoRequestError,
    SsoUnavailable,
    TokenKeyError,
    TokenStoreError,
    UnknownCharacter,
)
from .sso import DEFAULT_CALLBACK_URL, DEFAULT_SSO_URL, EveSso, TokenClaims, TokenGrant
from .tokens import (
    MIN_VALIDITY_S,
    STATUSES,
    TOKENS_TABLE,
    Lookup,
    TokenInfo,
    access_token,
    add_refresh_token,
    ensure_tokens_table,
    forget_access_token,
    get_token,
    list_tokens,
    mark_status,
    select_token,
    store_grant,
    update_identity,
)

__all__ = [
    "DEFAULT_CALLBACK_URL",
    "DEFAULT_SSO_URL",
    "KEY_SETTING",
    "MIN_VALIDITY_S",
    "STATUSES",
    "TOKENS_TABLE",
    "AuthError",
    "EveSso",
    "InvalidAccessToken",
    "InvalidClient",
    "InvalidGrant",
    "LoginError",
    "Lookup",
    "NoUsableToken",
    "SsoConfigError",
    "SsoError",
    "SsoRequestError",
    "SsoUnavailable",
    "TokenCipher",
    "TokenClaims",
    "TokenGrant",
    "TokenInfo",
    "TokenKeyError",
    "TokenStoreError",
    "UnknownCharacter",
    "access_token",
    "add_refresh_token",
    "ensure_tokens_table",
    "forget_access_token",
    "generate_key",
    "get_token",
    "list_tokens",
    "mark_status",
    "select_token",
    "store_grant",
    "update_identity",
]
