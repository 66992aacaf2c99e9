"""Precise, secret-free errors of the API layer.

Messages name the method, route and status, and quote the API's own error text; they never
carry request headers (Authorization) or query secrets.
"""

from __future__ import annotations


class ApiError(Exception):
    """Base class: something the API said or did prevented a complete snapshot."""


class ApiUnreachable(ApiError):
    """No response at all after every retry: connection refused, DNS, TLS, timeouts."""


class HttpStatusError(ApiError):
    def __init__(self, method: str, url: str, status: int, detail: str, retry_after: float | None = None):
        self.method, self.url, self.status, self.detail = method, url, status, detail
        self.retry_after = retry_after
        super().__init__(f"{method} {url} -> HTTP {status}: {detail}")


class PermanentHttpError(HttpStatusError):
    """400/401/403/404/422…: retrying the same request cannot help."""


class TransientHttpError(HttpStatusError):
    """5xx, 420, 429: worth retrying after a wait."""


class PageOutOfRange(PermanentHttpError):
    """A page below X-Pages answered 404: the page count shrank during the walk."""


class MalformedPayload(ApiError):
    """A 2xx whose body is not the JSON shape the dataset declares."""


class InconsistentSnapshot(ApiError):
    """Pages of one walk came from different snapshots (Last-Modified or X-Pages changed)."""
