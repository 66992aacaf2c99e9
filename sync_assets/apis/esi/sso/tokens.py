"""ESI tokens in PostgreSQL (``sync_assets.esi_tokens``), shared by every process.

Dagster runs each step in its own process, so the access-token cache lives in the table too, and
a refresh happens under a Postgres advisory lock keyed by the character: the first process
refreshes, the others wait and then find the new access token. The rotated refresh token and the
new access token are written in the transaction that held the lock, committed right after the
HTTP call, so no process ever submits a refresh token the SSO has already rotated away.

Tokens are never deleted here: a dead one is marked ``invalid_grant`` with a human explanation,
and ``sync-assets esi login`` replaces it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence

from sqlalchemy import Connection, Engine, text

from ....warehouse.tables import DDL_LOCK, META_SCHEMA
from .crypto import TokenCipher
from .errors import LOGIN_AGAIN, InvalidAccessToken, InvalidGrant, NoUsableToken, UnknownCharacter
from .sso import EveSso, TokenGrant

__all__ = [
    "MIN_VALIDITY_S",
    "STATUSES",
    "TOKENS_DDL",
    "TOKENS_TABLE",
    "Lookup",
    "TokenInfo",
    "access_token",
    "add_refresh_token",
    "ensure_tokens_table",
    "forget_access_token",
    "get_token",
    "list_tokens",
    "mark_status",
    "select_token",
    "store_grant",
    "update_identity",
]

TOKENS_TABLE = f"{META_SCHEMA}.esi_tokens"
STATUSES = ("valid", "invalid_grant", "missing_scope", "lost_role")
MIN_VALIDITY_S = 60  # a cached access token is used only with at least this long left (eseye: 1 min)
_LOCK_BASE = 0x5A41_5554 << 32  # advisory lock = base + character_id: disjoint from the other lock ids

#: ``lookup(access_token, character_id) -> (corporation_id, roles)``: the ESI calls
#: /characters/{id} and /characters/{id}/roles, supplied by the caller.
Lookup = Callable[[str, int], tuple[int, Sequence[str]]]

log = logging.getLogger("sync_assets.apis.esi.sso")

TOKENS_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {META_SCHEMA};
CREATE TABLE IF NOT EXISTS {TOKENS_TABLE} (
    character_id             bigint      PRIMARY KEY,
    character_name           text        NOT NULL,
    owner_hash               text,
    corporation_id           bigint,
    scopes                   text[]      NOT NULL DEFAULT '{{}}',
    roles                    text[]      NOT NULL DEFAULT '{{}}',
    refresh_token_encrypted  bytea       NOT NULL,
    access_token_encrypted   bytea,
    access_expires_at        timestamptz,
    status                   text        NOT NULL DEFAULT 'valid'
                             CHECK (status IN ('valid', 'invalid_grant', 'missing_scope', 'lost_role')),
    status_detail            text,
    last_refresh_at          timestamptz,
    roles_checked_at         timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS esi_tokens_corporation_idx ON {TOKENS_TABLE} (corporation_id);
COMMENT ON TABLE {TOKENS_TABLE} IS
    'EVE SSO tokens per character; refresh/access tokens Fernet-encrypted with SYNC_ASSETS_TOKEN_KEY';
"""

_INFO_COLUMNS = (
    "character_id, character_name, corporation_id, scopes, roles, status, status_detail, owner_hash, "
    "access_expires_at, last_refresh_at, roles_checked_at, created_at, updated_at"
)
_ready: set[str] = set()
_ready_lock = threading.Lock()


@dataclass(frozen=True)
class TokenInfo:
    """One stored token, without secrets."""

    character_id: int
    character_name: str
    corporation_id: int | None
    scopes: tuple[str, ...]
    roles: tuple[str, ...]
    status: str
    status_detail: str | None
    owner_hash: str | None
    access_expires_at: datetime | None
    last_refresh_at: datetime | None
    roles_checked_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def label(self) -> str:
        return f"{self.character_name} ({self.character_id})"


def ensure_tokens_table(engine: Engine) -> None:
    """Create the table once per process and database (idempotent, serialized across processes)."""
    key = engine.url.render_as_string(hide_password=False)
    if key in _ready:
        return
    with _ready_lock:
        if key in _ready:
            return
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": DDL_LOCK})
            conn.execute(text(TOKENS_DDL))
        _ready.add(key)


# ---------------------------------------------------------------------- adding tokens


def add_refresh_token(
    engine: Engine,
    sso: EveSso,
    refresh_token: str,
    *,
    lookup: Lookup | None = None,
    cipher: TokenCipher | None = None,
) -> TokenInfo:
    """Validate a refresh token by refreshing it once, then store the ROTATED one.

    The JWT tells the character, name and scopes; ``lookup`` (optional) the corporation and roles,
    otherwise set them later with :func:`update_identity`.
    """
    cipher = cipher or TokenCipher.from_env()
    grant = sso.refresh(refresh_token.strip())
    return store_grant(engine, grant, lookup=lookup, cipher=cipher)


def store_grant(
    engine: Engine, grant: TokenGrant, *, lookup: Lookup | None = None, cipher: TokenCipher | None = None
) -> TokenInfo:
    """Insert or replace the character's token with a fresh grant (login, add-token); status becomes valid."""
    cipher = cipher or TokenCipher.from_env()
    ensure_tokens_table(engine)
    claims = grant.claims
    with engine.begin() as conn:
        _lock(conn, claims.character_id)  # a concurrent refresh of the old token must not overwrite this one
        conn.execute(
            text(
                f"""
                INSERT INTO {TOKENS_TABLE} AS t (character_id, character_name, owner_hash, scopes,
                    refresh_token_encrypted, access_token_encrypted, access_expires_at, status,
                    last_refresh_at)
                VALUES (:cid, :name, :owner, CAST(:scopes AS text[]), :refresh, :access, :exp, 'valid', now())
                ON CONFLICT (character_id) DO UPDATE SET
                    character_name = EXCLUDED.character_name,
                    owner_hash = EXCLUDED.owner_hash,
                    scopes = EXCLUDED.scopes,
                    refresh_token_encrypted = EXCLUDED.refresh_token_encrypted,
                    access_token_encrypted = EXCLUDED.access_token_encrypted,
                    access_expires_at = EXCLUDED.access_expires_at,
                    status = 'valid',
                    status_detail = NULL,
                    last_refresh_at = now(),
                    -- a new owner (the character was sold): what we knew about it is void
                    corporation_id = CASE WHEN t.owner_hash IS DISTINCT FROM EXCLUDED.owner_hash
                                          THEN NULL ELSE t.corporation_id END,
                    roles = CASE WHEN t.owner_hash IS DISTINCT FROM EXCLUDED.owner_hash
                                 THEN '{{}}' ELSE t.roles END,
                    roles_checked_at = CASE WHEN t.owner_hash IS DISTINCT FROM EXCLUDED.owner_hash
                                            THEN NULL ELSE t.roles_checked_at END,
                    updated_at = now()
                """
            ),
            {
                "cid": claims.character_id,
                "name": claims.character_name,
                "owner": claims.owner_hash or None,
                "scopes": list(claims.scopes),
                "refresh": cipher.encrypt(grant.refresh_token),
                "access": cipher.encrypt(grant.access_token),
                "exp": grant.expires_at,
            },
        )
    log.info(f"stored the ESI token of {claims.character_name} ({claims.character_id}) with {len(claims.scopes)} scopes")
    if lookup is not None:
        # After the commit: a failing ESI call must not cost the rotated refresh token.
        try:
            corporation_id, roles = lookup(grant.access_token, claims.character_id)
        except Exception as exc:  # noqa: BLE001 - reported, the token itself is stored
            log.warning(
                f"stored the token of {claims.character_name} ({claims.character_id}) but could not look up its "
                f"corporation and roles ({type(exc).__name__}: {exc}); they are set on the next check"
            )
        else:
            return update_identity(engine, claims.character_id, corporation_id, roles)
    return get_token(engine, claims.character_id)


def update_identity(engine: Engine, character_id: int, corporation_id: int, roles: Sequence[str]) -> TokenInfo:
    """Record the character's corporation and corporation roles (from ESI); clears ``lost_role``."""
    ensure_tokens_table(engine)
    with engine.begin() as conn:
        updated = conn.execute(
            text(
                f"""
                UPDATE {TOKENS_TABLE} SET corporation_id = :corp, roles = CAST(:roles AS text[]),
                    roles_checked_at = now(), updated_at = now(),
                    status = CASE WHEN status = 'lost_role' THEN 'valid' ELSE status END,
                    status_detail = CASE WHEN status = 'lost_role' THEN NULL ELSE status_detail END
                WHERE character_id = :cid
                """
            ),
            {"cid": character_id, "corp": corporation_id, "roles": sorted(set(roles))},
        ).rowcount
    if not updated:
        raise UnknownCharacter(_unknown(character_id))
    return get_token(engine, character_id)


def forget_access_token(engine: Engine, character_id: int) -> None:
    """Drop the cached access token so the next :func:`access_token` refreshes (ESI's 403 "token
    expiry is too far in the future", or any 403 carrying ``sso_status``)."""
    ensure_tokens_table(engine)
    with engine.begin() as conn:
        updated = conn.execute(
            text(
                f"""UPDATE {TOKENS_TABLE} SET access_token_encrypted = NULL, access_expires_at = NULL, updated_at = now()
                    WHERE character_id = :cid"""
            ),
            {"cid": character_id},
        ).rowcount
    if not updated:
        raise UnknownCharacter(_unknown(character_id))


def mark_status(engine: Engine, character_id: int, status: str, detail: str | None) -> None:
    """Set a token's status (e.g. ``lost_role`` after ESI's 403 "Character does not have required role(s)")."""
    if status not in STATUSES:
        raise ValueError(f"unknown token status {status!r}; expected one of {', '.join(STATUSES)}")
    ensure_tokens_table(engine)
    with engine.begin() as conn:
        if not _set_status(conn, character_id, status, detail):
            raise UnknownCharacter(_unknown(character_id))


# ---------------------------------------------------------------------- reading


def list_tokens(engine: Engine) -> list[TokenInfo]:
    ensure_tokens_table(engine)
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {_INFO_COLUMNS} FROM {TOKENS_TABLE} ORDER BY character_name, character_id"))
        return [_info(r) for r in rows.mappings()]


def get_token(engine: Engine, character_id: int) -> TokenInfo:
    ensure_tokens_table(engine)
    with engine.connect() as conn:
        row = conn.execute(
            text(f"SELECT {_INFO_COLUMNS} FROM {TOKENS_TABLE} WHERE character_id = :cid"), {"cid": character_id}
        ).mappings().first()
    if row is None:
        raise UnknownCharacter(_unknown(character_id))
    return _info(row)


def select_token(engine: Engine, corporation_id: int, scope: str, roles_any: Sequence[str] = ()) -> TokenInfo:
    """A valid token of a character in ``corporation_id`` with ``scope`` and, if ``roles_any`` is
    given, at least one of those corporation roles (pass ``Director`` explicitly if it should do:
    ESI does not let directors through every role check).

    Prefers the token whose cached access token lives longest (no refresh needed). Raises
    :class:`NoUsableToken` explaining, per character considered, why it was rejected.
    """
    tokens = list_tokens(engine)
    members = [t for t in tokens if t.corporation_id == corporation_id]
    far_past = datetime.min.replace(tzinfo=timezone.utc)
    members.sort(key=lambda t: (-(t.access_expires_at or far_past).timestamp(), t.character_id))
    needs = f"scope {scope}" + (f" and one of the roles {', '.join(roles_any)}" if roles_any else "")
    rejected = []
    for token in members:
        why = []
        # A token that lost a role still serves routes that need none (membership is enough).
        if token.status != "valid" and not (token.status == "lost_role" and not roles_any):
            why.append(f"status {token.status}" + (f" ({token.status_detail})" if token.status_detail else ""))
        if scope not in token.scopes:
            why.append("lacks the scope")
        if roles_any:
            if token.roles_checked_at is None:
                why.append("roles not checked yet")
            elif not set(roles_any) & set(token.roles):
                why.append(f"has roles [{', '.join(token.roles) or 'none'}], none of the needed")
        if not why:
            return token
        rejected.append(f"{token.label}: {'; '.join(why)}")
    if rejected:
        considered = "; ".join(rejected)
        raise NoUsableToken(f"no usable ESI token for corporation {corporation_id} (needs {needs}). Considered: {considered}")
    elsewhere = sorted({str(t.corporation_id) if t.corporation_id is not None else "unknown" for t in tokens})
    raise NoUsableToken(
        f"no ESI token of corporation {corporation_id} is stored (needs {needs}); "
        + (f"stored tokens belong to corporations {', '.join(elsewhere)}; " if tokens else "no token is stored at all; ")
        + "add a character of that corporation with `sync-assets esi login`"
    )


# ---------------------------------------------------------------------- access tokens


def access_token(
    engine: Engine,
    sso: EveSso,
    character_id: int,
    *,
    cipher: TokenCipher | None = None,
    min_validity: float = MIN_VALIDITY_S,
) -> str:
    """An access token for the character valid for at least ``min_validity`` seconds more if the
    cache has one; otherwise refreshed, once across all processes.

    Raises :class:`InvalidGrant` (token marked ``invalid_grant``; the user must log in again),
    :class:`UnknownCharacter`, or the SSO's transient/config errors (nothing changed then).
    """
    cipher = cipher or TokenCipher.from_env()
    ensure_tokens_table(engine)
    with engine.connect() as conn:
        row = _secret_row(conn, character_id)
    cached = _cached_access(row, cipher, min_validity)
    if cached is not None:
        return cached

    failure: Exception | None = None
    result = ""
    with engine.begin() as conn:
        _lock(conn, character_id)
        row = _secret_row(conn, character_id)  # another process may have refreshed while we waited
        cached = _cached_access(row, cipher, min_validity)
        if cached is not None:
            return cached
        label = f"{row['character_name']} ({character_id})"
        if row["status"] == "invalid_grant":
            raise InvalidGrant(
                f"the ESI token of {label} is invalid ({row['status_detail'] or 'invalid_grant'})",
                character_id=character_id,
            )
        try:
            grant = sso.refresh(cipher.decrypt(row["refresh_token_encrypted"]))
        except InvalidGrant as exc:
            detail = (
                f"EVE SSO rejected the refresh token on {_now():%Y-%m-%d %H:%M} UTC "
                f"({exc.error}: {exc.description or 'no description'}); {LOGIN_AGAIN}"
            )
            _set_status(conn, character_id, "invalid_grant", detail)
            failure = InvalidGrant(
                f"the ESI token of {label} is no longer valid: {detail}",
                error=exc.error,
                description=exc.description,
                character_id=character_id,
            )
        except InvalidAccessToken as exc:
            if exc.rotated_refresh_token:  # the refresh went through: keep its token, drop the cache
                _store_refresh(conn, character_id, cipher.encrypt(exc.rotated_refresh_token), None, None)
            failure = exc
        else:
            claims = grant.claims
            _store_refresh(conn, character_id, cipher.encrypt(grant.refresh_token), cipher.encrypt(grant.access_token), grant.expires_at)
            stored_owner = row["owner_hash"]
            if claims.character_id != character_id or (stored_owner and claims.owner_hash and claims.owner_hash != stored_owner):
                detail = f"the character changed owner (sold?) since it was added; {LOGIN_AGAIN}"
                _set_status(conn, character_id, "invalid_grant", detail)
                failure = InvalidGrant(f"the ESI token of {label} is not usable: {detail}", character_id=character_id)
            else:
                result = grant.access_token
                log.info(f"refreshed the ESI access token of {label}; valid until {grant.expires_at:%H:%M:%S} UTC")
    if failure is not None:
        raise failure
    return result


# ---------------------------------------------------------------------- internals


def _lock(conn: Connection, character_id: int) -> None:
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_BASE + int(character_id)})


def _secret_row(conn: Connection, character_id: int) -> dict[str, Any]:
    row = conn.execute(
        text(
            f"""SELECT character_name, owner_hash, status, status_detail, refresh_token_encrypted,
                       access_token_encrypted, access_expires_at
                FROM {TOKENS_TABLE} WHERE character_id = :cid"""
        ),
        {"cid": character_id},
    ).mappings().first()
    if row is None:
        raise UnknownCharacter(_unknown(character_id))
    return dict(row)


def _cached_access(row: dict[str, Any], cipher: TokenCipher, min_validity: float) -> str | None:
    if row["status"] == "invalid_grant" or row["access_token_encrypted"] is None or row["access_expires_at"] is None:
        return None
    if row["access_expires_at"] - _now() < timedelta(seconds=min_validity):
        return None
    return cipher.decrypt(row["access_token_encrypted"])


def _store_refresh(
    conn: Connection, character_id: int, refresh: bytes, access: bytes | None, expires_at: datetime | None
) -> None:
    conn.execute(
        text(
            f"""UPDATE {TOKENS_TABLE} SET refresh_token_encrypted = :refresh, access_token_encrypted = :access,
                    access_expires_at = :exp, last_refresh_at = now(), updated_at = now()
                WHERE character_id = :cid"""
        ),
        {"cid": character_id, "refresh": refresh, "access": access, "exp": expires_at},
    )


def _set_status(conn: Connection, character_id: int, status: str, detail: str | None) -> bool:
    return bool(
        conn.execute(
            text(
                f"""UPDATE {TOKENS_TABLE} SET status = :status, status_detail = :detail, updated_at = now()
                    WHERE character_id = :cid"""
            ),
            {"cid": character_id, "status": status, "detail": detail},
        ).rowcount
    )


def _info(row: Any) -> TokenInfo:
    return TokenInfo(
        character_id=int(row["character_id"]),
        character_name=row["character_name"],
        corporation_id=row["corporation_id"],
        scopes=tuple(row["scopes"] or ()),
        roles=tuple(row["roles"] or ()),
        status=row["status"],
        status_detail=row["status_detail"],
        owner_hash=row["owner_hash"],
        access_expires_at=row["access_expires_at"],
        last_refresh_at=row["last_refresh_at"],
        roles_checked_at=row["roles_checked_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _unknown(character_id: int) -> str:
    return f"no ESI token is stored for character {character_id}; add one with `sync-assets esi login`"


def _now() -> datetime:
    return datetime.now(timezone.utc)
