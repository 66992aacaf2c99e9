"""Login with Amazon for the sandbox: ``POST /auth/o2/token`` (refresh-token grant) and the access
tokens the SP-API routes accept in ``x-amz-access-token``.

Answers as LWA sends them: 200 ``{access_token, token_type: "bearer", expires_in, refresh_token}``
with ``Cache-Control: no-store``; 401 ``invalid_client`` for wrong client credentials (checked first);
400 ``invalid_grant`` for an unknown or revoked refresh token.  An *expired client secret* still gets
tokens from LWA, but every SP-API call made with them is refused with 403 "The LWA secret token you
provided has expired." until the application rotates its secret (:meth:`Lwa.rotate_client_secret`).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .common import ApiError

__all__ = [
    "DETAILS_EXPIRED",
    "DETAILS_INVALID",
    "DETAILS_SECRET_EXPIRED",
    "Lwa",
    "SANDBOX_CLIENT_ID",
    "SANDBOX_CLIENT_SECRET",
    "TokenAnswer",
]

#: The sandbox application's LWA credentials (offline only).
SANDBOX_CLIENT_ID = "amzn1.application-oa2-client.5a4d5e6f7b8c9d0e1f2a3b4c5d6e7f80"
SANDBOX_CLIENT_SECRET = "amzn1.oa2-cs.v1.sandbox0secret0not0for0production0use000000000000000"

DENIED = "Access to requested resource is denied."
DETAILS_EXPIRED = "The access token you provided has expired."
DETAILS_INVALID = "The access token you provided is revoked, malformed or invalid."
DETAILS_SECRET_EXPIRED = "The LWA secret token you provided has expired."
COUNTER_KEYS = ("token_requests", "tokens_issued", "invalid_grant", "invalid_client", "invalid_request", "unsupported_grant_type")


@dataclass(frozen=True)
class TokenAnswer:
    status: int
    body: dict[str, Any]


@dataclass
class _Access:
    seller_id: str
    expires_at: float
    secret: str


def refresh_token_for(seed: int, seller_id: str) -> str:
    """A seller's initial refresh token: fixed for a seed, so a demo can configure it in advance."""
    digest = hashlib.sha256(f"sandbox-refresh:{seed}:{seller_id}".encode()).hexdigest()
    return f"Atzr|IwEBI{digest}"


class Lwa:
    """Client credentials, refresh tokens per seller and issued access tokens (thread-safe)."""

    def __init__(
        self,
        seller_ids: list[str],
        clock: Callable[[], float],
        *,
        seed: int = 0,
        client_id: str = SANDBOX_CLIENT_ID,
        client_secret: str = SANDBOX_CLIENT_SECRET,
        access_token_ttl: int = 3600,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_token_ttl = int(access_token_ttl)
        self._clock = clock
        self._lock = threading.Lock()
        self._expired_secrets: set[str] = set()
        #: live refresh token -> seller id (LWA refresh tokens do not rotate)
        self._refresh: dict[str, str] = {refresh_token_for(seed, s): s for s in seller_ids}
        self._initial = {s: t for t, s in self._refresh.items()}
        self._access: dict[str, _Access] = {}
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_KEYS, 0)

    # ------------------------------------------------------------------ knobs

    @property
    def refresh_tokens(self) -> dict[str, str]:
        """Each seller's initial refresh token (seller id -> token)."""
        return dict(self._initial)

    def authorize(self, seller_id: str) -> str:
        """The seller authorizes the app again: a new refresh token (the old ones stay valid)."""
        token = f"Atzr|IwEBI{secrets.token_hex(32)}"
        with self._lock:
            self._refresh[token] = seller_id
        return token

    def revoke(self, seller_id: str) -> int:
        """The seller revokes the app: its refresh tokens answer invalid_grant, its access tokens die."""
        with self._lock:
            dead = [t for t, s in self._refresh.items() if s == seller_id]
            for t in dead:
                del self._refresh[t]
            for token in [t for t, a in self._access.items() if a.seller_id == seller_id]:
                del self._access[token]
            return len(dead)

    def expire_access_tokens(self) -> int:
        """Every issued access token is expired from now on (403 "...has expired")."""
        now = self._clock()
        with self._lock:
            for access in self._access.values():
                access.expires_at = min(access.expires_at, now - 1)
            return len(self._access)

    def expire_client_secret(self) -> None:
        with self._lock:
            self._expired_secrets.add(self.client_secret)

    def rotate_client_secret(self) -> str:
        """A new secret (the old one stops working at LWA: 401 invalid_client)."""
        with self._lock:
            self.client_secret = f"amzn1.oa2-cs.v1.{secrets.token_hex(32)}"
            return self.client_secret

    def issue(self, seller_id: str) -> str:
        """An access token for the seller without an HTTP round trip (tests)."""
        with self._lock:
            return self._mint(seller_id)

    def reset_counters(self) -> None:
        with self._lock:
            self.counters = dict.fromkeys(COUNTER_KEYS, 0)

    # ------------------------------------------------------------------ the token endpoint

    def token(self, form: Mapping[str, str]) -> TokenAnswer:
        with self._lock:
            self.counters["token_requests"] += 1
            answer = self._answer(form)
            if answer.status != 200:
                self.counters[answer.body["error"]] += 1
            return answer

    def _answer(self, form: Mapping[str, str]) -> TokenAnswer:
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return _error(401, "invalid_client", "Client authentication failed")
        grant = form.get("grant_type")
        if grant != "refresh_token":
            if not grant:
                return _error(400, "invalid_request", "The request is missing a required parameter : grant_type")
            return _error(400, "unsupported_grant_type", "The authorization grant type is not supported by the authorization server")
        refresh = form.get("refresh_token")
        if not refresh:
            return _error(400, "invalid_request", "The request is missing a required parameter : refresh_token")
        seller_id = self._refresh.get(refresh)
        if seller_id is None:
            return _error(400, "invalid_grant", "The request has an invalid grant parameter : refresh_token")
        self.counters["tokens_issued"] += 1
        body = {"access_token": self._mint(seller_id), "refresh_token": refresh, "token_type": "bearer", "expires_in": self.access_token_ttl}
        return TokenAnswer(200, body)

    def _mint(self, seller_id: str) -> str:
        token = f"Atza|IwEBI{secrets.token_urlsafe(48)}"
        self._access[token] = _Access(seller_id, self._clock() + self.access_token_ttl, self.client_secret)
        self._purge()
        return token

    def _purge(self) -> None:
        """Forget tokens expired for a day (they would answer "invalid" instead of "expired")."""
        if len(self._access) % 256:
            return
        horizon = self._clock() - 86400
        for token in [t for t, a in self._access.items() if a.expires_at < horizon]:
            del self._access[token]

    # ------------------------------------------------------------------ API authorization

    def seller_for(self, token: str | None) -> str:
        """The seller an ``x-amz-access-token`` speaks for, or the 403 Amazon answers."""
        if not token:
            raise ApiError(403, "Unauthorized", DENIED, "")
        with self._lock:
            access = self._access.get(token)
            if access is None:
                raise ApiError(403, "Unauthorized", DENIED, DETAILS_INVALID)
            if access.secret in self._expired_secrets:
                raise ApiError(403, "Unauthorized", DENIED, DETAILS_SECRET_EXPIRED)
            if access.expires_at <= self._clock():
                raise ApiError(403, "Unauthorized", DENIED, DETAILS_EXPIRED)
            return access.seller_id


def _error(status: int, error: str, description: str) -> TokenAnswer:
    return TokenAnswer(status, {"error_description": description, "error": error, "request_id": str(uuid.uuid4())})
