"""Opaque next tokens: each remembers who asked, for which operation, with which arguments, where the
next page starts and when it stops working.

Tokens are standard base64 and always hold a ``+`` and a ``/``: a client that forgets to URL-encode
them sends a different token (``+`` arrives as a space) and gets the "invalid or expired" answer,
as on Amazon.
"""

from __future__ import annotations

import base64
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Cursor", "TokenStore", "TokenUnusable"]


@dataclass(frozen=True)
class Cursor:
    seller: str
    op: str
    params: tuple[tuple[str, Any], ...]  # the arguments of the call that produced the token
    position: int
    expires_at: float


class TokenUnusable(Exception):
    """The token is unknown (``expired`` False) or past its lifetime (``expired`` True)."""

    def __init__(self, expired: bool) -> None:
        super().__init__("expired" if expired else "unknown")
        self.expired = expired


def _new_token() -> str:
    while True:
        token = base64.b64encode(secrets.token_bytes(40)).decode()
        if "+" in token and "/" in token:
            return token


class TokenStore:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._cursors: dict[str, Cursor] = {}

    def issue(self, seller: str, op: str, params: tuple[tuple[str, Any], ...], position: int, ttl: float) -> str:
        token = _new_token()
        with self._lock:
            self._cursors[token] = Cursor(seller, op, params, position, self._clock() + ttl)
        return token

    def lookup(self, seller: str, op: str, token: str) -> Cursor:
        with self._lock:
            cursor = self._cursors.get(token)
        if cursor is None or cursor.seller != seller or cursor.op != op:
            raise TokenUnusable(expired=False)
        if cursor.expires_at <= self._clock():
            raise TokenUnusable(expired=True)
        return cursor

    def expire_all(self) -> int:
        """Every token issued so far is past its lifetime (the admin knob)."""
        now = self._clock()
        with self._lock:
            for token, cursor in self._cursors.items():
                self._cursors[token] = Cursor(cursor.seller, cursor.op, cursor.params, cursor.position, min(cursor.expires_at, now))
            return len(self._cursors)
