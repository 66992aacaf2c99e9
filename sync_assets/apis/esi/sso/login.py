"""The functions behind ``sync-assets esi login | add-token | tokens``.

``login`` runs the authorization-code flow with PKCE (S256): it listens once on the loopback
address of ESI_CALLBACK_URL, prints the EVE login URL, waits for the browser's redirect, checks
``state``, exchanges the code and stores the token. ``add_token`` stores a refresh token obtained
elsewhere (headless servers). ``print_tokens`` lists what is stored, without secrets.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import http.server
import os
import secrets
import socket
import sys
import time
import webbrowser
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Mapping, Sequence, TextIO
from urllib.parse import parse_qs, urlsplit, urlunsplit

from sqlalchemy import Engine, create_engine

from ....db.urls import psycopg2_url
from .crypto import TokenCipher
from ..datasets import ESI_DATASETS
from .errors import LoginError, SsoConfigError, TokenStoreError
from .sso import EveSso
from .tokens import Lookup, TokenInfo, ensure_tokens_table, list_tokens, store_grant

__all__ = ["DEFAULT_SCOPES", "add_token", "engine_from_env", "login", "print_tokens"]

ROLES_SCOPE = "esi-characters.read_corporation_roles.v1"  # token selection reads the character's roles
#: Every scope the declared datasets need, plus reading the character's roles.
DEFAULT_SCOPES: tuple[str, ...] = tuple(sorted({d.auth.scope for d in ESI_DATASETS if d.auth} | {ROLES_SCOPE}))
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_PAGE = (
    "<!doctype html><html><head><meta charset='utf-8'><title>sync-assets</title></head>"
    "<body style='font-family:sans-serif'><h2>{title}</h2><p>{text}</p></body></html>"
)


def engine_from_env(env: Mapping[str, str] | None = None) -> Engine:
    env = os.environ if env is None else env
    url = env.get("SYNC_ASSETS_DATABASE_URL")
    if not url:
        raise TokenStoreError("SYNC_ASSETS_DATABASE_URL is not set: it names the Postgres database that stores the tokens")
    return create_engine(psycopg2_url(url, "SYNC_ASSETS_DATABASE_URL"), pool_pre_ping=True)


# ---------------------------------------------------------------------- login


@dataclass
class _Callback:
    code: str | None = None
    error: str | None = None


def login(
    scopes: Sequence[str] = DEFAULT_SCOPES,
    *,
    sso: EveSso | None = None,
    engine: Engine | None = None,
    lookup: Lookup | None = None,
    cipher: TokenCipher | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
    open_browser: bool = False,
    on_url: Callable[[str], None] | None = None,
    out: TextIO | None = None,
) -> TokenInfo:
    """Log a character in through EVE SSO and store its token; returns what was stored.

    Callback ``ESI_CALLBACK_URL`` (default http://127.0.0.1:8635/callback) must be the one
    registered for the application; port 0 listens on any free port (tests). ``on_url`` receives
    the login URL once the listener is up (tests follow it with httpx).
    """
    out = out or sys.stdout
    # Fail on configuration before the user goes through a login.
    cipher = cipher or TokenCipher.from_env(env)
    own_sso, own_engine = sso is None, engine is None
    sso = sso or EveSso.from_env(env)
    engine = engine or engine_from_env(env)
    try:
        ensure_tokens_table(engine)
        server, redirect_uri, path = _listen(sso.callback_url)
        try:
            state = secrets.token_urlsafe(24)
            verifier = secrets.token_urlsafe(64)  # 86 characters, within PKCE's 43..128
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            url = sso.authorize_url(scopes, state, challenge, redirect_uri=redirect_uri)
            print(f"Open this URL in a browser and log in with the character to add:\n\n  {url}\n", file=out, flush=True)
            print(f"Waiting up to {timeout:.0f}s for EVE SSO to redirect to {redirect_uri} ...", file=out, flush=True)
            if open_browser:
                webbrowser.open(url)
            if on_url is not None:
                on_url(url)
            code = _await_code(server, path, state, timeout)
        finally:
            server.server_close()
        grant = sso.exchange_code(code, verifier)
        info = store_grant(engine, grant, lookup=lookup, cipher=cipher)
        _report(info, scopes, out)
        return info
    finally:
        if own_sso:
            sso.close()
        if own_engine:
            engine.dispose()


def _listen(callback_url: str) -> tuple[http.server.HTTPServer, str, str]:
    """Bind the loopback listener; returns it, the redirect URI (actual port) and the callback path."""
    parts = urlsplit(callback_url)
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK:
        raise SsoConfigError(
            f"ESI_CALLBACK_URL must be a loopback http URL such as http://127.0.0.1:8635/callback "
            f"for `sync-assets esi login`, got {callback_url!r}"
        )
    host = "::1" if parts.hostname == "::1" else "127.0.0.1"
    server_class = _V6Server if host == "::1" else http.server.HTTPServer
    try:
        server = server_class((host, parts.port or 80), _Handler)
    except OSError as exc:
        raise LoginError(f"cannot listen on {host}:{parts.port or 80} (from ESI_CALLBACK_URL): {exc.strerror}") from None
    server.callback = _Callback()  # type: ignore[attr-defined]
    port = server.server_address[1]
    netloc = f"{parts.hostname if ':' not in parts.hostname else '[::1]'}:{port}"
    return server, urlunsplit((parts.scheme, netloc, parts.path or "/", "", "")), parts.path or "/"


class _V6Server(http.server.HTTPServer):
    address_family = socket.AF_INET6


def _await_code(server: http.server.HTTPServer, path: str, state: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    callback: _Callback = server.callback  # type: ignore[attr-defined]
    server.expected = (path, state)  # type: ignore[attr-defined]
    while callback.code is None and callback.error is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LoginError(f"no redirect from EVE SSO within {timeout:.0f}s; run `sync-assets esi login` again")
        server.timeout = min(left, 0.5)
        server.handle_request()
    if callback.error is not None:
        raise LoginError(callback.error)
    return callback.code  # type: ignore[return-value]


class _Handler(http.server.BaseHTTPRequestHandler):
    """One GET at the callback path ends the wait; anything else (favicon...) gets a 404."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path, state = self.server.expected  # type: ignore[attr-defined]
        callback: _Callback = self.server.callback  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        if parts.path != path:
            return self._page(404, "Not found", "This is the sync-assets login callback.")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if query.get("state") != state:
            # Not the login we started (forged or stale): stop rather than exchange someone else's code.
            callback.error = "the SSO redirect carried a different `state` than this login sent; run `sync-assets esi login` again"
            return self._page(400, "Login failed", "State mismatch: start the login again from the terminal.")
        if "error" in query:
            callback.error = f"EVE SSO declined the login ({query['error']}: {query.get('error_description', 'no description')})"
            return self._page(400, "Login failed", "EVE SSO declined the login; see the terminal.")
        if not query.get("code"):
            callback.error = "the SSO redirect carried no authorization code"
            return self._page(400, "Login failed", "No authorization code in the redirect.")
        callback.code = query["code"]
        self._page(200, "Logged in", "sync-assets received the login; you can close this tab and return to the terminal.")

    def _page(self, status: int, title: str, text: str) -> None:
        body = _PAGE.format(title=title, text=text).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # the request line holds the authorization code: never log it


# ---------------------------------------------------------------------- add-token


def add_token(
    refresh_token: str | None = None,
    *,
    sso: EveSso | None = None,
    engine: Engine | None = None,
    lookup: Lookup | None = None,
    cipher: TokenCipher | None = None,
    env: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
) -> TokenInfo:
    """Store a refresh token obtained elsewhere: the argument, else env ESI_REFRESH_TOKEN, else
    one line of stdin (read without echo on a terminal). It is refreshed once and the rotated
    token is stored."""
    env = os.environ if env is None else env
    out, stdin = out or sys.stdout, stdin or sys.stdin
    cipher = cipher or TokenCipher.from_env(env)
    token = (refresh_token or env.get("ESI_REFRESH_TOKEN") or "").strip()
    if not token:
        token = (getpass.getpass("EVE SSO refresh token (not echoed): ") if stdin.isatty() else stdin.readline()).strip()
    if not token:
        raise LoginError("no refresh token given: pipe it on stdin or set ESI_REFRESH_TOKEN")
    own_sso, own_engine = sso is None, engine is None
    sso = sso or EveSso.from_env(env)
    engine = engine or engine_from_env(env)
    try:
        grant = sso.refresh(token)
        info = store_grant(engine, grant, lookup=lookup, cipher=cipher)
        _report(info, (), out)
        return info
    finally:
        if own_sso:
            sso.close()
        if own_engine:
            engine.dispose()


def _report(info: TokenInfo, requested: Sequence[str], out: TextIO) -> None:
    corp = f"corporation {info.corporation_id}" if info.corporation_id is not None else "corporation not checked yet"
    print(f"Stored the ESI token of {info.label}: {len(info.scopes)} scopes, {corp}, roles: {', '.join(info.roles) or '-'}", file=out)
    missing = sorted(set(requested) - set(info.scopes))
    if missing:
        print(f"Warning: EVE SSO did not grant {len(missing)} requested scope(s): {', '.join(missing)}", file=out)


# ---------------------------------------------------------------------- tokens


def print_tokens(*, engine: Engine | None = None, env: Mapping[str, str] | None = None, out: TextIO | None = None) -> list[TokenInfo]:
    """Print the stored tokens as a table (no secrets); returns them."""
    out = out or sys.stdout
    own_engine = engine is None
    engine = engine or engine_from_env(env)
    try:
        tokens = list_tokens(engine)
    finally:
        if own_engine:
            engine.dispose()
    if not tokens:
        print("No ESI tokens stored; add one with `sync-assets esi login`.", file=out)
        return tokens
    header = ("character", "name", "corporation", "scopes", "roles", "status", "last refresh (UTC)", "access until (UTC)")
    rows = [
        (
            str(t.character_id),
            t.character_name,
            str(t.corporation_id) if t.corporation_id is not None else "?",
            str(len(t.scopes)),
            _clip(", ".join(t.roles) if t.roles_checked_at else "not checked", 40) or "-",
            t.status,
            _when(t.last_refresh_at),
            _when(t.access_expires_at),
        )
        for t in tokens
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
    for t in tokens:
        if t.status != "valid" and t.status_detail:
            print(f"{t.label}: {t.status_detail}", file=out)
    return tokens


def _when(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") if value else "-"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
