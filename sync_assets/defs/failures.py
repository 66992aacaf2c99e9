"""Why a sync failed, in a few classes a person can act on, without secrets."""

from __future__ import annotations

import re

# Order matters: the first class whose pattern matches wins.
FAILURE_CLASSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("auth", re.compile(r"invalid_grant|log in again|NoUsableToken|no usable ESI token|no ESI token|InvalidClient|"
                        r"TokenKeyError|SYNC_ASSETS_TOKEN_KEY|ESI_CLIENT_ID|ESI_CLIENT_SECRET", re.I)),
    ("permission", re.compile(r"HTTP 40[13]|required role|not in the corporation|not valid for scope", re.I)),
    ("budget", re.compile(r"circuit is open|HTTP 42[09]|error budget|Too many requests|exceeded the error limit", re.I)),
    ("bad_payload", re.compile(r"MalformedPayload|not valid JSON|expected a JSON|is not (int64|float64|bool|string|timestamp|date)|"
                               r"required field|unexpected payload shape", re.I)),
    ("guard", re.compile(r"would delete .* of .* rows", re.I)),
    ("configuration", re.compile(r"SYNC_ASSETS_DATABASE_URL|SYNC_ASSETS_ESI_URL|DatabaseConfigError|SettingError|SchemaMismatch", re.I)),
    ("transient", re.compile(r"HTTP 5\d\d|timeout|timed out|connection|InconsistentSnapshot|no consistent snapshot|"
                             r"DatabaseUnavailable|cannot reach", re.I)),
)
_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+"), "***"),  # a JWT
    (re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/=-]+"), r"\1 ***"),
    (re.compile(r"(?i)\b(refresh_token|access_token|client_secret|password)=[^&\s]+"), r"\1=***"),
    (re.compile(r"://([^:/@\s]+):[^@/\s]+@"), r"://\1:***@"),  # a password in a URL
)


def classify(message: str) -> str:
    for name, pattern in FAILURE_CLASSES:
        if pattern.search(message):
            return name
    return "error"


def redact(message: str) -> str:
    """Defence in depth: our errors carry no secrets, but a library's might."""
    for pattern, replacement in _SECRETS:
        message = pattern.sub(replacement, message)
    return message
