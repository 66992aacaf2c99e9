"""Login with Amazon (LWA): the refresh-token grant that turns a seller's refresh token into an
SP-API access token, and the errors it can end in.

``POST https://api.amazon.com/auth/o2/token`` with ``grant_type=refresh_token``, the refresh token
and the application's ``client_id`` / ``client_secret`` answers 200 ``{access_token, token_type,
expires_in, refresh_token}``; 401 ``invalid_client`` when the application's credentials are wrong
(or its secret was rotated away); 400 ``invalid_grant`` when the refresh token is unknown or the
seller revoked the app. Transient failures (timeouts, connection errors, 429, 5xx) are retried with
backoff. An *expired* client secret still gets tokens here: SP-API refuses them (403 "The LWA
secret token you provided has expired."), see :mod:`.auth`.

No message, log line or repr of this module carries a secret: the client secret, refresh and
access tokens are never formatted into text.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from ...fetch.transport import PooledTransport
from ...core.errors import AuthFailed, FailureClass

__all__ = [
    "CLIENT_ID_SETTING",
    "CLIENT_SECRET_SETTING",
    "DEFAULT_LWA_URL",
    "LWA_URL_SETTING",
    "LwaClient",
    "LwaConfigError",
    "LwaError",
    "LwaGrant",
    "LwaInvalidClient",
    "LwaInvalidGrant",
    "LwaRequestError",
    "LwaUnavailable",
]

#: The application's LWA credentials and the token endpoint, from the environment.
CLIENT_ID_SETTING = "SP_API_CLIENT_ID"
CLIENT_SECRET_SETTING = "SP_API_CLIENT_SECRET"
LWA_URL_SETTING = "SP_API_LWA_URL"  # the sandbox's /auth/o2/token offline; Amazon's otherwise
DEFAULT_LWA_URL = "https://api.amazon.com/auth/o2/token"
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})

log = logging.getLogger("sync_assets.apis.amazon.lwa")


# ---------------------------------------------------------------------- errors


class LwaError(AuthFailed):
    """Base class of LWA failures (an AuthFailed: the CLI prints it without a traceback)."""


class LwaConfigError(LwaError):
    """SP_API_CLIENT_ID / SP_API_CLIENT_SECRET / SP_API_LWA_URL is missing or malformed."""

    failure_class = FailureClass.CONFIGURATION


class LwaInvalidClient(LwaError):
    """LWA refused the application's credentials (401 invalid_client): fix or rotate the setting."""

    failure_class = FailureClass.CONFIGURATION


class LwaInvalidGrant(LwaError):
    """The refresh token is unknown or the seller revoked the app (400 invalid_grant): re-authorize."""

    def __init__(self, message: str, *, error: str = "invalid_grant", description: str = "", seller_id: str | None = None):
        self.error, self.description, self.seller_id = error, description, seller_id
        super().__init__(message)


class LwaRequestError(LwaError):
    """Any other LWA answer retrying cannot fix (a malformed request or answer)."""

    failure_class = FailureClass.CONFIGURATION


class LwaUnavailable(LwaError):
    """5xx, 429 or a network failure persisted through the retries; nothing was stored."""

    failure_class = FailureClass.TRANSIENT


# ---------------------------------------------------------------------- the grant


@dataclass(frozen=True)
class LwaGrant:
    """One token endpoint answer. LWA refresh tokens do not rotate; ``refresh_token`` is the one
    LWA echoed (the submitted one when it echoed none)."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: int
    issued_at: datetime  # taken before the request was sent: the expiry errs early

    @property
    def expires_at(self) -> datetime:
        return self.issued_at + timedelta(seconds=self.expires_in)

    def __repr__(self) -> str:
        return f"LwaGrant(access_token=***, refresh_token=***, expires_in={self.expires_in}, issued_at={self.issued_at.isoformat()})"


class _Transient(Exception):
    """One attempt failed in a way worth retrying (never leaves this module)."""


class LwaClient:
    """Thread-safe LWA client for one application (client id + secret)."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        token_url: str = DEFAULT_LWA_URL,
        *,
        timeout: float = 15.0,
        attempts: int = 4,
        retry_wait: tuple[float, float] = (0.5, 8.0),
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not client_id:
            raise LwaConfigError(
                f"{CLIENT_ID_SETTING} is not set: the LWA client identifier of the SP-API application "
                f"(Seller Central > Develop apps > View LWA credentials)"
            )
        if not client_secret:
            raise LwaConfigError(
                f"{CLIENT_SECRET_SETTING} is not set: the LWA client secret of the SP-API application "
                f"(Seller Central > Develop apps > View LWA credentials)"
            )
        parts = urlsplit(token_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise LwaConfigError(f"{LWA_URL_SETTING} must be an http(s) URL such as {DEFAULT_LWA_URL}, got {token_url!r}")
        self.client_id = client_id
        self._client_secret = client_secret
        self.token_url = token_url
        self.attempts = max(1, attempts)
        self._retry_wait = retry_wait
        self._sleep = sleep
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers={"User-Agent": "sync_assets/0.1 (Language=Python; LWA client; httpx)", "Accept": "application/json"},
            transport=transport or PooledTransport(),
        )
        self._lock = threading.Lock()
        self.grants = 0  # successful grants by this client (tests, metrics)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> "LwaClient":
        """SP_API_CLIENT_ID, SP_API_CLIENT_SECRET and (optional) SP_API_LWA_URL."""
        env = os.environ if env is None else env
        return cls(
            env.get(CLIENT_ID_SETTING) or "",
            env.get(CLIENT_SECRET_SETTING) or "",
            env.get(LWA_URL_SETTING) or DEFAULT_LWA_URL,
            **kwargs,
        )

    @property
    def fingerprint(self) -> str:
        """Identifies the application credentials in use without revealing them (a truncated hash):
        a seller marked for an expired or refused secret is retried once the secret changed."""
        digest = hashlib.sha256(f"lwa-client\0{self.client_id}\0{self._client_secret}".encode()).hexdigest()
        return digest[:16]

    def __repr__(self) -> str:
        return f"LwaClient(token_url={self.token_url!r}, client_id={self.client_id!r}, client_secret=***)"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "LwaClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the grant

    def grant(self, refresh_token: str) -> LwaGrant:
        """An access token for the seller whose refresh token this is.

        Raises :class:`LwaInvalidGrant` (revoked or unknown refresh token), :class:`LwaInvalidClient`
        (the application's credentials), :class:`LwaUnavailable` (transient, after retries) or
        :class:`LwaRequestError`.
        """
        refresh_token = refresh_token.strip()
        if not refresh_token:
            raise LwaInvalidGrant("the refresh token is empty", description="empty refresh token")
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": self.client_id,
            "client_secret": self._client_secret,
        }
        issued_at = datetime.now(timezone.utc)
        response, ambiguous = self._send(form)
        if response.status_code != 200:
            self._raise_for_error(response, ambiguous)
        try:
            body = response.json()
            access_token = str(body["access_token"])
            expires_in = int(body.get("expires_in") or 3600)
            echoed = body.get("refresh_token")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise LwaRequestError("LWA answered HTTP 200 without an access_token in a JSON body") from None
        if not access_token or expires_in <= 0:
            raise LwaRequestError("LWA answered HTTP 200 with an empty access_token or a non-positive expires_in")
        with self._lock:
            self.grants += 1
        return LwaGrant(access_token, str(echoed or refresh_token), expires_in, issued_at)

    # ------------------------------------------------------------------ HTTP

    def _send(self, form: dict[str, str]) -> tuple[httpx.Response, bool]:
        """The first non-transient answer, and whether an earlier attempt may have reached LWA."""
        reached = False

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(f"LWA token request: {exc}; retry {state.attempt_number}/{self.attempts - 1} in {wait:.1f}s")

        retrying = Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(multiplier=self._retry_wait[0], max=self._retry_wait[1]),
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        host = urlsplit(self.token_url).netloc
        try:
            for attempt in retrying:
                with attempt:
                    earlier = reached
                    try:
                        response = self._http.post(self.token_url, data=form)
                    except httpx.TransportError as exc:
                        reached = reached or not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                        raise _Transient(f"{type(exc).__name__} talking to {host}") from None
                    if response.status_code in TRANSIENT_STATUSES:
                        reached = reached or response.status_code != 429
                        raise _Transient(f"HTTP {response.status_code} ({_describe(response)})")
                    return response, earlier
        except _Transient as exc:
            raise LwaUnavailable(
                f"LWA token request to {host} failed {self.attempts} times, last: {exc}; nothing was changed, try again later"
            ) from None
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _raise_for_error(self, response: httpx.Response, ambiguous: bool) -> None:
        error, description = _oauth_error(response)
        detail = f"{error}: {description}" if description else error
        if response.status_code == 401 or error == "invalid_client":
            raise LwaInvalidClient(
                f"LWA rejected the SP-API application's credentials ({detail}): check {CLIENT_ID_SETTING} and "
                f"{CLIENT_SECRET_SETTING} (a client secret rotated in Seller Central > Develop apps replaces the old "
                f"one; put the current secret in {CLIENT_SECRET_SETTING})"
            )
        if error == "invalid_grant":
            if ambiguous:
                # LWA refresh tokens do not rotate, so this is unlikely to be a race; still, a retried
                # request whose first attempt may have been processed is not proof of a revocation.
                raise LwaUnavailable(f"LWA token request: {detail} after an earlier attempt failed in flight; not marked yet")
            raise LwaInvalidGrant(f"LWA rejected the refresh token ({detail})", error=error, description=description)
        raise LwaRequestError(f"LWA token request: HTTP {response.status_code} ({detail})")


def _oauth_error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
        if isinstance(body, dict):
            return str(body.get("error") or f"HTTP {response.status_code}")[:100], str(body.get("error_description") or "")[:300]
    except ValueError:
        pass
    return f"HTTP {response.status_code}", _describe(response)


def _describe(response: httpx.Response) -> str:
    text = response.text[:200].strip()
    if "<html" in text.lower():
        return "HTML error page"
    return text or response.reason_phrase
