"""SP-API sellers in PostgreSQL (``sync_assets.amazon_sellers``), shared by every process.

One row per selling partner: its region (which regional SP-API endpoint serves it), the marketplaces
to sync, its LWA refresh token Fernet-encrypted with ``SYNC_ASSETS_TOKEN_KEY`` (the key ESI tokens
use), the cached access token (encrypted too) and a status with its reason and time.

Dagster runs each step in its own process, so the access-token cache lives in the row: a token is
reused until shortly before it expires (:data:`EXPIRY_MARGIN_S`), then refreshed under a row lock
(``SELECT ... FOR UPDATE``): the first process refreshes, the others wait on the lock and find the
new token. A caller whose token SP-API refused passes it as ``stale``, so concurrent callers that
saw the same refusal refresh once between them.

Nothing is deleted here. A refresh token LWA rejects marks the seller ``revoked``; refused
application credentials mark it ``invalid_client``; SP-API's "secret expired" answer marks it
``secret_expired``; each with a reason saying what to do. ``add_seller`` with a new refresh token
makes the seller ``valid`` again; a changed client secret lets the others try again.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import Connection, Engine, text

from ...core.errors import AuthFailed, FailureClass
from ...warehouse.tables import DDL_LOCK, META_SCHEMA
from ..esi.sso.crypto import TokenCipher
from .lwa import CLIENT_SECRET_SETTING, LwaClient, LwaInvalidClient, LwaInvalidGrant
from .datasets import SELLERS_PARTITIONS as DYNAMIC_PARTITIONS

__all__ = [
    "ADD_SELLER",
    "APP_RECHECK_AFTER",
    "EXPIRY_MARGIN_S",
    "MARKETPLACES",
    "REGIONS",
    "SELLERS_DDL",
    "SELLERS_TABLE",
    "STATUSES",
    "LwaSecretExpired",
    "SellerInfo",
    "SellerNotUsable",
    "UnknownSeller",
    "access_token",
    "add_seller",
    "ensure_sellers_table",
    "forget_access_token",
    "get_seller",
    "list_sellers",
    "mark_status",
    "secret_expired_detail",
    "set_marketplaces",
]

SELLERS_TABLE = f"{META_SCHEMA}.amazon_sellers"
STATUSES = ("valid", "revoked", "invalid_client", "secret_expired")
#: Reuse a cached access token until this long before it expires (LWA: 1 h; refresh at 55 min).
#: Short-lived tokens keep at least three quarters of their life.
EXPIRY_MARGIN_S = 300
#: A seller marked for the application's credentials (invalid_client, secret_expired) fails at once
#: while the same client id and secret are configured, and is tried again after this long anyway.
APP_RECHECK_AFTER = timedelta(hours=1)
ADD_SELLER = "sync-assets amazon add-seller"
#: The Dagster dynamic partitions of seller-partitioned SP-API datasets (one key per seller id).
SELLERS_PARTITIONS = DYNAMIC_PARTITIONS  # one Dagster dynamic partition per stored seller (declared with the datasets)

#: region -> (SP-API endpoint, sandbox endpoint) [SP-API developer guide]
REGIONS: dict[str, tuple[str, str]] = {
    "na": ("https://sellingpartnerapi-na.amazon.com", "https://sandbox.sellingpartnerapi-na.amazon.com"),
    "eu": ("https://sellingpartnerapi-eu.amazon.com", "https://sandbox.sellingpartnerapi-eu.amazon.com"),
    "fe": ("https://sellingpartnerapi-fe.amazon.com", "https://sandbox.sellingpartnerapi-fe.amazon.com"),
}
#: Known marketplace ids -> (country, region): a known id in another region is refused; unknown
#: ids (a marketplace opened later) are accepted as given.
MARKETPLACES: dict[str, tuple[str, str]] = {
    "ATVPDKIKX0DER": ("US", "na"), "A2EUQ1WTGCTBG2": ("CA", "na"), "A1AM78C64UM0Y8": ("MX", "na"),
    "A2Q3Y263D00KWC": ("BR", "na"),
    "A1F83G8C2ARO7P": ("UK", "eu"), "A1PA6795UKMFR9": ("DE", "eu"), "A13V1IB3VIYZZH": ("FR", "eu"),
    "APJ6JRA9NG5V4": ("IT", "eu"), "A1RKKUPIHCS9HS": ("ES", "eu"), "A1805IZSGTT6HS": ("NL", "eu"),
    "A2NODRKZP88ZB9": ("SE", "eu"), "A1C3SOZRARQ6R3": ("PL", "eu"), "AMEN7PMS2ZV76": ("BE", "eu"),
    "A33AVAJ2PDY3EV": ("TR", "eu"), "A2VIGQ35RCS4UG": ("AE", "eu"), "A17E79C6D8DWNP": ("SA", "eu"),
    "ARBP9OOSHTCHU": ("EG", "eu"), "A21TJRUUN4KGV": ("IN", "eu"), "AE08WJ6YKNBMC": ("ZA", "eu"),
    "A1VC38T7YXB528": ("JP", "fe"), "A39IBJ37TRP1C6": ("AU", "fe"), "A19VAU5U5O7RUS": ("SG", "fe"),
}
_ID = re.compile(r"^[A-Z0-9]{1,64}$")

log = logging.getLogger("sync_assets.apis.amazon.sellers")

SELLERS_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {META_SCHEMA};
CREATE TABLE IF NOT EXISTS {SELLERS_TABLE} (
    seller_id                text        PRIMARY KEY,
    region                   text        NOT NULL CHECK (region IN ('na', 'eu', 'fe')),
    marketplace_ids          text[]      NOT NULL DEFAULT '{{}}',
    refresh_token_encrypted  bytea       NOT NULL,
    access_token_encrypted   bytea,
    access_expires_at        timestamptz,
    access_refresh_at        timestamptz,
    status                   text        NOT NULL DEFAULT 'valid'
                             CHECK (status IN ('valid', 'revoked', 'invalid_client', 'secret_expired')),
    status_detail            text,
    status_at                timestamptz,
    client_fingerprint       text,
    last_grant_at            timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {SELLERS_TABLE} IS
    'SP-API sellers; LWA refresh/access tokens Fernet-encrypted with SYNC_ASSETS_TOKEN_KEY';
COMMENT ON COLUMN {SELLERS_TABLE}.client_fingerprint IS
    'truncated hash of the LWA client id and secret of the last grant or refusal (not the secret)';
"""

_INFO_COLUMNS = (
    "seller_id, region, marketplace_ids, status, status_detail, status_at, access_expires_at, last_grant_at, "
    "created_at, updated_at"
)
_ready: set[str] = set()
_ready_lock = threading.Lock()


# ---------------------------------------------------------------------- errors


class SellerNotUsable(AuthFailed):
    """The seller is stored but cannot be used (or is not stored); the message says what to do."""


class UnknownSeller(SellerNotUsable, LookupError):
    """No stored seller with that id."""


class LwaSecretExpired(AuthFailed):
    """SP-API refused the access token because the application's LWA client secret expired."""

    failure_class = FailureClass.CONFIGURATION


# ---------------------------------------------------------------------- what is stored


@dataclass(frozen=True)
class SellerInfo:
    """One stored seller, without secrets."""

    seller_id: str
    region: str
    marketplace_ids: tuple[str, ...]
    status: str
    status_detail: str | None
    status_at: datetime | None
    access_expires_at: datetime | None
    last_grant_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def endpoint(self) -> str:
        """The regional SP-API endpoint serving this seller."""
        return REGIONS[self.region][0]

    @property
    def sandbox_endpoint(self) -> str:
        return REGIONS[self.region][1]


def ensure_sellers_table(engine: Engine) -> None:
    """Create the table once per process and database (idempotent, serialized across processes)."""
    key = engine.url.render_as_string(hide_password=False)
    if key in _ready:
        return
    with _ready_lock:
        if key in _ready:
            return
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": DDL_LOCK})
            conn.execute(text(SELLERS_DDL))
        _ready.add(key)


# ---------------------------------------------------------------------- adding and configuring


def add_seller(
    engine: Engine,
    cipher: TokenCipher,
    lwa: LwaClient,
    seller_id: str,
    refresh_token: str,
    region: str,
    marketplaces: Iterable[str],
) -> SellerInfo:
    """Store a seller's refresh token after a real grant proved it works (the access token of that
    grant is cached). A seller already stored gets the new token (a re-authorization), the region
    and marketplaces given, and status ``valid``; nothing else of it changes.

    LWA does not say which selling partner a refresh token belongs to: ``seller_id`` is taken as
    given (Seller Central > Settings > Account Info > Merchant Token, or the OAuth redirect's
    ``selling_partner_id``).

    Raises :class:`ValueError` for a malformed id, region or marketplace, and the grant's
    :class:`~.lwa.LwaError` (with a message saying what to do); nothing is stored then.
    """
    seller_id = _check_seller_id(seller_id)
    region = _check_region(region)
    marketplace_ids = _check_marketplaces(marketplaces, region)
    try:
        grant = lwa.grant(refresh_token)
    except LwaInvalidGrant as exc:
        raise LwaInvalidGrant(
            f"the refresh token given for seller {seller_id} was refused by LWA "
            f"({exc.error}: {exc.description or 'no description'}); nothing was stored. Copy the refresh token "
            f"of a current authorization of the app by this seller (Seller Central > Develop apps > Authorize, or "
            f"the OAuth flow) and run `{ADD_SELLER}` again",
            error=exc.error,
            description=exc.description,
            seller_id=seller_id,
        ) from None
    ensure_sellers_table(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                f"""
                INSERT INTO {SELLERS_TABLE} AS s (seller_id, region, marketplace_ids, refresh_token_encrypted,
                    access_token_encrypted, access_expires_at, access_refresh_at, status, status_detail, status_at,
                    client_fingerprint, last_grant_at)
                VALUES (:sid, :region, CAST(:mps AS text[]), :refresh, :access, :exp, :refresh_at, 'valid', NULL, now(),
                    :fp, now())
                ON CONFLICT (seller_id) DO UPDATE SET
                    region = EXCLUDED.region,
                    marketplace_ids = EXCLUDED.marketplace_ids,
                    refresh_token_encrypted = EXCLUDED.refresh_token_encrypted,
                    access_token_encrypted = EXCLUDED.access_token_encrypted,
                    access_expires_at = EXCLUDED.access_expires_at,
                    access_refresh_at = EXCLUDED.access_refresh_at,
                    status = 'valid', status_detail = NULL, status_at = now(),
                    client_fingerprint = EXCLUDED.client_fingerprint,
                    last_grant_at = now(), updated_at = now()
                """
            ),
            {
                "sid": seller_id,
                "region": region,
                "mps": list(marketplace_ids),
                "refresh": cipher.encrypt(grant.refresh_token),
                "access": cipher.encrypt(grant.access_token),
                "exp": grant.expires_at,
                "refresh_at": _refresh_at(grant.issued_at, grant.expires_in),
                "fp": lwa.fingerprint,
            },
        )
    log.info(f"stored SP-API seller {seller_id} (region {region}, marketplaces {', '.join(marketplace_ids) or 'none'})")
    return get_seller(engine, seller_id)


def set_marketplaces(engine: Engine, seller_id: str, marketplaces: Iterable[str]) -> SellerInfo:
    """Replace the marketplaces synced for a seller (checked against its region)."""
    info = get_seller(engine, seller_id)
    marketplace_ids = _check_marketplaces(marketplaces, info.region)
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE {SELLERS_TABLE} SET marketplace_ids = CAST(:mps AS text[]), updated_at = now() WHERE seller_id = :sid"),
            {"sid": info.seller_id, "mps": list(marketplace_ids)},
        )
    return get_seller(engine, seller_id)


def mark_status(engine: Engine, seller_id: str, status: str, detail: str | None, *, client_fingerprint: str | None = None) -> None:
    """Set a seller's status and reason; any status but ``valid`` also drops its cached access token."""
    if status not in STATUSES:
        raise ValueError(f"unknown seller status {status!r}; expected one of {', '.join(STATUSES)}")
    ensure_sellers_table(engine)
    with engine.begin() as conn:
        if not _set_status(conn, seller_id, status, detail, client_fingerprint):
            raise UnknownSeller(_unknown(seller_id))


def forget_access_token(engine: Engine, seller_id: str) -> None:
    """Drop the cached access token: the next :func:`access_token` asks LWA for a new one."""
    ensure_sellers_table(engine)
    with engine.begin() as conn:
        updated = conn.execute(
            text(
                f"""UPDATE {SELLERS_TABLE} SET access_token_encrypted = NULL, access_expires_at = NULL,
                        access_refresh_at = NULL, updated_at = now() WHERE seller_id = :sid"""
            ),
            {"sid": seller_id},
        ).rowcount
    if not updated:
        raise UnknownSeller(_unknown(seller_id))


# ---------------------------------------------------------------------- reading


def list_sellers(engine: Engine) -> list[SellerInfo]:
    """Every stored seller, without secrets."""
    ensure_sellers_table(engine)
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {_INFO_COLUMNS} FROM {SELLERS_TABLE} ORDER BY seller_id"))
        return [_info(r) for r in rows.mappings()]


def get_seller(engine: Engine, seller_id: str) -> SellerInfo:
    ensure_sellers_table(engine)
    with engine.connect() as conn:
        row = conn.execute(
            text(f"SELECT {_INFO_COLUMNS} FROM {SELLERS_TABLE} WHERE seller_id = :sid"), {"sid": seller_id}
        ).mappings().first()
    if row is None:
        raise UnknownSeller(_unknown(seller_id))
    return _info(row)


# ---------------------------------------------------------------------- access tokens


def access_token(
    engine: Engine,
    cipher: TokenCipher,
    lwa: LwaClient,
    seller_id: str,
    *,
    stale: str | None = None,
) -> str:
    """An access token for the seller: the cached one while it is not due for a refresh (and is
    not ``stale``, a token SP-API just refused), otherwise a new grant, once across all processes.

    Raises :class:`SellerNotUsable` / :class:`UnknownSeller` without asking LWA when the seller's
    status already says why it cannot work; :class:`~.lwa.LwaInvalidGrant` (seller marked
    ``revoked``) or :class:`~.lwa.LwaInvalidClient` (seller marked ``invalid_client``) when LWA
    refuses; :class:`~.lwa.LwaUnavailable` on transient failures (nothing changed then).
    """
    ensure_sellers_table(engine)
    with engine.connect() as conn:
        row = _secret_row(conn, seller_id, lock=False)
    cached = _cached_access(row, cipher, stale)
    if cached is not None:
        return cached

    failure: Exception | None = None
    result = ""
    with engine.begin() as conn:
        row = _secret_row(conn, seller_id, lock=True)  # waits while another process refreshes
        cached = _cached_access(row, cipher, stale)
        if cached is not None:
            return cached
        _raise_if_unusable(row, lwa)
        refresh_token = cipher.decrypt(row["refresh_token_encrypted"])
        try:
            grant = lwa.grant(refresh_token)
        except LwaInvalidGrant as exc:
            detail = (
                f"LWA rejected the refresh token on {_now():%Y-%m-%d %H:%M} UTC ({exc.error}: "
                f"{exc.description or 'no description'}): the seller revoked the app or the authorization expired; "
                f"{_reauthorize(seller_id)}"
            )
            _set_status(conn, seller_id, "revoked", detail, lwa.fingerprint)
            failure = LwaInvalidGrant(
                f"SP-API seller {seller_id} can no longer be used: {detail}",
                error=exc.error, description=exc.description, seller_id=seller_id,
            )
        except LwaInvalidClient as exc:
            _set_status(conn, seller_id, "invalid_client", f"{exc} (on {_now():%Y-%m-%d %H:%M} UTC)", lwa.fingerprint)
            failure = LwaInvalidClient(f"SP-API seller {seller_id}: {exc}")
        else:
            conn.execute(
                text(
                    f"""UPDATE {SELLERS_TABLE} SET access_token_encrypted = :access, access_expires_at = :exp,
                            access_refresh_at = :refresh_at, refresh_token_encrypted = :refresh,
                            client_fingerprint = :fp, last_grant_at = now(), updated_at = now(),
                            status = 'valid',
                            status_detail = CASE WHEN status = 'valid' THEN status_detail END,
                            status_at = CASE WHEN status = 'valid' THEN status_at ELSE now() END
                        WHERE seller_id = :sid"""
                ),
                {
                    "sid": seller_id,
                    "access": cipher.encrypt(grant.access_token),
                    "exp": grant.expires_at,
                    "refresh_at": _refresh_at(grant.issued_at, grant.expires_in),
                    # LWA refresh tokens do not rotate; should one come back changed, keep that one
                    "refresh": row["refresh_token_encrypted"] if grant.refresh_token == refresh_token
                    else cipher.encrypt(grant.refresh_token),
                    "fp": lwa.fingerprint,
                },
            )
            if row["status"] != "valid":
                log.info(f"SP-API seller {seller_id} is usable again (was {row['status']})")
            log.info(f"new LWA access token for SP-API seller {seller_id}; valid until {grant.expires_at:%H:%M:%S} UTC")
            result = grant.access_token
    if failure is not None:
        raise failure
    return result


def secret_expired_detail(seller_id: str) -> str:
    return (
        f"SP-API refused the access token of seller {seller_id}: the LWA client secret of the application has "
        f"expired (they last 180 days). Rotate it in Seller Central > Develop apps (LWA credentials) and put the new "
        f"secret in {CLIENT_SECRET_SETTING}; the seller needs no new authorization"
    )


# ---------------------------------------------------------------------- internals


def _raise_if_unusable(row: dict[str, Any], lwa: LwaClient) -> None:
    """Fail without asking LWA when the stored status already says the grant cannot work."""
    seller_id, status, detail = row["seller_id"], row["status"], row["status_detail"] or "no detail"
    if status == "revoked":
        raise SellerNotUsable(f"SP-API seller {seller_id} is marked revoked since {_when(row)}: {detail}")
    recent = row["status_at"] is not None and _now() - row["status_at"] < APP_RECHECK_AFTER
    same_app = row["client_fingerprint"] == lwa.fingerprint and recent
    if status == "secret_expired" and same_app:
        raise LwaSecretExpired(f"SP-API seller {seller_id} is marked secret_expired since {_when(row)}: {detail}")
    if status == "invalid_client" and same_app:
        raise SellerNotUsable(f"SP-API seller {seller_id} is marked invalid_client since {_when(row)}: {detail}")
    # otherwise the client id or secret changed since, or the mark is old: try again


def _secret_row(conn: Connection, seller_id: str, *, lock: bool) -> dict[str, Any]:
    row = conn.execute(
        text(
            f"""SELECT seller_id, status, status_detail, status_at, client_fingerprint, refresh_token_encrypted,
                       access_token_encrypted, access_refresh_at
                FROM {SELLERS_TABLE} WHERE seller_id = :sid{' FOR UPDATE' if lock else ''}"""
        ),
        {"sid": seller_id},
    ).mappings().first()
    if row is None:
        raise UnknownSeller(_unknown(seller_id))
    return dict(row)


def _cached_access(row: dict[str, Any], cipher: TokenCipher, stale: str | None) -> str | None:
    if row["status"] != "valid" or row["access_token_encrypted"] is None or row["access_refresh_at"] is None:
        return None
    if row["access_refresh_at"] <= _now():
        return None
    token = cipher.decrypt(row["access_token_encrypted"])
    return None if token == stale else token


def _refresh_at(issued_at: datetime, expires_in: int) -> datetime:
    return issued_at + timedelta(seconds=expires_in - min(EXPIRY_MARGIN_S, expires_in / 4))


def _set_status(conn: Connection, seller_id: str, status: str, detail: str | None, fingerprint: str | None) -> bool:
    drop_access = status != "valid"
    return bool(
        conn.execute(
            text(
                f"""UPDATE {SELLERS_TABLE} SET status = :status, status_detail = :detail, status_at = now(),
                        client_fingerprint = COALESCE(:fp, client_fingerprint),
                        access_token_encrypted = CASE WHEN :drop THEN NULL ELSE access_token_encrypted END,
                        access_expires_at = CASE WHEN :drop THEN NULL ELSE access_expires_at END,
                        access_refresh_at = CASE WHEN :drop THEN NULL ELSE access_refresh_at END,
                        updated_at = now()
                    WHERE seller_id = :sid"""
            ),
            {"sid": seller_id, "status": status, "detail": detail, "fp": fingerprint, "drop": drop_access},
        ).rowcount
    )


def _check_seller_id(seller_id: str) -> str:
    value = (seller_id or "").strip()
    if not _ID.match(value):
        raise ValueError(f"a selling partner id is upper-case letters and digits (e.g. A2EXAMPLE12345), got {seller_id!r}")
    return value


def _check_region(region: str) -> str:
    value = (region or "").strip().lower()
    if value not in REGIONS:
        raise ValueError(f"region must be one of {', '.join(REGIONS)} (the SP-API endpoint serving the seller), got {region!r}")
    return value


def _check_marketplaces(marketplaces: Iterable[str], region: str) -> tuple[str, ...]:
    if isinstance(marketplaces, str):
        marketplaces = marketplaces.split(",")
    ids: list[str] = []
    for raw in marketplaces:
        value = raw.strip()
        if not value:
            continue
        if not _ID.match(value):
            raise ValueError(f"a marketplace id is upper-case letters and digits (e.g. ATVPDKIKX0DER), got {raw!r}")
        known = MARKETPLACES.get(value)
        if known is not None and known[1] != region:
            raise ValueError(f"marketplace {value} ({known[0]}) is served by region {known[1]}, not {region}")
        if value not in ids:
            ids.append(value)
    if not ids:
        raise ValueError("give at least one marketplace id (e.g. ATVPDKIKX0DER for Amazon.com)")
    return tuple(ids)


def _info(row: Any) -> SellerInfo:
    return SellerInfo(
        seller_id=row["seller_id"],
        region=row["region"],
        marketplace_ids=tuple(row["marketplace_ids"] or ()),
        status=row["status"],
        status_detail=row["status_detail"],
        status_at=row["status_at"],
        access_expires_at=row["access_expires_at"],
        last_grant_at=row["last_grant_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _reauthorize(seller_id: str) -> str:
    return (
        f"re-authorize the app for seller {seller_id} (Seller Central > Develop apps > Authorize, or the OAuth flow) "
        f"and store the new refresh token with `{ADD_SELLER}`"
    )


def _unknown(seller_id: str) -> str:
    return f"no SP-API seller {seller_id!r} is stored; add it with `{ADD_SELLER}`"


def _when(row: dict[str, Any]) -> str:
    at = row.get("status_at")
    return f"{at:%Y-%m-%d %H:%M} UTC" if at else "an unknown time"


def _now() -> datetime:
    return datetime.now(timezone.utc)
