"""EVE SSO client, token store and login, against the SSO sandbox over real HTTP and a real
PostgreSQL (no mocks)."""

from __future__ import annotations

import io
import logging
import threading
import time
from typing import Iterator, Sequence
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import jwt
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine, create_engine, text
from starlette.applications import Starlette

from sync_assets.apis.esi.sso import (
    InvalidAccessToken,
    InvalidClient,
    InvalidGrant,
    NoUsableToken,
    SsoUnavailable,
    TokenCipher,
    TokenKeyError,
    access_token,
    add_refresh_token,
    forget_access_token,
    get_token,
    list_tokens,
    mark_status,
    select_token,
    update_identity,
)
from sync_assets.apis.esi.sso.login import add_token, login, print_tokens
from sync_assets.apis.esi.sso.sso import EveSso
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.apis.esi.sandbox.sso import KEY_ID, SsoSandbox

CORP, OTHER_CORP = 98000001, 98000002
ASSETS = "esi-assets.read_corporation_assets.v1"
WALLET = "esi-wallet.read_corporation_wallets.v1"
ROLES = "esi-characters.read_corporation_roles.v1"
ALICE, BOB, CAROL, DAVE = 2112000001, 2112000002, 2112000003, 2112000004


@pytest.fixture
def token_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("SYNC_ASSETS_TOKEN_KEY", key)
    return key


@pytest.fixture
def sso() -> SsoSandbox:
    return SsoSandbox(client_id="test-app", client_secret="s3cret-of-the-test-app")


@pytest.fixture
def sso_url(sso: SsoSandbox) -> Iterator[str]:
    with serve_in_thread(Starlette(routes=sso.routes())) as url:
        yield url


def make_client(sso: SsoSandbox, url: str, *, secret: str | None = None, **kwargs) -> EveSso:
    return EveSso(
        url,
        sso.client_id,
        sso.client_secret if secret is None else secret,
        issuer="login.eveonline.com",  # the sandbox signs like CCP while serving on 127.0.0.1
        retry_wait=(0.01, 0.02),
        **kwargs,
    )


@pytest.fixture
def client(sso: SsoSandbox, sso_url: str) -> Iterator[EveSso]:
    with make_client(sso, sso_url) as c:
        yield c


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


def lookup_from(sso: SsoSandbox):
    """What the ESI module will do (/characters/{id}, /characters/{id}/roles), read from the sandbox."""

    def lookup(bearer: str, character_id: int) -> tuple[int, Sequence[str]]:
        assert sso.verify_access_token(bearer).character_id == character_id
        char = sso.character(character_id)
        return char.corporation_id, char.roles

    return lookup


def raw_rows(engine: Engine) -> list[str]:
    """Every row of the tokens table as Postgres prints it (bytea as hex) plus the raw bytea bytes."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT t::text FROM sync_assets.esi_tokens t")).scalars().all()
        blobs = conn.execute(
            text("SELECT refresh_token_encrypted, access_token_encrypted FROM sync_assets.esi_tokens")
        ).all()
    return list(rows) + [bytes(b).decode("latin-1") for row in blobs for b in row if b is not None]


def stored_refresh_token(engine: Engine, character_id: int) -> str:
    with engine.connect() as conn:
        blob = conn.execute(
            text("SELECT refresh_token_encrypted FROM sync_assets.esi_tokens WHERE character_id = :c"), {"c": character_id}
        ).scalar_one()
    return TokenCipher.from_env().decrypt(blob)


# ---------------------------------------------------------------------- rotation and cache


def test_rotated_refresh_token_is_stored_encrypted(sso: SsoSandbox, client: EveSso, engine: Engine, token_key: str) -> None:
    original = sso.add_character(ALICE, "Alice", CORP, [ASSETS, ROLES], ["Director"])
    info = add_refresh_token(engine, client, original, lookup=lookup_from(sso))
    assert (info.character_id, info.character_name, info.corporation_id) == (ALICE, "Alice", CORP)
    assert info.scopes == (ASSETS, ROLES) and info.roles == ("Director",) and info.status == "valid"

    with pytest.raises(InvalidGrant):  # rotation: the token we were given is dead now
        client.refresh(original)
    stored = stored_refresh_token(engine, ALICE)
    assert stored != original and len(stored) == 24
    assert not any(stored in row or original in row for row in raw_rows(engine))

    # The stored one is the live one: a forced refresh works and rotates it again.
    bearer = access_token(engine, client, ALICE, min_validity=10**6)
    assert sso.verify_access_token(bearer).character_id == ALICE
    assert stored_refresh_token(engine, ALICE) not in (stored, original)
    assert sso.live_refresh_tokens(ALICE) == 1


def test_access_token_cached_and_refreshed_when_under_a_minute_left(
    sso: SsoSandbox, client: EveSso, engine: Engine, token_key: str
) -> None:
    refresh = sso.add_character(ALICE, "Alice", CORP, [ASSETS])
    add_refresh_token(engine, client, refresh)
    before = sso.counters()["refreshes"]
    first = access_token(engine, client, ALICE)  # the token from add_refresh_token, 20 min left
    assert access_token(engine, client, ALICE) == first
    assert sso.counters()["refreshes"] == before

    # The SSO clock runs 1150 s behind: tokens it issues now have 50 s left, under the minute.
    sso.clock = lambda: time.time() - 1150
    short = access_token(engine, client, ALICE, min_validity=10**6)
    assert short != first and sso.counters()["refreshes"] == before + 1
    third = access_token(engine, client, ALICE)  # 50 s left < 60 s: refreshed again
    assert third != short and sso.counters()["refreshes"] == before + 2

    sso.clock = time.time
    fresh = access_token(engine, client, ALICE)
    assert access_token(engine, client, ALICE) == fresh
    assert sso.counters()["refreshes"] == before + 3
    assert get_token(engine, ALICE).access_expires_at is not None


def test_concurrent_callers_refresh_once(sso: SsoSandbox, sso_url: str, database_url: str, token_key: str) -> None:
    sso.access_token_ttl = 30  # the token stored by add_refresh_token is already due for a refresh
    refresh = sso.add_character(ALICE, "Alice", CORP, [ASSETS])
    engines = [create_engine(database_url) for _ in range(2)]  # like two Dagster step processes
    clients = [make_client(sso, sso_url) for _ in range(2)]
    try:
        add_refresh_token(engines[0], clients[0], refresh)
        get_token(engines[1], ALICE)  # both "processes" connected already
        sso.access_token_ttl = 1200
        sso.token_latency = 0.3  # both callers are surely in flight together
        before = sso.counters()["refreshes"]
        barrier = threading.Barrier(2)
        results: list[str] = []
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                barrier.wait()
                results.append(access_token(engines[i], clients[i], ALICE))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert len(results) == 2 and results[0] == results[1]
        assert sso.counters()["refreshes"] == before + 1
        assert sso.counters()["invalid_grants"] == 0
    finally:
        for c in clients:
            c.close()
        for e in engines:
            e.dispose()


# ---------------------------------------------------------------------- failures


def test_invalid_grant_marks_the_token_and_keeps_the_row(
    sso: SsoSandbox, client: EveSso, engine: Engine, token_key: str
) -> None:
    add_refresh_token(engine, client, sso.add_character(ALICE, "Alice", CORP, [ASSETS]))
    sso.revoke(ALICE)
    with pytest.raises(InvalidGrant) as err:
        access_token(engine, client, ALICE, min_validity=10**6)
    message = str(err.value)
    assert "Alice" in message and "log in again" in message and "sync-assets esi login" in message
    assert err.value.character_id == ALICE

    info = get_token(engine, ALICE)  # nothing deleted
    assert info.status == "invalid_grant"
    assert "log in again with `sync-assets esi login`" in (info.status_detail or "")
    assert "Invalid refresh token" in (info.status_detail or "")

    # Known dead: no further calls to the SSO, even for the cached access token.
    grants = sso.counters()["invalid_grants"]
    with pytest.raises(InvalidGrant, match="Alice"):
        access_token(engine, client, ALICE)
    assert sso.counters()["invalid_grants"] == grants

    # A new login replaces it and makes it valid again.
    sso.set_corporation(ALICE, OTHER_CORP)
    info = add_refresh_token(engine, client, sso.add_character(ALICE, "Alice", OTHER_CORP, [ASSETS]))
    assert info.status == "valid" and info.status_detail is None
    assert access_token(engine, client, ALICE)


def test_forgotten_access_token_is_refreshed_and_a_sold_character_is_stopped(
    sso: SsoSandbox, client: EveSso, engine: Engine, token_key: str
) -> None:
    lookup = lookup_from(sso)
    add_refresh_token(engine, client, sso.add_character(ALICE, "Alice", CORP, [ASSETS], ["Director"]), lookup=lookup)
    cached = access_token(engine, client, ALICE)
    forget_access_token(engine, ALICE)  # e.g. ESI's 403 "token expiry is too far in the future"
    assert access_token(engine, client, ALICE) != cached

    sso.transfer_character(ALICE)  # sold: a new owner hash behind the same character id
    with pytest.raises(InvalidGrant, match="changed owner"):
        access_token(engine, client, ALICE, min_validity=10**6)
    assert get_token(engine, ALICE).status == "invalid_grant"
    # The new owner logs in: what we knew about the old owner's corporation and roles is dropped.
    info = add_refresh_token(engine, client, sso.add_character(ALICE, "Alice", CORP, [ASSETS]))
    assert (info.status, info.corporation_id, info.roles, info.roles_checked_at) == ("valid", None, (), None)


def test_bad_client_secret_is_a_config_error_naming_the_variable(
    sso: SsoSandbox, sso_url: str, engine: Engine, token_key: str
) -> None:
    refresh = sso.add_character(ALICE, "Alice", CORP, [ASSETS])
    wrong = "definitely-not-the-secret-42"
    with make_client(sso, sso_url, secret=wrong) as bad:
        with pytest.raises(InvalidClient) as err:
            add_refresh_token(engine, bad, refresh)
    assert "ESI_CLIENT_SECRET" in str(err.value) and "ESI_CLIENT_ID" in str(err.value)
    assert wrong not in str(err.value) and wrong not in repr(bad)
    assert sso.counters()["invalid_clients"] == 1
    assert list_tokens(engine) == []
    with make_client(sso, sso_url) as good:  # the refresh token was not consumed
        assert good.refresh(refresh).claims.character_id == ALICE


def test_transient_errors_are_retried_then_raised_distinctly(
    sso: SsoSandbox, client: EveSso, engine: Engine, token_key: str
) -> None:
    add_refresh_token(engine, client, sso.add_character(ALICE, "Alice", CORP, [ASSETS]))
    sso.fail_token_requests(2, 503)
    assert access_token(engine, client, ALICE, min_validity=10**6)
    assert sso.counters()["injected_errors"] == 2

    before = stored_refresh_token(engine, ALICE)
    sso.fail_token_requests(client.attempts, 502)
    with pytest.raises(SsoUnavailable, match=f"failed {client.attempts} times"):
        access_token(engine, client, ALICE, min_validity=10**6)
    assert stored_refresh_token(engine, ALICE) == before and get_token(engine, ALICE).status == "valid"

    # The SSO rotates the token but the answer is lost: the retry's invalid_grant is ambiguous, so
    # the token is not condemned on it...
    sso.fail_token_requests(1, 502, after_processing=True)
    with pytest.raises(SsoUnavailable, match="may have rotated"):
        access_token(engine, client, ALICE, min_validity=10**6)
    assert get_token(engine, ALICE).status == "valid"
    # ...the next, unambiguous answer is.
    with pytest.raises(InvalidGrant):
        access_token(engine, client, ALICE, min_validity=10**6)
    assert get_token(engine, ALICE).status == "invalid_grant"


# ---------------------------------------------------------------------- JWT validation


def test_jwt_validation(sso: SsoSandbox, client: EveSso) -> None:
    sso.add_character(ALICE, "Alice", CORP, [ASSETS, WALLET])
    claims = sso.jwt_claims(ALICE)
    ok = client.validate(sso.sign(claims))
    assert (ok.character_id, ok.character_name, ok.scopes) == (ALICE, "Alice", (ASSETS, WALLET))
    assert client.validate(sso.sign({**claims, "iss": "login.eveonline.com"})).character_id == ALICE
    assert client.validate(sso.sign({**claims, "scp": ASSETS})).scopes == (ASSETS,)  # a bare string

    def rejected(token: str, reason: str) -> None:
        with pytest.raises(InvalidAccessToken, match=reason):
            client.validate(token)

    rejected(sso.sign({**claims, "aud": ["someone-else", "EVE Online"]}), "not issued to this application")
    rejected(sso.sign({**claims, "aud": [sso.client_id]}), "lacks 'EVE Online'")
    rejected(sso.sign({**claims, "iss": "https://login.evil.example"}), "issued by")
    rejected(sso.sign({**claims, "iat": claims["iat"] - 4000, "exp": claims["iat"] - 2800}), "expired")
    rejected(sso.sign({**claims, "sub": "CORPORATION:EVE:1"}), "unexpected subject")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rejected(jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": KEY_ID}), "signature")
    rejected(jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": "unknown-kid"}), "absent from the SSO's key set")
    rejected(jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": KEY_ID}), "expected RS256")
    rejected("not.a.jwt", "not a JWT")


def test_single_scope_as_string_end_to_end(sso: SsoSandbox, client: EveSso, engine: Engine, token_key: str) -> None:
    sso.single_scope_as_string = True
    token = sso.add_character(ALICE, "Alice", CORP, [ASSETS])
    assert sso.verify_access_token(sso.mint_access_token(ALICE)).scopes == (ASSETS,)
    info = add_refresh_token(engine, client, token, lookup=lookup_from(sso))
    assert info.scopes == (ASSETS,)
    assert select_token(engine, CORP, ASSETS, ()).character_id == ALICE


# ---------------------------------------------------------------------- choosing a token


def test_select_token_by_scope_and_role(sso: SsoSandbox, client: EveSso, engine: Engine, token_key: str) -> None:
    lookup = lookup_from(sso)
    for cid, name, corp, scopes, roles in (
        (ALICE, "Alice", CORP, [ASSETS, ROLES], ["Director"]),
        (BOB, "Bob", CORP, [ASSETS, ROLES], ["Trader"]),
        (CAROL, "Carol", CORP, [WALLET, ROLES], ["Accountant"]),
        (DAVE, "Dave", OTHER_CORP, [ASSETS, WALLET, ROLES], ["Director"]),
    ):
        add_refresh_token(engine, client, sso.add_character(cid, name, corp, scopes, roles), lookup=lookup)

    assert select_token(engine, CORP, ASSETS, ["Director"]).character_id == ALICE
    assert select_token(engine, CORP, WALLET, ["Accountant", "Junior_Accountant"]).character_id == CAROL
    assert select_token(engine, OTHER_CORP, WALLET, ["Accountant", "Director"]).character_id == DAVE
    assert select_token(engine, CORP, ASSETS, ()).character_id in (ALICE, BOB)

    with pytest.raises(NoUsableToken) as err:
        select_token(engine, CORP, WALLET, ["Director"])
    message = str(err.value)
    assert str(CORP) in message and WALLET in message and "Director" in message
    assert f"Alice ({ALICE}): lacks the scope" in message
    assert f"Carol ({CAROL}): has roles [Accountant], none of the needed" in message
    assert "Dave" not in message  # another corporation

    mark_status(engine, ALICE, "lost_role", "ESI: Character does not have required role(s)")
    with pytest.raises(NoUsableToken, match=r"Alice .*status lost_role \(ESI: Character does not have"):
        select_token(engine, CORP, ASSETS, ["Director"])
    update_identity(engine, ALICE, CORP, ["Director"])  # roles re-checked
    assert select_token(engine, CORP, ASSETS, ["Director"]).character_id == ALICE

    with pytest.raises(NoUsableToken, match="no ESI token of corporation 98000009 is stored"):
        select_token(engine, 98000009, ASSETS, ["Director"])


# ---------------------------------------------------------------------- login / CLI functions


def test_pkce_login_end_to_end(sso: SsoSandbox, sso_url: str, engine: Engine, token_key: str) -> None:
    sso.add_character(ALICE, "Alice", CORP, [ASSETS], ["Director"])
    sso.add_character(BOB, "Bob", CORP, [], ["Accountant"])
    sso.set_login_character(BOB)
    browser: list[httpx.Response] = []
    threads: list[threading.Thread] = []

    def open_in_browser(url: str) -> None:
        query = parse_qs(urlsplit(url).query)
        assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
        assert query["redirect_uri"][0].startswith("http://127.0.0.1:")
        threads.append(threading.Thread(target=lambda: browser.append(httpx.get(url, follow_redirects=True, timeout=10))))
        threads[-1].start()

    out = io.StringIO()
    with make_client(sso, sso_url, callback_url="http://127.0.0.1:0/callback") as c:
        info = login([WALLET, ROLES], sso=c, engine=engine, lookup=lookup_from(sso), on_url=open_in_browser, out=out, timeout=20)
    assert (info.character_id, info.corporation_id, info.roles) == (BOB, CORP, ("Accountant",))
    assert info.scopes == (WALLET, ROLES)
    assert sso.counters()["authorizations"] == 1
    threads[0].join(10)
    assert browser[0].status_code == 200 and "Logged in" in browser[0].text
    assert "Open this URL" in out.getvalue() and "Bob" in out.getvalue()
    assert select_token(engine, CORP, WALLET, ["Accountant"]).character_id == BOB
    assert sso.live_refresh_tokens(BOB) == 2  # add_character authorized once, the login once more


def test_login_rejects_a_redirect_with_another_state(sso: SsoSandbox, sso_url: str, engine: Engine, token_key: str) -> None:
    from sync_assets.apis.esi.sso import LoginError

    sso.add_character(ALICE, "Alice", CORP, [ASSETS])

    browser: list[httpx.Response] = []
    threads: list[threading.Thread] = []

    def forged(url: str) -> None:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()} | {"state": "forged"}
        forged_url = urlunsplit(parts._replace(query=urlencode(query)))
        threads.append(threading.Thread(target=lambda: browser.append(httpx.get(forged_url, follow_redirects=True, timeout=10))))
        threads[-1].start()

    with make_client(sso, sso_url, callback_url="http://127.0.0.1:0/callback") as c:
        with pytest.raises(LoginError, match="state"):
            login([ASSETS], sso=c, engine=engine, on_url=forged, out=io.StringIO(), timeout=20)
    threads[0].join(10)
    assert browser[0].status_code == 400 and "State mismatch" in browser[0].text
    assert list_tokens(engine) == []


def test_pkce_code_checks(sso: SsoSandbox, sso_url: str, client: EveSso) -> None:
    sso.add_character(ALICE, "Alice", CORP, [ASSETS])

    def code_for(challenge: str) -> str:
        url = client.authorize_url([ASSETS], "st", challenge, redirect_uri="http://127.0.0.1:1/cb")
        response = httpx.get(url)
        assert response.status_code == 302
        query = parse_qs(urlsplit(response.headers["location"]).query)
        assert query["state"] == ["st"]
        return query["code"][0]

    import base64
    import hashlib

    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    with pytest.raises(InvalidGrant):
        client.exchange_code(code_for(challenge), "w" * 50)  # wrong verifier
    code = code_for(challenge)
    assert client.exchange_code(code, verifier).claims.character_id == ALICE
    with pytest.raises(InvalidGrant):
        client.exchange_code(code, verifier)  # single use
    sso.clock = lambda: time.time() - 301
    stale = code_for(challenge)
    sso.clock = time.time
    with pytest.raises(InvalidGrant):
        client.exchange_code(stale, verifier)  # 5 minutes


def test_add_token_from_stdin_and_print_tokens(sso: SsoSandbox, client: EveSso, engine: Engine, token_key: str) -> None:
    refresh = sso.add_character(CAROL, "Carol", CORP, [WALLET, ROLES], ["Accountant"])
    out = io.StringIO()
    info = add_token(sso=client, engine=engine, stdin=io.StringIO(refresh + "\n"), env={"SYNC_ASSETS_TOKEN_KEY": token_key}, out=out, lookup=lookup_from(sso))
    assert info.character_id == CAROL and "Stored the ESI token of Carol" in out.getvalue()

    add_refresh_token(engine, client, sso.add_character(DAVE, "Dave", OTHER_CORP, [ASSETS]))
    sso.revoke(DAVE)
    with pytest.raises(InvalidGrant):
        access_token(engine, client, DAVE, min_validity=10**6)
    table = io.StringIO()
    tokens = print_tokens(engine=engine, out=table)
    text_out = table.getvalue()
    assert [t.character_id for t in tokens] == [CAROL, DAVE]
    assert "Accountant" in text_out and "invalid_grant" in text_out and "not checked" in text_out
    assert "Dave (2112000004): EVE SSO rejected the refresh token" in text_out
    assert not any(secret in text_out for secret in sso.issued_secrets())


# ---------------------------------------------------------------------- secrets


def test_key_errors_name_the_variable_without_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNC_ASSETS_TOKEN_KEY", raising=False)
    with pytest.raises(TokenKeyError, match="SYNC_ASSETS_TOKEN_KEY is not set.*Fernet.generate_key"):
        TokenCipher.from_env()
    bad = "almost-a-key-but-not-quite-0123456789"
    with pytest.raises(TokenKeyError, match="SYNC_ASSETS_TOKEN_KEY is not a Fernet key") as err:
        TokenCipher(bad)
    assert bad not in str(err.value)
    key, other = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    blob = TokenCipher(key).encrypt("refresh-token")
    assert key not in repr(TokenCipher(key))
    with pytest.raises(TokenKeyError, match="cannot be decrypted"):
        TokenCipher(other).decrypt(blob)
    assert TokenCipher(f"{other},{key}").decrypt(blob) == "refresh-token"  # key rotation


def test_no_secret_in_table_logs_errors_or_reprs(
    sso: SsoSandbox, sso_url: str, client: EveSso, engine: Engine, token_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    said: list[str] = []

    def failing_lookup(bearer: str, character_id: int) -> tuple[int, Sequence[str]]:
        raise RuntimeError("ESI answered 502")

    grant = client.refresh(sso.add_character(ALICE, "Alice", CORP, [ASSETS], ["Director"]))
    said += [repr(grant), repr(client), repr(TokenCipher.from_env())]
    from sync_assets.apis.esi.sso import store_grant

    store_grant(engine, grant, lookup=lookup_from(sso))
    add_refresh_token(engine, client, sso.add_character(BOB, "Bob", CORP, [ASSETS]), lookup=failing_lookup)
    sso.fail_token_requests(1, 503)
    access_token(engine, client, ALICE, min_validity=10**6)
    sso.revoke(BOB)
    wrong_app = make_client(sso, sso_url, secret="wrong")
    for call in (
        lambda: access_token(engine, client, BOB, min_validity=10**6),
        lambda: select_token(engine, CORP, WALLET, ["Director"]),
        lambda: wrong_app.refresh("x" * 24),
        lambda: client.validate(sso.sign({**sso.jwt_claims(ALICE), "aud": ["other"]})),
    ):
        with pytest.raises(Exception) as err:
            call()
        said += [str(err.value), repr(err.value)]
    wrong_app.close()
    print_tokens(engine=engine, out=(table := io.StringIO()))
    said.append(table.getvalue())

    assert any("retry" in r.getMessage() for r in caplog.records)  # the 503 was logged...
    assert any("could not look up" in r.getMessage() for r in caplog.records)
    haystacks = raw_rows(engine) + [r.getMessage() for r in caplog.records] + [caplog.text] + said
    secrets = sso.issued_secrets() | {token_key}
    assert len(secrets) > 6
    leaks = [(s[:6] + "…", h[:80]) for s in secrets for h in haystacks if s in h]
    assert not leaks
