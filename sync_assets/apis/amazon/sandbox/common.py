"""Helpers every part of the SP-API simulator shares: Amazon's time formats, money rounding and the
``{"errors": [...]}`` envelope raised as :class:`ApiError`."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

__all__ = [
    "ApiError",
    "MARKETPLACES",
    "UTC",
    "error_body",
    "fmt_ms",
    "fmt_s",
    "from_epoch",
    "invalid",
    "money",
    "parse_time",
]

UTC = timezone.utc

#: marketplace id -> (country code, currency, marketplace name); the NA region only.
MARKETPLACES: dict[str, tuple[str, str, str]] = {
    "ATVPDKIKX0DER": ("US", "USD", "Amazon.com"),
    "A2EUQ1WTGCTBG2": ("CA", "CAD", "Amazon.ca"),
}


class ApiError(Exception):
    """An SP-API error answer: HTTP status and one entry of Amazon's ``errors`` list."""

    def __init__(self, status: int, code: str, message: str, details: str = "") -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


def error_body(code: str, message: str, details: str = "") -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "details": details}]}


def invalid(message: str, details: str = "") -> ApiError:
    return ApiError(400, "InvalidInput", message, details)


def fmt_s(dt: datetime) -> str:
    """``2024-05-01T12:34:56Z``: what the inventory, finances and orders models show."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_ms(dt: datetime) -> str:
    """``2024-03-10T13:47:20.677Z``: the Reports API's form."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_time(name: str, raw: str) -> datetime:
    """An ISO 8601 date or date-time from a query or body; a naive value is UTC."""
    text = raw.strip()
    try:
        dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise invalid(f"Invalid {name}: {raw!r} is not an ISO 8601 date-time.") from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


_CENT = Decimal("0.01")


def money(value: float | Decimal) -> float:
    """A JSON-number amount with exactly two decimals (Finances' ``BigDecimal``)."""
    exact = value if isinstance(value, Decimal) else Decimal(str(value))
    return float(exact.quantize(_CENT, rounding=ROUND_HALF_UP))


def from_epoch(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
