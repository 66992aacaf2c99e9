"""Errors of EVE SSO authentication and the token store.

Every message is meant for the operator: it names the setting or the character involved and what
to do. None ever carries a key, client secret, refresh token or access token.
"""

from __future__ import annotations

from ....core.errors import AuthFailed, FailureClass

LOGIN_AGAIN = "log in again with `sync-assets esi login`"


class AuthError(AuthFailed):
    """Base class: the CLI prints these without a traceback."""


class TokenKeyError(AuthError):
    """SYNC_ASSETS_TOKEN_KEY is missing or malformed, or does not decrypt the stored tokens."""

    failure_class = FailureClass.CONFIGURATION


class SsoError(AuthError):
    """EVE SSO refused or failed a request."""


class InvalidGrant(SsoError):
    """Permanent: the refresh token (or code) is revoked, expired or rotated away; the user must log in again."""

    def __init__(self, message: str, *, error: str = "invalid_grant", description: str = "", character_id: int | None = None):
        self.error, self.description, self.character_id = error, description, character_id
        super().__init__(message)


class InvalidClient(SsoError):
    """The application's credentials (ESI_CLIENT_ID / ESI_CLIENT_SECRET) were rejected: a configuration error."""

    failure_class = FailureClass.CONFIGURATION


class SsoRequestError(SsoError):
    """Any other 4xx answer of the SSO: a bug or a misconfiguration, retrying cannot help."""

    failure_class = FailureClass.CONFIGURATION


class SsoUnavailable(SsoError):
    """Transient: 5xx, 429 or a network failure persisted through the retries. Nothing was stored."""

    failure_class = FailureClass.TRANSIENT


class InvalidAccessToken(SsoError):
    """An access token failed JWT validation (signature, issuer, audience, expiry or claims).

    Raised by a refresh whose answer did not validate, ``rotated_refresh_token`` holds the refresh
    token that came with it: the submitted one may already be dead, so the caller stores this one.
    It is never part of the message.
    """

    rotated_refresh_token: str | None = None


class SsoConfigError(AuthError):
    """An SSO setting (ESI_CLIENT_ID, ESI_CLIENT_SECRET, ESI_SSO_URL, ESI_CALLBACK_URL) is missing or invalid."""

    failure_class = FailureClass.CONFIGURATION


class TokenStoreError(AuthError):
    """The token store cannot answer (unknown character, unreachable database...)."""


class UnknownCharacter(TokenStoreError, LookupError):
    """No stored token for that character."""


class NoUsableToken(TokenStoreError, LookupError):
    """No valid token of the corporation has the scope and roles a route needs."""


class LoginError(AuthError):
    """The interactive login did not complete (timeout, state mismatch, the user declined)."""
