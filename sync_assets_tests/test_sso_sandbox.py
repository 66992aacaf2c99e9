"""The EVE SSO sandbox over real HTTP: the wire behaviour clients and the ESI sandbox rely on."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from starlette.applications import Starlette

from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.apis.esi.sandbox.sso import KEY_ID, SsoAuthError, SsoSandbox

ASSETS = "esi-assets.read_corporation_assets.v1"
WALLET = "esi-wallet.read_corporation_wallets.v1"
ALICE = 2112000001


@pytest.fixture
def sso() -> SsoSandbox:
    return SsoSandbox()


@pytest.fixture
def http(sso: SsoSandbox) -> Iterator[httpx.Client]:
    with serve_in_thread(Starlette(routes=sso.routes())) as url, httpx.Client(base_url=url) as client:
        yield client


def basic(sso: SsoSandbox, secret: str | None = None) -> dict[str, str]:
    raw = f"{sso.client_id}:{sso.client_secret if secret is None else secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def refresh(http: httpx.Client, sso: SsoSandbox, token: str, **kwargs) -> httpx.Response:
    return http.post("/v2/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token}, headers=basic(sso), **kwargs)


def test_metadata_and_jwks(sso: SsoSandbox, http: httpx.Client) -> None:
    meta = http.get("/.well-known/oauth-authorization-server").json()
    base = str(http.base_url).rstrip("/")
    assert meta["issuer"] == "https://login.eveonline.com"
    assert meta["token_endpoint"] == f"{base}/v2/oauth/token"
    assert meta["authorization_endpoint"] == f"{base}/v2/oauth/authorize"
    assert meta["jwks_uri"] == f"{base}/oauth/jwks" and meta["revocation_endpoint"] == f"{base}/v2/oauth/revoke"
    keys = {k["kid"]: k for k in http.get(meta["jwks_uri"]).json()["keys"]}
    assert keys[KEY_ID]["alg"] == "RS256" and keys[KEY_ID]["kty"] == "RSA"
    assert SsoSandbox().jwks()["keys"][0]["n"] != keys[KEY_ID]["n"]  # one key per instance


def test_refresh_rotates_and_issues_eve_shaped_jwts(sso: SsoSandbox, http: httpx.Client) -> None:
    token = sso.add_character(ALICE, "Alice", 98000001, [ASSETS, WALLET], ["Director"])
    assert len(token) == 24 and len(base64.b64decode(token)) == 18
    response = refresh(http, sso, token)
    body = response.json()
    assert response.status_code == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 1199
    assert body["refresh_token"] != token
    header = jwt.get_unverified_header(body["access_token"])
    assert header["kid"] == KEY_ID and header["alg"] == "RS256"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == f"CHARACTER:EVE:{ALICE}" and claims["name"] == "Alice"
    assert claims["aud"] == [sso.client_id, "EVE Online"] and claims["azp"] == sso.client_id
    assert claims["scp"] == [ASSETS, WALLET] and claims["iss"] == "https://login.eveonline.com"
    assert claims["exp"] - claims["iat"] == 1200 and claims["kid"] == KEY_ID
    assert {"jti", "owner", "tenant", "tier", "region"} <= claims.keys()

    dead = refresh(http, sso, token)  # rotation: the old token is dead at once
    assert dead.status_code == 400
    assert dead.json() == {"error": "invalid_grant", "error_description": "Invalid refresh token. Token missing/expired."}
    assert refresh(http, sso, body["refresh_token"]).status_code == 200
    counters = sso.counters()
    assert (counters["refreshes"], counters["invalid_grants"], counters["tokens_issued"]) == (2, 1, 2)
    assert body["access_token"] in sso.issued_secrets() and token in sso.issued_secrets()


def test_token_endpoint_rejects_json_bad_clients_and_revoked_tokens(sso: SsoSandbox, http: httpx.Client) -> None:
    token = sso.add_character(ALICE, "Alice", 98000001, [ASSETS])
    as_json = http.post("/v2/oauth/token", json={"grant_type": "refresh_token", "refresh_token": token}, headers=basic(sso))
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    bad = http.post("/v2/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token}, headers=basic(sso, "nope"))
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    no_auth = http.post("/v2/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token})
    assert no_auth.status_code == 401
    assert sso.counters()["invalid_clients"] == 2
    sso.revoke(ALICE)
    assert refresh(http, sso, token).json()["error"] == "invalid_grant"

    token = sso.add_character(ALICE, "Alice", 98000001, [ASSETS])
    assert http.post("/v2/oauth/revoke", data={"token": token, "token_type_hint": "refresh_token"}, headers=basic(sso)).status_code == 200
    assert refresh(http, sso, token).status_code == 400


def test_authorize_redirects_with_a_single_use_pkce_code(sso: SsoSandbox, http: httpx.Client) -> None:
    sso.add_character(ALICE, "Alice", 98000001, [ASSETS])
    verifier = "x" * 64
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = {
        "response_type": "code",
        "redirect_uri": "http://127.0.0.1:9/callback",
        "client_id": sso.client_id,
        "scope": f"{WALLET} {ASSETS}",
        "state": "abc",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    response = http.get(f"/v2/oauth/authorize?{urlencode(query)}")
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert location.netloc == "127.0.0.1:9" and location.path == "/callback"
    params = parse_qs(location.query)
    assert params["state"] == ["abc"]
    # A PKCE (public) app authenticates with client_id in the body.
    form = {"grant_type": "authorization_code", "code": params["code"][0], "code_verifier": verifier, "client_id": sso.client_id}
    granted = http.post("/v2/oauth/token", data=form)
    assert granted.status_code == 200
    assert jwt.decode(granted.json()["access_token"], options={"verify_signature": False})["scp"] == [WALLET, ASSETS]
    assert http.post("/v2/oauth/token", data=form).json()["error"] == "invalid_grant"  # single use
    public = {"grant_type": "refresh_token", "refresh_token": granted.json()["refresh_token"], "client_id": sso.client_id}
    assert http.post("/v2/oauth/token", data=public).status_code == 200  # its grant refreshes without a secret
    assert sso.character(ALICE).scopes == (WALLET, ASSETS)
    assert sso.counters()["authorizations"] == 1

    bad_client = http.get(f"/v2/oauth/authorize?{urlencode({**query, 'client_id': 'other'})}")
    assert bad_client.status_code == 400


def test_verify_access_token_for_the_esi_sandbox(sso: SsoSandbox) -> None:
    sso.add_character(ALICE, "Alice", 98000001, [ASSETS])
    token = sso.mint_access_token(ALICE)
    claims = sso.verify_access_token(token)
    assert (claims.character_id, claims.scopes) == (ALICE, (ASSETS,))
    assert sso.verify_access_token(f"Bearer {token}", scope=ASSETS).character_id == ALICE

    def status_of(value: str, scope: str | None = None) -> tuple[int, dict]:
        with pytest.raises(SsoAuthError) as err:
            sso.verify_access_token(value, scope)
        return err.value.status, err.value.body

    assert status_of("")[0] == 401
    status, body = status_of("garbage")
    assert status == 403 and body["sso_status"] == 401 and body["error"].startswith("authentication failure")
    other = SsoSandbox()  # another signing key
    other.add_character(ALICE, "Alice", 98000001, [ASSETS])
    assert status_of(other.mint_access_token(ALICE))[0] == 403
    assert status_of(token, WALLET) == (403, {"error": "token not valid for scope", "sso_status": 200})
    sso.clock = lambda: time.time() + 1300
    assert status_of(token) == (403, {"error": "token is expired", "sso_status": 401})
    assert status_of(jwt.encode({"sub": f"CHARACTER:EVE:{ALICE}"}, "k" * 32, "HS256"))[0] == 403


def test_knobs(sso: SsoSandbox) -> None:
    sso.add_character(ALICE, "Alice", 98000001, [ASSETS], ["Director"])
    sso.set_roles(ALICE, ["Accountant"])
    sso.set_corporation(ALICE, 98000002)
    char = sso.character(ALICE)
    assert (char.roles, char.corporation_id, char.name) == (("Accountant",), 98000002, "Alice")
    with pytest.raises(KeyError):
        sso.character(1)
    assert sso.client_secret in sso.issued_secrets()
