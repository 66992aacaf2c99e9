"""Secrets at rest: refresh and access tokens are stored Fernet-encrypted (AES-128-CBC + HMAC).

The key comes from the environment, never from the database it protects. ``SYNC_ASSETS_TOKEN_KEY``
holds one Fernet key, or several separated by commas to rotate keys: the first encrypts, all of
them decrypt (re-encrypt with :meth:`TokenCipher.rotate`).
"""

from __future__ import annotations

import os
from typing import Mapping

from ....core.lazy import lazy
from .errors import TokenKeyError

fernet = lazy("cryptography.fernet")  # loaded when a token is first encrypted or read, not with the code location

__all__ = ["KEY_SETTING", "TokenCipher", "generate_key"]

KEY_SETTING = "SYNC_ASSETS_TOKEN_KEY"
_HINT = (
    "generate one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


def generate_key() -> str:
    return fernet.Fernet.generate_key().decode()


class TokenCipher:
    """Encrypts and decrypts token strings. Its repr never shows the key."""

    def __init__(self, key: str, setting: str = KEY_SETTING):
        keys = [k.strip() for k in key.split(",") if k.strip()]
        if not keys:
            raise TokenKeyError(f"{setting} is empty; {_HINT}")
        fernets = []
        for n, k in enumerate(keys, 1):
            try:
                fernets.append(fernet.Fernet(k))
            except (ValueError, TypeError):
                which = f"key #{n} of " if len(keys) > 1 else ""
                # Never echo the value: a near-miss key is still most of a secret.
                raise TokenKeyError(
                    f"{which}{setting} is not a Fernet key (32 url-safe base64-encoded bytes); {_HINT}"
                ) from None
        self._fernet = fernet.MultiFernet(fernets)
        self._setting = setting

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TokenCipher":
        value = (os.environ if env is None else env).get(KEY_SETTING)
        if not value:
            raise TokenKeyError(f"{KEY_SETTING} is not set: it encrypts the ESI tokens stored in Postgres; {_HINT}")
        return cls(value)

    def encrypt(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode("utf-8"))

    def decrypt(self, blob: bytes | memoryview) -> str:
        try:
            return self._fernet.decrypt(bytes(blob)).decode("utf-8")
        except fernet.InvalidToken:
            raise TokenKeyError(
                f"a stored token cannot be decrypted with {self._setting}: the key changed? "
                f"Restore the old key (list it after the new one, comma-separated, to rotate) or log in again"
            ) from None

    def rotate(self, blob: bytes | memoryview) -> bytes:
        """Re-encrypt with the first key."""
        try:
            return self._fernet.rotate(bytes(blob))
        except fernet.InvalidToken:
            raise TokenKeyError(f"a stored token cannot be decrypted with {self._setting}") from None

    def __repr__(self) -> str:
        return f"TokenCipher({self._setting}=***)"
