"""EVE SSO client (OAuth 2.0 v2): code exchange, refresh with rotation, JWT validation via JWKS.

Endpoints come from the SSO's metadata document (cached per client); the JWK set is cached and
re-fetched when a token names a key id it does not hold (CCP rotating its key). Transient failures
(timeouts, connection errors, 429, 5xx) are retried with exponential backoff and jitter; anything
else maps to one precise error from :mod:`.errors`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlencode, urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from ....core.lazy import lazy
from ....fetch.transport import PooledTransport
from .errors import (
    LOGIN_AGAIN,
    InvalidAccessToken,
    InvalidClient,
    InvalidGrant,
    SsoConfigError,
    SsoRequestError,
    SsoUnavailable,
)

jwt = lazy("jwt")  # PyJWT (and cryptography behind it) loads when a token is first verified, not with the code location

__all__ = [
    "DEFAULT_CALLBACK_URL",
    "DEFAULT_SSO_URL",
    "EVE_AUDIENCE",
    "EveSso",
    "TokenClaims",
    "TokenGrant",
]

DEFAULT_SSO_URL = "https://login.eveonline.com"
DEFAULT_CALLBACK_URL = "http://127.0.0.1:8635/callback"
EVE_AUDIENCE = "EVE Online"
METADATA_PATH = "/.well-known/oauth-authorization-server"
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504, 520})
JWKS_REFETCH_AFTER_S = 300.0  # an unknown kid re-fetches the key set at most this often
CLOCK_LEEWAY_S = 10  # tolerated clock skew between us and the SSO on `exp`
_SUB_PREFIX = "CHARACTER:EVE:"

log = logging.getLogger("sync_assets.apis.esi.sso")


@dataclass(frozen=True)
class TokenClaims:
    """The validated claims of an access token that matter to us."""

    character_id: int
    character_name: str
    scopes: tuple[str, ...]
    owner_hash: str  # changes when the character is sold
    expires_at: datetime
    client_id: str  # azp


@dataclass(frozen=True)
class TokenGrant:
    """A token endpoint answer. ``refresh_token`` is the rotated one: store it, the old one may be dead."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: datetime
    claims: TokenClaims

    def __repr__(self) -> str:
        return (
            f"TokenGrant(access_token=***, refresh_token=***, expires_at={self.expires_at.isoformat()}, "
            f"character={self.claims.character_name} ({self.claims.character_id}))"
        )


class _Transient(Exception):
    """One attempt failed in a way worth retrying (never leaves this module)."""


class EveSso:
    """Thread-safe EVE SSO client for one application (client id + secret)."""

    def __init__(
        self,
        base_url: str = DEFAULT_SSO_URL,
        client_id: str = "",
        client_secret: str = "",
        callback_url: str = DEFAULT_CALLBACK_URL,
        *,
        issuer: str | None = None,
        timeout: float = 15.0,
        attempts: int = 4,
        retry_wait: tuple[float, float] = (0.5, 8.0),
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``issuer``: the host whose tokens we accept (``iss`` may be ``host`` or ``https://host``);
        default the host of ``base_url``. Set it when the SSO is reached through another name
        (the sandbox signs as login.eveonline.com while serving on 127.0.0.1)."""
        if not client_id:
            raise SsoConfigError("ESI_CLIENT_ID is not set: register an application at https://developers.eveonline.com")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SsoConfigError(f"ESI_SSO_URL must be an http(s) URL such as {DEFAULT_SSO_URL}, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret  # empty: a PKCE-only (public) application
        self.callback_url = callback_url
        host = parts.netloc
        if issuer:
            host = urlsplit(issuer if "://" in issuer else f"https://{issuer}").netloc
        self.accepted_issuers = frozenset({host, f"https://{host}", f"{parts.scheme}://{host}"})
        self.attempts = max(1, attempts)
        self._retry_wait = retry_wait
        self._sleep = sleep
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers={"User-Agent": "sync_assets/0.1 (EVE SSO client; httpx)", "Accept": "application/json"},
            transport=transport or PooledTransport(),
        )
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_fetched_at = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> "EveSso":
        """ESI_SSO_URL, ESI_CLIENT_ID, ESI_CLIENT_SECRET, ESI_CALLBACK_URL and (optional) ESI_SSO_ISSUER."""
        env = os.environ if env is None else env
        return cls(
            env.get("ESI_SSO_URL") or DEFAULT_SSO_URL,
            env.get("ESI_CLIENT_ID") or "",
            env.get("ESI_CLIENT_SECRET") or "",
            env.get("ESI_CALLBACK_URL") or DEFAULT_CALLBACK_URL,
            issuer=env.get("ESI_SSO_ISSUER") or None,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"EveSso(base_url={self.base_url!r}, client_id={self.client_id!r}, client_secret=***)"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "EveSso":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ OAuth

    def authorize_url(self, scopes: Sequence[str], state: str, code_challenge: str, *, redirect_uri: str | None = None) -> str:
        """Where the user logs in (authorization-code flow with PKCE S256); ``redirect_uri`` defaults
        to the configured callback URL, which must match the application's registration."""
        query = {
            "response_type": "code",
            "redirect_uri": redirect_uri or self.callback_url,
            "client_id": self.client_id,
            "scope": " ".join(scopes),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        return f"{self._endpoint('authorization_endpoint')}?{urlencode(query)}"

    def exchange_code(self, code: str, code_verifier: str) -> TokenGrant:
        return self._token_request(
            "code exchange", {"grant_type": "authorization_code", "code": code, "code_verifier": code_verifier}
        )

    def refresh(self, refresh_token: str) -> TokenGrant:
        """A new access token and the ROTATED refresh token (the one submitted may stop working)."""
        return self._token_request("token refresh", {"grant_type": "refresh_token", "refresh_token": refresh_token})

    def revoke(self, refresh_token: str) -> None:
        response, _ = self._send(
            "token revocation",
            self._endpoint("revocation_endpoint"),
            self._with_client({"token": refresh_token, "token_type_hint": "refresh_token"}),
        )
        if response.status_code >= 400:
            self._raise_for_error("token revocation", response, ambiguous=False)

    # ------------------------------------------------------------------ JWT

    def validate(self, access_token: str) -> TokenClaims:
        """Check an access token as CCP documents: RS256 signature from the JWKS, ``iss``, ``aud``
        holding our client id and "EVE Online", ``exp``; parse ``sub`` and ``scp`` (list or string)."""
        try:
            header = jwt.get_unverified_header(access_token)
        except jwt.DecodeError:
            raise InvalidAccessToken("the access token is not a JWT") from None
        if header.get("alg") != "RS256":
            raise InvalidAccessToken(f"access token signed with {header.get('alg')!r}, expected RS256")
        key = self._signing_key(str(header.get("kid", "")))
        try:
            claims = jwt.decode(
                access_token,
                key.key,
                algorithms=["RS256"],
                audience=self.client_id,
                leeway=CLOCK_LEEWAY_S,
                options={"require": ["exp", "sub", "iss", "aud"], "verify_iat": False, "verify_iss": False},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidAccessToken("the access token has expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidAccessToken(f"the access token was not issued to this application (aud lacks {self.client_id!r})") from None
        except jwt.InvalidSignatureError:
            raise InvalidAccessToken("the access token's signature does not match the SSO's published key") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidAccessToken(f"the access token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidAccessToken(f"invalid access token ({type(exc).__name__}: {exc})") from None
        aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if EVE_AUDIENCE not in aud:
            raise InvalidAccessToken(f"the access token's audience lacks {EVE_AUDIENCE!r}")
        if claims["iss"] not in self.accepted_issuers:
            raise InvalidAccessToken(
                f"the access token was issued by {claims['iss']!r}, expected one of {sorted(self.accepted_issuers)}"
            )
        sub = str(claims["sub"])
        if not sub.startswith(_SUB_PREFIX) or not sub[len(_SUB_PREFIX) :].isdigit():
            raise InvalidAccessToken(f"unexpected subject {sub!r} (expected {_SUB_PREFIX}<character_id>)")
        scp = claims.get("scp") or []
        scopes = (scp,) if isinstance(scp, str) else tuple(str(s) for s in scp)
        if not isinstance(claims["exp"], (int, float)):
            raise InvalidAccessToken("the access token's exp is not a number")
        return TokenClaims(
            character_id=int(sub[len(_SUB_PREFIX) :]),
            character_name=str(claims.get("name", "")),
            scopes=scopes,
            owner_hash=str(claims.get("owner", "")),
            expires_at=datetime.fromtimestamp(claims["exp"], tz=timezone.utc),
            client_id=str(claims.get("azp", "")),
        )

    def _signing_key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            jwks, fetched_at = self._jwks, self._jwks_fetched_at
        if jwks is None or (kid not in _kids(jwks) and time.monotonic() - fetched_at > JWKS_REFETCH_AFTER_S):
            jwks = self._fetch_jwks()  # first use, or CCP rotated its key
        if kid not in _kids(jwks):
            raise InvalidAccessToken(f"the access token names signing key {kid!r}, absent from the SSO's key set")
        key = jwks[kid]
        if key.key_type != "RSA":
            raise InvalidAccessToken(f"signing key {kid!r} is {key.key_type}, expected RSA")
        return key

    def _fetch_jwks(self) -> jwt.PyJWKSet:
        response, _ = self._send("JWKS fetch", self._endpoint("jwks_uri"), None, method="GET")
        if response.status_code != 200:
            self._raise_for_error("JWKS fetch", response, ambiguous=False)
        try:
            jwks = jwt.PyJWKSet.from_dict(response.json())
        except (ValueError, jwt.PyJWKSetError) as exc:
            raise SsoRequestError(f"the SSO's key set is unusable ({exc})") from None
        with self._lock:
            self._jwks, self._jwks_fetched_at = jwks, time.monotonic()
        return jwks

    # ------------------------------------------------------------------ HTTP

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is not None:
                return self._metadata
        url = self.base_url + METADATA_PATH
        response, _ = self._send("metadata fetch", url, None, method="GET")
        if response.status_code != 200:
            self._raise_for_error("metadata fetch", response, ambiguous=False)
        try:
            metadata = response.json()
            missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not metadata.get(k)]
        except (ValueError, AttributeError):
            metadata, missing = {}, ["(not JSON)"]
        if missing:
            raise SsoRequestError(f"{url} is not an OAuth metadata document (missing {', '.join(missing)}); check ESI_SSO_URL")
        with self._lock:
            self._metadata = metadata
        return metadata

    def _endpoint(self, name: str) -> str:
        url = self.metadata().get(name)
        if not url and name == "revocation_endpoint":
            return self.base_url + "/v2/oauth/revoke"
        return str(url)

    def _with_client(self, form: dict[str, str]) -> dict[str, str]:
        return form if self._client_secret else {**form, "client_id": self.client_id}

    def _token_request(self, what: str, form: dict[str, str]) -> TokenGrant:
        response, ambiguous = self._send(what, self._endpoint("token_endpoint"), self._with_client(form))
        if response.status_code != 200:
            self._raise_for_error(what, response, ambiguous)
        try:
            body = response.json()
            access_token = str(body["access_token"])
            # No refresh_token in the answer: the submitted one stays valid.
            refresh_token = str(body.get("refresh_token") or form.get("refresh_token") or "")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SsoRequestError(f"EVE SSO {what}: HTTP 200 without an access_token in a JSON body") from None
        if not refresh_token:
            raise SsoRequestError(f"EVE SSO {what}: no refresh_token in the answer (was a scope requested?)")
        try:
            claims = self.validate(access_token)
        except InvalidAccessToken as exc:
            exc.rotated_refresh_token = refresh_token
            raise
        return TokenGrant(access_token, refresh_token, claims.expires_at, claims)

    def _send(
        self, what: str, url: str, form: dict[str, str] | None, *, method: str = "POST"
    ) -> tuple[httpx.Response, bool]:
        """The first non-transient response, and whether an EARLIER attempt may have reached the SSO.

        That matters for refresh tokens: if a lost answer had rotated the token, the retry gets
        invalid_grant although the user revoked nothing.
        """
        reached = False  # some attempt may have been processed by the SSO
        auth = (self.client_id, self._client_secret) if (form is not None and self._client_secret) else None

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(f"EVE SSO {what}: {exc}; retry {state.attempt_number}/{self.attempts - 1} in {wait:.1f}s")

        retrying = Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(multiplier=self._retry_wait[0], max=self._retry_wait[1]),
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    earlier = reached
                    try:
                        response = self._http.request(method, url, data=form, auth=auth)
                    except httpx.TransportError as exc:
                        # A failed connect never sent the request; anything later might have been processed.
                        reached = reached or not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                        raise _Transient(f"{type(exc).__name__} talking to {urlsplit(url).netloc}") from None
                    if response.status_code in TRANSIENT_STATUSES:
                        reached = reached or response.status_code != 429
                        raise _Transient(f"HTTP {response.status_code} ({_error_text(response)})")
                    return response, earlier
        except _Transient as exc:
            raise SsoUnavailable(
                f"EVE SSO {what} failed {self.attempts} times, last: {exc}; nothing was stored, try again later"
            ) from None
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _raise_for_error(self, what: str, response: httpx.Response, ambiguous: bool) -> None:
        error, description = _oauth_error(response)
        detail = f"{error}: {description}" if description else error
        if response.status_code == 401 or error == "invalid_client":
            raise InvalidClient(
                f"EVE SSO rejected this application's credentials ({detail}): check ESI_CLIENT_ID and "
                f"ESI_CLIENT_SECRET against https://developers.eveonline.com/applications"
            )
        if error in ("invalid_grant", "invalid_token"):
            if ambiguous:
                raise SsoUnavailable(
                    f"EVE SSO {what}: {detail} after an earlier attempt failed in flight; that attempt may have "
                    f"rotated the token, so it is not marked invalid yet (the next attempt decides)"
                )
            raise InvalidGrant(
                f"EVE SSO rejected the {'authorization code' if 'code' in what else 'refresh token'} ({detail}); "
                f"{LOGIN_AGAIN}",
                error=error,
                description=description,
            )
        raise SsoRequestError(f"EVE SSO {what}: HTTP {response.status_code} ({detail})")


def _kids(jwks: jwt.PyJWKSet) -> set[str]:
    return {k.key_id for k in jwks.keys if k.key_id}


def _oauth_error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
        if isinstance(body, dict):
            return str(body.get("error") or f"HTTP {response.status_code}")[:100], str(body.get("error_description") or "")[:300]
    except ValueError:
        pass
    return f"HTTP {response.status_code}", _error_text(response)


def _error_text(response: httpx.Response) -> str:
    text = response.text[:300].strip()
    if "<html" in text.lower():
        return "HTML error page"
    return text or response.reason_phrase
