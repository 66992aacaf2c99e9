"""Auth strategies on httpx's own seam (`httpx.Auth` flows): each adds its credential to a request
and may refresh it once when the API says it expired. None of them ever prints its secret."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Mapping

import httpx


@dataclass(frozen=True)
class Credential:
    """What a request is sent with, and whose budget it spends."""

    auth: httpx.Auth
    principal: str  # rate-limit principal: a character, a seller, a key's fingerprint; never a secret
    # the character/seller behind it, for reporting refusals (a lost role) on the right credential
    owner: object = field(default=None, compare=False)
    # the base URL this principal's requests go to (SP-API: the seller's regional endpoint); None:
    # the resource's own
    endpoint: str | None = None
    # values the principal brings to the request plan, by column name (SP-API: a seller's
    # marketplaces, the slices of a per-marketplace dataset); see `Slices.from_credential`
    scope: Mapping[str, tuple[Any, ...]] = field(default_factory=dict, compare=False)


class ApiKeyHeader(httpx.Auth):
    """A static key in a header (IRIS: `X-API-KEY`)."""

    def __init__(self, header: str, key: str):
        self._header, self._key = header, key

    @property
    def principal(self) -> str:
        """The key's fingerprint: processes sharing a key share its budget."""
        return "key:" + hashlib.sha256(self._key.encode()).hexdigest()[:12]

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[self._header] = self._key
        yield request

    def __repr__(self) -> str:
        return f"ApiKeyHeader({self._header}=***)"


class RefreshingToken(httpx.Auth):
    """An access token in a header (ESI: `Authorization: Bearer …`; SP-API: `x-amz-access-token`).

    `token(refresh)` returns the current access token, or a new one when `refresh` is True. When the
    API answers that the token expired (`expired(response)`: a 401 by default) the token is
    refreshed once and the request sent again; a second refusal is the caller's to classify.
    """

    requires_response_body = True  # some APIs say "expired" only in the body (SP-API's 403)

    def __init__(
        self,
        token: Callable[[bool], str],
        header: str = "Authorization",
        scheme: str | None = "Bearer",
        expired: Callable[[httpx.Response], bool] = lambda response: response.status_code == 401,
    ):
        self._token, self._header, self._scheme, self._expired = token, header, scheme, expired
        self._lock = threading.Lock()  # page workers share one strategy: refresh once, not once each
        self._current: str | None = None
        self.refreshes = 0

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sent = self._value(refresh=False)
        request.headers[self._header] = self._format(sent)
        response = yield request
        if self._expired(response):
            request.headers[self._header] = self._format(self._value(refresh=True, stale=sent))
            yield request

    def _value(self, refresh: bool, stale: str | None = None) -> str:
        with self._lock:
            if self._current is None or (refresh and self._current == stale):
                self._current = self._token(refresh)
                self.refreshes += refresh
            return self._current

    def _format(self, token: str) -> str:
        return f"{self._scheme} {token}" if self._scheme else token

    def __repr__(self) -> str:
        return f"RefreshingToken({self._header}: ***)"
