"""httpx's transport interface over urllib3's connection pools.

httpx stays the client (requests, auth flows, timeouts, redirects, decoding, `MockTransport` in
tests); only the wire changes. Its default transport (httpcore + h11) parses every response in
Python: about 1 ms of CPU more than urllib3 (http.client, C reads) per 240 KB ESI page, measured
over 300 pages on 8 threads, and importing httpcore costs each run ~0.15 s before its first
request. The TLS context is built once per process, the first time an https URL is asked, with
httpx's own rules (certifi, or SSL_CERT_FILE / SSL_CERT_DIR).

Retries and redirects stay with the caller (tenacity, httpx); urllib3 never retries. Its errors
become httpx's, so the retry policy and the error messages see one exception tree.
"""

from __future__ import annotations

import functools
import ssl
import threading
from typing import Any

import httpx
import urllib3
from urllib3 import exceptions as u3

_DEFAULT_TIMEOUT = 5.0  # httpx's own default, for a request that carries no timeout extension


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context(verify=True, trust_env=True)


class PooledTransport(httpx.BaseTransport):
    """Keep-alive connections per host, at most `max_connections` each; a request that finds
    them all busy waits for one (httpx's pool timeout), as httpx's own transport does."""

    def __init__(self, max_connections: int = 10, verify: ssl.SSLContext | None = None):
        self._max_connections = max_connections
        self._verify = verify  # None: httpx's default trust store, built on first use
        self._lock = threading.Lock()
        self._plain: urllib3.PoolManager | None = None
        self._tls: urllib3.PoolManager | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        pool = self._pool(request.url.scheme == "https")
        try:
            response = pool.urlopen(
                request.method,
                str(request.url),
                body=request.read() or None,
                headers=_headers(request),
                redirect=False,
                retries=False,
                assert_same_host=False,
                preload_content=True,  # the whole body, read by http.client in C
                decode_content=False,  # httpx decodes (gzip, deflate...) as with its own transport
                timeout=urllib3.Timeout(connect=_seconds(timeouts, "connect"), read=_seconds(timeouts, "read")),
                pool_timeout=_seconds(timeouts, "pool"),
            )
        except (u3.HTTPError, OSError) as exc:
            raise _httpx_error(exc, request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.headers.items()),
            stream=httpx.ByteStream(response.data),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode("latin-1", "replace")},
            request=request,
        )

    def close(self) -> None:
        with self._lock:
            for pool in (self._plain, self._tls):
                if pool is not None:
                    pool.clear()

    def _pool(self, tls: bool) -> urllib3.PoolManager:
        pool = self._tls if tls else self._plain
        if pool is not None:
            return pool
        with self._lock:
            if tls and self._tls is None:
                self._tls = self._manager(ssl_context=self._verify or _tls_context())
            elif not tls and self._plain is None:
                self._plain = self._manager()
            return self._tls if tls else self._plain  # type: ignore[return-value]

    def _manager(self, **kwargs: Any) -> urllib3.PoolManager:
        return urllib3.PoolManager(num_pools=16, maxsize=self._max_connections, block=True, retries=False, **kwargs)


def _headers(request: httpx.Request) -> urllib3.HTTPHeaderDict:
    headers = urllib3.HTTPHeaderDict()
    for name, value in request.headers.multi_items():
        headers.add(name, value)
    return headers


def _seconds(timeouts: dict[str, float | None], name: str) -> float | None:
    return timeouts.get(name, _DEFAULT_TIMEOUT) if timeouts else _DEFAULT_TIMEOUT


def _httpx_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """urllib3's error as the httpx error its own transport raises for the same failure."""
    message = str(exc)
    kind: type[httpx.TransportError]
    if isinstance(exc, u3.EmptyPoolError):
        kind = httpx.PoolTimeout
    elif isinstance(exc, u3.ProxyError):
        kind = httpx.ProxyError
    elif isinstance(exc, (u3.NewConnectionError, u3.SSLError)):  # before ConnectTimeoutError: a subclass of it
        kind = httpx.ConnectError
    elif isinstance(exc, u3.ConnectTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, u3.ReadTimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(exc, u3.ProtocolError):  # the server closed or broke the connection mid-answer
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, (u3.LocationParseError, u3.LocationValueError)):
        kind = httpx.UnsupportedProtocol
    else:
        kind = httpx.NetworkError
    return kind(message, request=request)
