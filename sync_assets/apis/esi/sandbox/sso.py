"""Offline stand-in for EVE Online's SSO (https://login.eveonline.com, OAuth 2.0 v2 with JWTs).

Routes (mount :meth:`SsoSandbox.routes` at the root of any Starlette app):

* ``GET  /.well-known/oauth-authorization-server`` metadata; URLs built from the request's base URL
* ``GET  /oauth/jwks``            the RS256 key (kid ``JWT-Signature-Key``) plus an ES256 key, like CCP's set
* ``GET  /v2/oauth/authorize``    headless: 302 straight to ``redirect_uri?code=…&state=…`` for the
  "logged-in" character (:meth:`SsoSandbox.set_login_character`; default the first one added)
* ``POST /v2/oauth/token``        ``authorization_code`` (PKCE S256) and ``refresh_token`` grants, form-encoded only
* ``POST /v2/oauth/revoke``       ``token=…&token_type_hint=refresh_token``

Refresh tokens rotate on every use and the old one dies at once: the strictest reading of CCP's
"always store the latest refresh token", so a client that forgets to persist it fails here
first. Access tokens are RS256 JWTs with the claims of ESI.md §7.3; the ESI sandbox authorizes its
routes with :meth:`SsoSandbox.verify_access_token`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

__all__ = [
    "AccessClaims",
    "COUNTER_KEYS",
    "KEY_ID",
    "SandboxCharacter",
    "SsoAuthError",
    "SsoSandbox",
]

KEY_ID = "JWT-Signature-Key"
AUTH_CODE_TTL = 300  # seconds; EVE SSO codes live 5 minutes
COUNTER_KEYS = ("refreshes", "invalid_grants", "invalid_clients", "authorizations", "tokens_issued", "revocations", "injected_errors")
INVALID_REFRESH = "Invalid refresh token. Token missing/expired."
_FORM = "application/x-www-form-urlencoded"


# The sandbox application's credentials (offline only; the demo configures the client with them).
SANDBOX_CLIENT_ID = "sandbox-client-id"
SANDBOX_CLIENT_SECRET = "sandbox-client-secret"

class SsoAuthError(Exception):
    """What ESI answers for a missing, invalid or expired bearer token (ESI.md §7.5)."""

    def __init__(self, status: int, body: dict[str, Any]):
        self.status, self.body = status, body
        super().__init__(f"HTTP {status}: {body.get('error')}")


@dataclass(frozen=True)
class SandboxCharacter:
    character_id: int
    name: str
    corporation_id: int
    scopes: tuple[str, ...]
    roles: tuple[str, ...]
    owner_hash: str = ""


@dataclass(frozen=True)
class AccessClaims:
    """A verified access token, as ESI sees it."""

    character_id: int
    scopes: tuple[str, ...]
    expires_at: float  # epoch seconds (the JWT's exp)
    character_name: str = ""
    client_id: str = ""


@dataclass
class _Grant:
    """One authorization of our app by one character; its refresh token rotates on every use."""

    character_id: int
    scopes: tuple[str, ...]
    public: bool = False  # issued to a PKCE app without a secret: refreshes with client_id in the body


@dataclass
class _Code:
    character_id: int
    scopes: tuple[str, ...]
    redirect_uri: str
    challenge: str | None
    expires_at: float
    used: bool = False


@dataclass
class _Fault:
    remaining: int
    status: int
    after_processing: bool  # the grant is processed (token rotated) and then the error is returned


class SsoSandbox:
    """EVE SSO for tests and the demo: characters, grants, signing keys and knobs, thread-safe."""

    def __init__(
        self,
        client_id: str = SANDBOX_CLIENT_ID,
        client_secret: str = SANDBOX_CLIENT_SECRET,
        *,
        access_token_ttl: int = 1200,
        issuer: str = "https://login.eveonline.com",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        #: Knobs, read at every token issue (safe to change while serving).
        self.access_token_ttl = int(access_token_ttl)
        self.issuer = issuer
        self.clock = clock
        #: Emit ``scp`` as a plain string when a token carries exactly one scope (ESI.md §7.3: unverified
        #: whether CCP does; clients must accept both).
        self.single_scope_as_string = False
        #: Seconds the token endpoint takes to answer (widens race windows in concurrency tests).
        self.token_latency = 0.0

        self._lock = threading.RLock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._ec_key = ec.generate_private_key(ec.SECP256R1())  # never signs: only makes the JWK set realistic
        self._ec_kid = str(uuid.uuid4())
        self._characters: dict[int, SandboxCharacter] = {}
        self._refresh: dict[str, _Grant] = {}  # live refresh token -> grant
        self._codes: dict[str, _Code] = {}
        self._login_character: int | None = None
        self._faults: list[_Fault] = []
        self._counters: dict[str, int] = dict.fromkeys(COUNTER_KEYS, 0)
        self._secrets: set[str] = {client_secret}

    # ------------------------------------------------------------------ knobs

    def add_character(
        self, character_id: int, name: str, corporation_id: int, scopes: Sequence[str], roles: Sequence[str] = ()
    ) -> str:
        """Register a character who has authorized our app; returns a refresh token (24-char base64 like v2 tokens)."""
        character_id = int(character_id)
        with self._lock:
            known = self._characters.get(character_id)  # the same owner authorizing again keeps its hash
            owner = known.owner_hash if known else base64.b64encode(secrets.token_bytes(20)).decode()
            self._characters[character_id] = SandboxCharacter(
                character_id, name, int(corporation_id), tuple(scopes), tuple(roles), owner
            )
            return self._new_refresh_token(_Grant(character_id, tuple(scopes)))

    def set_roles(self, character_id: int, roles: Sequence[str]) -> None:
        with self._lock:
            self._characters[character_id] = replace(self.character(character_id), roles=tuple(roles))

    def set_corporation(self, character_id: int, corporation_id: int) -> None:
        with self._lock:
            self._characters[character_id] = replace(self.character(character_id), corporation_id=int(corporation_id))

    def transfer_character(self, character_id: int) -> None:
        """The character is sold: a new owner hash (its grants stay alive, to test clients that check it)."""
        with self._lock:
            self._characters[character_id] = replace(
                self.character(character_id), owner_hash=base64.b64encode(secrets.token_bytes(20)).decode()
            )

    def revoke(self, character_id: int) -> None:
        """All refresh tokens of the character answer invalid_grant from now on."""
        with self._lock:
            for token in [t for t, g in self._refresh.items() if g.character_id == character_id]:
                del self._refresh[token]

    def set_login_character(self, character_id: int | None) -> None:
        """Who "logs in" at /v2/oauth/authorize (None: the first character added)."""
        with self._lock:
            if character_id is not None:
                self.character(character_id)
            self._login_character = character_id

    def fail_token_requests(self, count: int, status: int = 503, *, after_processing: bool = False) -> None:
        """The next ``count`` token requests answer ``status``. With ``after_processing`` the grant is
        carried out first (the refresh token rotates) and only the answer is lost, like a timeout
        on the way back."""
        with self._lock:
            self._faults.append(_Fault(int(count), int(status), after_processing))

    def character(self, character_id: int) -> SandboxCharacter:
        with self._lock:
            try:
                return self._characters[int(character_id)]
            except KeyError:
                raise KeyError(f"no sandbox character {character_id}") from None

    def live_refresh_tokens(self, character_id: int) -> int:
        """How many refresh tokens of the character still work (one per authorization)."""
        with self._lock:
            return sum(1 for g in self._refresh.values() if g.character_id == character_id)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def issued_secrets(self) -> set[str]:
        """The client secret and every refresh and access token ever issued (for secret-scan tests)."""
        with self._lock:
            return set(self._secrets)

    # ------------------------------------------------------------------ JWTs

    def jwt_claims(self, character_id: int, scopes: Sequence[str] | None = None, *, ttl: int | None = None) -> dict[str, Any]:
        """The claims of a fresh access token for the character (ESI.md §7.3)."""
        char = self.character(character_id)
        scp = list(char.scopes if scopes is None else scopes)
        iat = int(self.clock())
        return {
            "scp": scp[0] if self.single_scope_as_string and len(scp) == 1 else scp,
            "jti": str(uuid.uuid4()),
            "kid": KEY_ID,
            "sub": f"CHARACTER:EVE:{char.character_id}",
            "azp": self.client_id,
            "tenant": "tranquility",
            "tier": "live",
            "region": "world",
            "aud": [self.client_id, "EVE Online"],
            "name": char.name,
            "owner": char.owner_hash,
            "exp": iat + (self.access_token_ttl if ttl is None else int(ttl)),
            "iat": iat,
            "iss": self.issuer,
        }

    def sign(self, claims: Mapping[str, Any]) -> str:
        """Sign arbitrary claims with this SSO's key (tests craft wrong aud/iss/exp with it)."""
        token = jwt.encode(dict(claims), self._key, algorithm="RS256", headers={"kid": KEY_ID})
        with self._lock:
            self._secrets.add(token)
        return token

    def mint_access_token(self, character_id: int, scopes: Sequence[str] | None = None, *, ttl: int | None = None) -> str:
        """An access token without going through the token endpoint (not counted)."""
        return self.sign(self.jwt_claims(character_id, scopes, ttl=ttl))

    def verify_access_token(self, token: str, scope: str | None = None) -> AccessClaims:
        """Authorize an ESI request. ``token`` is the bearer token (a leading ``Bearer `` is accepted).

        Raises :class:`SsoAuthError` shaped like ESI: 401 when no token is given, 403
        ``{"error": …, "sso_status": 401}`` for an invalid or expired one, and 403 with
        ``sso_status`` 200 when the token lacks ``scope``.
        """
        token = (token or "").strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        if not token:
            raise SsoAuthError(401, {"error": "authentication required"})
        try:
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS256"],
                options={"verify_aud": False, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
                issuer=self.issuer,
            )
        except jwt.InvalidTokenError as exc:
            raise SsoAuthError(403, {"error": f"authentication failure: invalid token ({type(exc).__name__})", "sso_status": 401}) from None
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= self.clock():
            raise SsoAuthError(403, {"error": "token is expired", "sso_status": 401})
        try:
            character_id = int(str(claims["sub"]).rsplit(":", 1)[1])
        except (KeyError, IndexError, ValueError):
            raise SsoAuthError(403, {"error": "authentication failure: invalid subject", "sso_status": 401}) from None
        scp = claims.get("scp", [])
        scopes = (scp,) if isinstance(scp, str) else tuple(scp)
        if scope is not None and scope not in scopes:
            raise SsoAuthError(403, {"error": "token not valid for scope", "sso_status": 200})
        return AccessClaims(character_id, scopes, float(claims["exp"]), str(claims.get("name", "")), str(claims.get("azp", "")))

    def jwks(self) -> dict[str, Any]:
        rs = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        es = ECAlgorithm.to_jwk(self._ec_key.public_key(), as_dict=True)
        return {
            "keys": [
                {**rs, "kid": KEY_ID, "alg": "RS256", "use": "sig"},
                {**es, "kid": self._ec_kid, "alg": "ES256", "use": "sig"},
            ],
            "SkipUnresolvedJsonWebKeys": True,
        }

    # ------------------------------------------------------------------ HTTP

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/.well-known/oauth-authorization-server", self._metadata, methods=["GET"]),
            Route("/oauth/jwks", self._jwks, methods=["GET"]),
            Route("/v2/oauth/authorize", self._authorize, methods=["GET"]),
            Route("/v2/oauth/token", self._token, methods=["POST"]),
            Route("/v2/oauth/revoke", self._revoke, methods=["POST"]),
        ]

    async def _metadata(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{base}/v2/oauth/authorize",
                "token_endpoint": f"{base}/v2/oauth/token",
                "jwks_uri": f"{base}/oauth/jwks",
                "revocation_endpoint": f"{base}/v2/oauth/revoke",
                "response_types_supported": ["code"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse(self.jwks())

    async def _authorize(self, request: Request) -> Response:
        q = request.query_params
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id:
            return _oauth_error(400, "invalid_client", "Unknown client")
        if not redirect_uri.startswith(("http://", "https://")):
            return _oauth_error(400, "invalid_request", "redirect_uri is missing or invalid")
        if q.get("response_type") != "code":
            return _redirect(redirect_uri, error="unsupported_response_type", state=q.get("state"))
        challenge = q.get("code_challenge")
        if challenge is not None and q.get("code_challenge_method") != "S256":
            return _redirect(redirect_uri, error="invalid_request", error_description="code_challenge_method must be S256", state=q.get("state"))
        with self._lock:
            character_id = self._login_character
            if character_id is None:
                character_id = next(iter(self._characters), None)
            if character_id is None:
                return _oauth_error(400, "access_denied", "sandbox: no character can log in (call add_character first)")
            code = secrets.token_urlsafe(16)
            self._codes[code] = _Code(
                character_id, tuple(q.get("scope", "").split()), redirect_uri, challenge, self.clock() + AUTH_CODE_TTL
            )
            self._counters["authorizations"] += 1
        return _redirect(redirect_uri, code=code, state=q.get("state"))

    async def _token(self, request: Request) -> Response:
        form = await _form(request)
        if form is None:
            return _oauth_error(400, "invalid_request", f"The request must be {_FORM}")
        if self.token_latency > 0:
            await asyncio.sleep(self.token_latency)
        with self._lock:
            fault = self._take_fault()
            if fault is not None and not fault.after_processing:
                return _oauth_error(fault.status, "server_error", "The service is unavailable")
            response = self._token_locked(request.headers.get("authorization"), form)
            if fault is not None:  # processed, then the answer is lost
                return _oauth_error(fault.status, "server_error", "The service is unavailable")
            return response

    def _token_locked(self, authorization: str | None, form: dict[str, str]) -> Response:
        grant_type = form.get("grant_type")
        client = self._client_auth(authorization, form)
        if client is None:
            self._counters["invalid_clients"] += 1
            return _oauth_error(401, "invalid_client", "Client authentication failed")
        confidential = client == "basic"
        if grant_type == "refresh_token":
            token = form.get("refresh_token", "")
            grant = self._refresh.get(token)
            if grant is None:
                return self._invalid_grant(INVALID_REFRESH)
            if not confidential and not grant.public:
                self._counters["invalid_clients"] += 1
                return _oauth_error(401, "invalid_client", "Client authentication failed")
            del self._refresh[token]  # rotation: the old token dies now
            scopes = grant.scopes
            requested = form.get("scope")
            if requested:
                scopes = tuple(s for s in requested.split() if s in grant.scopes)
            self._counters["refreshes"] += 1
            return self._issue(_Grant(grant.character_id, grant.scopes, grant.public), scopes)
        if grant_type == "authorization_code":
            code = self._codes.get(form.get("code", ""))
            if code is None or code.used or code.expires_at <= self.clock():
                return self._invalid_grant("Authorization code not found or expired.")
            code.used = True  # single use, even when the checks below fail
            if "redirect_uri" in form and form["redirect_uri"] != code.redirect_uri:
                return self._invalid_grant("redirect_uri does not match the authorization request.")
            if code.challenge is not None:
                verifier = form.get("code_verifier", "")
                if _s256(verifier) != code.challenge:
                    return self._invalid_grant("Invalid code_verifier.")
            elif not confidential:
                return _oauth_error(400, "invalid_request", "code_verifier is required without client authentication")
            char = self._characters[code.character_id]
            self._characters[code.character_id] = replace(char, scopes=code.scopes)
            return self._issue(_Grant(code.character_id, code.scopes, public=not confidential), code.scopes)
        return _oauth_error(400, "unsupported_grant_type", f"Grant type {grant_type} is not supported.")

    async def _revoke(self, request: Request) -> Response:
        form = await _form(request)
        if form is None:
            return _oauth_error(400, "invalid_request", f"The request must be {_FORM}")
        with self._lock:
            if self._client_auth(request.headers.get("authorization"), form) is None:
                self._counters["invalid_clients"] += 1
                return _oauth_error(401, "invalid_client", "Client authentication failed")
            if self._refresh.pop(form.get("token", ""), None) is not None:
                self._counters["revocations"] += 1
        return Response(status_code=200)

    # ------------------------------------------------------------------ internals (under self._lock)

    def _client_auth(self, authorization: str | None, form: Mapping[str, str]) -> str | None:
        """"basic" (client id + secret), "public" (client_id in the body) or None (rejected)."""
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "basic":
                return None
            try:
                client_id, _, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            ok = secrets.compare_digest(client_id, self.client_id) and secrets.compare_digest(secret, self.client_secret)
            return "basic" if ok else None
        if "client_secret" in form:  # client_secret_post
            ok = form.get("client_id") == self.client_id and secrets.compare_digest(form["client_secret"], self.client_secret)
            return "basic" if ok else None
        return "public" if form.get("client_id") == self.client_id else None

    def _issue(self, grant: _Grant, scopes: tuple[str, ...]) -> Response:
        access = jwt.encode(self.jwt_claims(grant.character_id, scopes), self._key, algorithm="RS256", headers={"kid": KEY_ID})
        self._secrets.add(access)
        refresh = self._new_refresh_token(grant)
        self._counters["tokens_issued"] += 1
        return JSONResponse(
            {"access_token": access, "token_type": "Bearer", "expires_in": max(self.access_token_ttl - 1, 0), "refresh_token": refresh},
            headers={"cache-control": "no-store"},
        )

    def _new_refresh_token(self, grant: _Grant) -> str:
        token = base64.b64encode(secrets.token_bytes(18)).decode()  # 24 chars; may hold + and /
        self._refresh[token] = grant
        self._secrets.add(token)
        return token

    def _invalid_grant(self, description: str) -> Response:
        self._counters["invalid_grants"] += 1
        return _oauth_error(400, "invalid_grant", description)

    def _take_fault(self) -> _Fault | None:
        while self._faults and self._faults[0].remaining <= 0:
            self._faults.pop(0)
        if not self._faults:
            return None
        fault = self._faults[0]
        fault.remaining -= 1
        self._counters["injected_errors"] += 1
        return fault


async def _form(request: Request) -> dict[str, str] | None:
    """The form-encoded body, or None for anything else (v2 rejects JSON and query parameters)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != _FORM:
        return None
    try:
        return dict(parse_qsl((await request.body()).decode("ascii"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        return None


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii", "replace")).digest()).rstrip(b"=").decode()


def _oauth_error(status: int, error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def _redirect(uri: str, **params: str | None) -> Response:
    parts = urlsplit(uri)
    query = "&".join(x for x in (parts.query, urlencode({k: v for k, v in params.items() if v is not None})) if x)
    return RedirectResponse(urlunsplit(parts._replace(query=query)), status_code=302)
