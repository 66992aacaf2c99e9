"""From an HTTP answer to one of our errors: the API's own error text and the error type.

One classifier per API, because bodies and special statuses differ (ESI `{"error": …}` and its
420; SP-API `{"errors": [{code, message, details}]}`; IRIS `{"message": …}`). The base class
knows the HTTP semantics every API shares; an API's spec subclasses it for its quirks.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from ..core.errors import (
    Forbidden,
    HttpStatusError,
    PermanentHttpError,
    RateLimited,
    TransientHttpError,
    Unauthorized,
)


class ErrorClassifier:
    """Status + body -> error. Retryable: 408, 425, 429, 500, 502, 503, 504 and any other 5xx."""

    default_retry_after_s: float = 10.0  # a 429 without Retry-After and no shared budget: wait this long

    def error(self, response: httpx.Response, where: str, page: int | None) -> HttpStatusError:
        status, detail = response.status_code, self.detail(response)
        retry_after = _seconds(response.headers.get("retry-after"))
        if status == 401:
            return Unauthorized("GET", where, status, detail)
        if status == 403:
            return Forbidden("GET", where, status, detail)
        if status == 429:
            return RateLimited("GET", where, status, detail, retry_after=retry_after)  # None: the API did not say
        if status >= 500 or status in (408, 425):
            return TransientHttpError("GET", where, status, detail, retry_after=retry_after)
        return PermanentHttpError("GET", where, status, detail)

    def detail(self, response: httpx.Response) -> str:
        """The API's own error text: a JSON error body, or the title of an HTML error page."""
        text = response.text[:2000]
        if "json" in response.headers.get("content-type", ""):
            try:
                found = self.json_detail(orjson.loads(response.content))
            except orjson.JSONDecodeError:
                found = None
            if found:
                return found[:300]
        if "<html" in text.lower():
            start, end = text.lower().find("<title>"), text.lower().find("</title>")
            title = text[start + 7 : end].strip() if 0 <= start < end else "no title"
            return f"HTML error page: {title}"
        return text[:300].strip() or response.reason_phrase

    def json_detail(self, body: Any) -> str | None:
        """The common error shapes: {"error": …}, {"message": …}, {"errors": [{"code", "message", "details"}]}."""
        if not isinstance(body, dict):
            return None
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            parts = []
            for item in errors[:3]:
                if isinstance(item, dict):
                    text = ": ".join(str(item[k]) for k in ("code", "message") if item.get(k))
                    parts.append(text + (f" ({item['details']})" if item.get("details") else ""))
            return "; ".join(p for p in parts if p) or None
        for key in ("error", "message", "error_description"):
            if isinstance(body.get(key), str):
                return body[key]
        return None


def _seconds(value: str | None) -> float | None:
    """Retry-After as seconds (the HTTP-date form is rare for APIs; treated as absent)."""
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None
