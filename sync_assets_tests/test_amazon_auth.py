"""SP-API sellers and LWA tokens against the SP-API sandbox over real HTTP and a real PostgreSQL
(no mocks): storing sellers, one shared access-token cache, refresh once (across threads and
resource instances), and permanent failures recorded on the seller with nothing deleted."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, Iterator

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from sync_assets.apis.amazon.auth import (
    ACCESS_TOKEN_HEADER,
    AmazonAuthResource,
    LwaInvalidClient,
    LwaInvalidGrant,
    LwaSecretExpired,
    SellerNotUsable,
    SpApiToken,
    UnknownSeller,
    list_sellers,
)
from sync_assets.apis.amazon.sandbox import AmazonSandbox, serve_in_thread
from sync_assets.apis.amazon.sellers import EXPIRY_MARGIN_S, REGIONS, SELLERS_TABLE, add_seller, get_seller, set_marketplaces
from sync_assets.core.errors import AuthFailed, FailureClass
from sync_assets.fetch.http import ApiHttpClient, RetryPolicy

INVENTORY = "/fba/inventory/v1/summaries"
US, CA = "ATVPDKIKX0DER", "A2EUQ1WTGCTBG2"
DATASET = SimpleNamespace(key="amazon.inventory_summaries")  # datasets come later; the resource reads .key


class Said:
    """A Dagster-like log capturing its lines, plus every exception text a test saw."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)

    def warning(self, msg: str) -> None:
        self.lines.append(msg)

    def error(self, exc: BaseException) -> BaseException:
        self.lines += [str(exc), repr(exc)]
        return exc


class Env:
    """The sandbox served over HTTP (LWA answers can be slowed down), a database and a key."""

    def __init__(self, sandbox: AmazonSandbox, base_url: str, database_url: str, key: str, delay: list[float]):
        self.sb, self.url, self.database_url, self.key, self.delay = sandbox, base_url, database_url, key, delay
        self.engine = create_engine(database_url)
        self.said = Said()
        self.resources: list[AmazonAuthResource] = []
        self.extra_secrets: set[str] = set()

    def auth(self, secret: str | None = None) -> AmazonAuthResource:
        resource = AmazonAuthResource(
            database_url=self.database_url,
            client_id=self.sb.client_id,
            client_secret=self.sb.client_secret if secret is None else secret,
            token_key=self.key,
            lwa_url=f"{self.url}/auth/o2/token",
        )
        self.resources.append(resource)
        return resource

    def add(self, auth: AmazonAuthResource, seller: str, marketplaces: tuple[str, ...] = (US,)) -> Any:
        return auth.add_seller(seller, self.sb.refresh_tokens[seller], "na", marketplaces)

    def http(self) -> ApiHttpClient:
        return ApiHttpClient(self.url, {"user-agent": "sync-assets-tests/1.0 (Language=Python/3.11)"},
                             httpx.Timeout(10.0), 8, RetryPolicy(max_attempts=2, initial_wait_s=0.01, max_wait_s=0.05))

    def issued(self) -> int:
        return self.sb.lwa.counters["tokens_issued"]

    def requests(self) -> int:
        return self.sb.lwa.counters["token_requests"]

    def row(self, seller: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return dict(conn.execute(text(f"SELECT * FROM {SELLERS_TABLE} WHERE seller_id = :s"), {"s": seller}).mappings().one())

    def make_due(self, seller: str) -> None:
        """As if the cached access token were inside its safety margin."""
        with self.engine.begin() as conn:
            conn.execute(text(f"UPDATE {SELLERS_TABLE} SET access_refresh_at = now() - interval '1 second' WHERE seller_id = :s"),
                         {"s": seller})

    def raw_rows(self) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(text(f"SELECT t::text FROM {SELLERS_TABLE} t")).scalars().all()
            blobs = conn.execute(text(f"SELECT refresh_token_encrypted, access_token_encrypted FROM {SELLERS_TABLE}")).all()
        return list(rows) + [bytes(b).decode("latin-1") for row in blobs for b in row if b is not None]

    def secrets(self) -> set[str]:
        with self.sb.lwa._lock:  # every access token the sandbox ever issued
            access = set(self.sb.lwa._access)
        return access | set(self.sb.refresh_tokens.values()) | {self.sb.client_secret, self.key} | self.extra_secrets


def inventory(http: ApiHttpClient, credential: Any, marketplace: str = US) -> list[dict[str, Any]]:
    params = {"details": "true", "granularityType": "Marketplace", "granularityId": marketplace, "marketplaceIds": marketplace}
    rows: list[dict[str, Any]] = []
    token = None
    while True:
        page = http.get_page(INVENTORY, {**params, **({"nextToken": token} if token else {})}, None, None, auth=credential.auth)
        rows += page.data["payload"]["inventorySummaries"]
        token = (page.data.get("pagination") or {}).get("nextToken")
        if not token:
            return rows


@pytest.fixture
def env(database_url: str, caplog: pytest.LogCaptureFixture) -> Iterator[Env]:
    caplog.set_level(logging.DEBUG)
    sandbox = AmazonSandbox(scale="tiny", inventory_page_size=5, rate_limits_enabled=False)
    delay = [0.0]

    async def app(scope: dict, receive: Any, send: Any) -> None:  # LWA slowed down on demand
        if scope["type"] == "http" and scope["path"] == "/auth/o2/token" and delay[0]:
            import asyncio

            await asyncio.sleep(delay[0])
        await sandbox.app(scope, receive, send)

    with serve_in_thread(app) as url:
        e = Env(sandbox, url, database_url, Fernet.generate_key().decode(), delay)
        try:
            yield e
            # no secret in any table row, log line, message or repr the test produced
            records = caplog.get_records("setup") + caplog.get_records("call")  # (teardown has its own)
            assert any(r.name.startswith("sync_assets.apis.amazon") for r in records)
            haystacks = e.raw_rows() + e.said.lines + [r.getMessage() for r in records]
            haystacks += [logging.Formatter().format(r) for r in records]
            haystacks += [repr(r) for r in e.resources] + [repr(e.auth().lwa()), repr(e.auth().cipher())]
            leaks = [(s[:8] + "…", h[:100]) for s in e.secrets() for h in haystacks if s and s in h]
            assert not leaks
        finally:
            for r in e.resources:
                r.close()
            e.engine.dispose()


# ---------------------------------------------------------------------- storing sellers


def test_add_and_list_sellers_without_secrets(env: Env) -> None:
    sb, auth = env.sb, env.auth()
    first, second = sb.seller_ids
    added = add_seller(env.engine, auth.cipher(), auth.lwa(), first, sb.refresh_tokens[first], "na", [US])
    assert (added.seller_id, added.region, added.marketplace_ids, added.status) == (first, "na", (US,), "valid")
    assert added.endpoint == REGIONS["na"][0] == "https://sellingpartnerapi-na.amazon.com"
    env.add(auth, second, (US, CA))
    assert env.issued() == 2  # each refresh token proven by a real grant

    sellers = list_sellers(env.engine)
    assert [(s.seller_id, s.marketplace_ids, s.status) for s in sellers] == sorted(
        [(first, (US,), "valid"), (second, (US, CA), "valid")])
    for info in sellers:
        assert info.access_expires_at is not None and info.last_grant_at is not None
        assert not any(secret in repr(info) for secret in env.secrets())

    # a bad refresh token is refused with a clear message and nothing is stored
    bogus = "Atzr|IwEBI" + "f" * 40
    env.extra_secrets.add(bogus)
    with pytest.raises(LwaInvalidGrant) as err:
        auth.add_seller("A1NEWSELLER0001", bogus, "na", [US])
    message = str(env.said.error(err.value))
    assert "A1NEWSELLER0001" in message and "nothing was stored" in message and "sync-assets amazon add-seller" in message
    assert err.value.failure_class is FailureClass.AUTH and isinstance(err.value, AuthFailed)
    assert [s.seller_id for s in list_sellers(env.engine)] == sorted([first, second])
    with pytest.raises(UnknownSeller):
        get_seller(env.engine, "A1NEWSELLER0001")

    # malformed settings are refused before LWA is asked
    before = env.requests()
    for region, marketplaces, needle in (("us", [US], "region must be one of na, eu, fe"),
                                         ("na", ["A1PA6795UKMFR9"], "served by region eu"),
                                         ("na", [], "at least one marketplace")):
        with pytest.raises(ValueError, match=needle):
            auth.add_seller(first, sb.refresh_tokens[first], region, marketplaces)
    assert env.requests() == before

    # marketplaces are configurable per seller; a re-add replaces the token and keeps the row
    assert auth.add_seller(first, sb.refresh_tokens[first], "NA", f"{US},{CA}").marketplace_ids == (US, CA)
    assert set_marketplaces(env.engine, first, [CA]).marketplace_ids == (CA,)
    assert get_seller(env.engine, first).created_at == added.created_at


# ---------------------------------------------------------------------- the shared cache


def test_access_token_cached_across_resource_instances(env: Env) -> None:
    seller = env.sb.seller_ids[0]
    env.add(env.auth(), seller)
    assert env.issued() == 1
    one, two = env.auth(), env.auth()  # like two step processes
    credentials = [r.credential_for(DATASET, seller, env.said) for r in (one, two)]
    http = env.http()
    try:
        for credential in credentials:
            assert len(inventory(http, credential)) == 12
    finally:
        http.close()
    assert env.issued() == 1  # the grant of add_seller served both
    assert one.lwa().grants == two.lwa().grants == 0
    assert credentials[0].principal == credentials[1].principal == seller == credentials[0].owner
    assert any(f"using the LWA authorization of seller {seller}" in line for line in env.said.lines)

    row = env.row(seller)  # reused until the safety margin before expiry (LWA: 1 h, refreshed at 55 min)
    assert row["access_expires_at"] - row["access_refresh_at"] == timedelta(seconds=EXPIRY_MARGIN_S)
    env.make_due(seller)
    fresh = env.auth().credential_for(DATASET, seller, env.said)
    assert env.issued() == 2
    env.auth().credential_for(DATASET, seller, env.said)
    assert env.issued() == 2
    assert isinstance(fresh.auth, SpApiToken) and "***" in repr(fresh.auth)


def test_concurrent_refresh_is_one_grant(env: Env) -> None:
    seller = env.sb.seller_ids[1]
    env.add(env.auth(), seller, (US, CA))
    env.make_due(seller)
    env.delay[0] = 0.3  # every caller surely waits while the first one refreshes
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def due(i: int) -> None:
        try:
            barrier.wait()
            results.append(token_of(env.auth().credential_for(DATASET, seller, env.said)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    run(due, 4)
    assert not errors and len(set(results)) == 1
    assert env.issued() == 2  # add_seller's, then one refresh for four callers

    # SP-API refuses the token they all hold: each refreshes with it as stale -> still one grant
    credentials = [env.auth().credential_for(DATASET, seller, env.said) for _ in range(4)]
    env.sb.expire_access_tokens()
    http = env.http()
    pages: list[int] = []

    def walk(i: int) -> None:
        try:
            barrier.wait()
            pages.append(len(inventory(http, credentials[i], CA)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    try:
        run(walk, 4)
    finally:
        http.close()
    assert not errors and pages == [3, 3, 3, 3]
    assert env.issued() == 3
    assert sum(c.auth.refreshes for c in credentials) == 4  # each flow refreshed once, LWA was asked once


def token_of(credential: Any) -> str:
    """The x-amz-access-token a credential's requests carry (seen by an in-process transport)."""
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: seen.append(request) or httpx.Response(200, json={}))
    with httpx.Client(transport=transport) as client:
        client.get("https://sellingpartnerapi-na.amazon.com/x", auth=credential.auth)
    return seen[0].headers[ACCESS_TOKEN_HEADER]


def run(target: Any, n: int) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_expiry_mid_walk_refreshes_once_and_retries_the_request(env: Env) -> None:
    sb = env.sb
    seller = sb.seller_ids[0]
    env.add(env.auth(), seller)
    credential = env.auth().credential_for(DATASET, seller, env.said)
    http = env.http()
    seen: list[int] = []
    original = http.get_page

    def get_page(*args: Any, **kwargs: Any) -> Any:
        page = original(*args, **kwargs)
        seen.append(len(page.data["payload"]["inventorySummaries"]))
        if len(seen) == 2:
            sb.expire_access_tokens()  # every issued token expires between page 2 and page 3
        return page

    http.get_page = get_page  # type: ignore[method-assign]
    try:
        rows = inventory(http, credential)
    finally:
        http.close()
    assert rows == sb.world.seller(seller).inventory[US] and seen == [5, 5, 2]
    assert env.issued() == 2 and credential.auth.refreshes == 1
    assert sb.counters()["unauthorized"] == 1  # the one refused request, sent again with the new token
    assert any("refused the access token (expired); using a new one" in line for line in env.said.lines)


# ---------------------------------------------------------------------- permanent failures


def test_revoked_refresh_token_marks_the_seller_and_deletes_nothing(env: Env) -> None:
    sb = env.sb
    seller, other = sb.seller_ids
    auth = env.auth()
    env.add(auth, seller)
    env.add(auth, other)
    credential = auth.credential_for(DATASET, seller, env.said)  # the cached token, still alive
    sb.revoke_refresh_token(seller)  # the seller removes the app: its access tokens die too
    http = env.http()
    try:
        with pytest.raises(LwaInvalidGrant) as err:
            inventory(http, credential)
    finally:
        http.close()
    message = str(env.said.error(err.value))
    assert f"seller {seller}" in message and "re-authorize the app" in message
    assert "`sync-assets amazon add-seller`" in message and err.value.failure_class is FailureClass.AUTH

    info = get_seller(env.engine, seller)
    assert info.status == "revoked" and info.status_at is not None and "invalid_grant" in (info.status_detail or "")
    row = env.row(seller)
    assert row["refresh_token_encrypted"] is not None and row["marketplace_ids"] == [US]  # nothing deleted
    assert get_seller(env.engine, other).status == "valid"

    before = env.requests()  # the next run fails at once, without asking LWA
    with pytest.raises(SellerNotUsable, match="marked revoked") as again:
        env.auth().credential_for(DATASET, seller, env.said)
    env.said.error(again.value)
    assert env.requests() == before and isinstance(again.value, AuthFailed)

    renewed = sb.authorize_again(seller)  # the operator re-authorizes and stores the new token
    env.extra_secrets.add(renewed)
    assert auth.add_seller(seller, renewed, "na", [US]).status == "valid"
    http = env.http()
    try:
        assert len(inventory(http, env.auth().credential_for(DATASET, seller, env.said))) == 12
    finally:
        http.close()


def test_bad_client_secret_names_the_variable(env: Env) -> None:
    sb = env.sb
    seller = sb.seller_ids[0]
    wrong = "amzn1.oa2-cs.v1.not-the-secret-" + "9" * 32
    env.extra_secrets.add(wrong)
    bad = env.auth(secret=wrong)
    with pytest.raises(LwaInvalidClient) as err:
        env.add(bad, seller)
    message = str(env.said.error(err.value))
    assert "SP_API_CLIENT_SECRET" in message and "invalid_client" in message
    assert err.value.failure_class is FailureClass.CONFIGURATION and isinstance(err.value, AuthFailed)
    assert list_sellers(env.engine) == []  # nothing stored

    env.add(env.auth(), seller)
    env.make_due(seller)
    with pytest.raises(LwaInvalidClient, match="SP_API_CLIENT_SECRET") as err:
        bad.credential_for(DATASET, seller, env.said)
    env.said.error(err.value)
    info = get_seller(env.engine, seller)
    assert info.status == "invalid_client" and "SP_API_CLIENT_SECRET" in (info.status_detail or "")
    before = env.requests()
    with pytest.raises(SellerNotUsable, match="invalid_client"):
        env.auth(secret=wrong).credential_for(DATASET, seller, env.said)
    assert env.requests() == before  # the same wrong secret is not tried again (for an hour)
    with env.engine.begin() as conn:
        conn.execute(text(f"UPDATE {SELLERS_TABLE} SET status_at = now() - interval '2 hours'"))
    with pytest.raises(LwaInvalidClient):
        env.auth(secret=wrong).credential_for(DATASET, seller, env.said)
    assert env.requests() == before + 1
    env.auth().credential_for(DATASET, seller, env.said)  # the right secret: usable again
    assert get_seller(env.engine, seller).status == "valid"

    with pytest.raises(Exception, match="SP_API_CLIENT_ID"):
        AmazonAuthResource(database_url=env.database_url, client_id="", client_secret="x", token_key=env.key).lwa()
    with pytest.raises(AuthFailed, match="SYNC_ASSETS_TOKEN_KEY") as err:
        AmazonAuthResource(database_url=env.database_url, client_id="a", client_secret="b", token_key="nope").cipher()
    assert "nope" not in str(err.value)


def test_expired_client_secret_marks_the_seller_until_rotated(env: Env) -> None:
    sb = env.sb
    seller = sb.seller_ids[0]
    env.add(env.auth(), seller)
    old_secret = sb.client_secret
    env.extra_secrets.add(old_secret)
    sb.expire_client_secret()
    credential = env.auth().credential_for(DATASET, seller, env.said)
    issued = env.issued()
    http = env.http()
    try:
        with pytest.raises(LwaSecretExpired) as err:
            inventory(http, credential)
    finally:
        http.close()
    message = str(env.said.error(err.value))
    assert "client secret" in message and "Rotate it" in message and "SP_API_CLIENT_SECRET" in message
    assert err.value.failure_class is FailureClass.CONFIGURATION and isinstance(err.value, AuthFailed)
    assert env.issued() == issued and credential.auth.refreshes == 0  # no refresh in vain
    info = get_seller(env.engine, seller)
    assert info.status == "secret_expired" and info.access_expires_at is None
    assert env.row(seller)["refresh_token_encrypted"] is not None

    before = env.requests()
    with pytest.raises(LwaSecretExpired):
        env.auth().credential_for(DATASET, seller, env.said)  # same secret: fails before asking anyone
    assert env.requests() == before

    new_secret = sb.rotate_client_secret()
    env.extra_secrets.add(new_secret)
    rotated = env.auth(secret=new_secret)
    http = env.http()
    try:
        assert len(inventory(http, rotated.credential_for(DATASET, seller, env.said))) == 12
    finally:
        http.close()
    assert get_seller(env.engine, seller).status == "valid"


def test_unknown_seller_and_report_forbidden(env: Env) -> None:
    auth = env.auth()
    seller = env.sb.seller_ids[0]
    with pytest.raises(UnknownSeller, match="sync-assets amazon add-seller"):
        auth.credential_for(DATASET, "A1NOTSTORED000", env.said)
    with pytest.raises(SellerNotUsable, match="partitioned by seller id"):
        auth.credential_for(DATASET, None, env.said)
    env.add(auth, seller)
    credential = auth.credential_for(DATASET, seller, env.said)
    auth.report_forbidden(credential, DATASET, "Unauthorized: Access to requested resource is denied. The access token you provided is revoked, malformed or invalid.")
    assert get_seller(env.engine, seller).access_expires_at is None and get_seller(env.engine, seller).status == "valid"
    auth.report_forbidden(credential, DATASET, "Unauthorized: The LWA secret token you provided has expired.")
    assert get_seller(env.engine, seller).status == "secret_expired"


def test_headers_sent(env: Env) -> None:
    """The token travels in x-amz-access-token, bare (no Bearer), and nowhere else."""
    seller = env.sb.seller_ids[0]
    auth = env.auth()
    env.add(auth, seller)
    credential = auth.credential_for(DATASET, seller, env.said)
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: seen.append(request) or httpx.Response(200, json={}))
    with httpx.Client(transport=transport) as client:
        client.get("https://sellingpartnerapi-na.amazon.com/x", auth=credential.auth)
    assert seen[0].headers[ACCESS_TOKEN_HEADER].startswith("Atza|") and "authorization" not in seen[0].headers
