"""A tiny fault proxy: an ASGI app that forwards every request to the sandbox (httpx) and breaks
the responses a test picks: truncated or malformed JSON, a connection cut mid-body, a response
slower than the client's timeout, an HTML page with status 200, a wrong-typed field, a changed
X-Pages header, a stale 304, or any status with any body (maintenance 404s ...).

Serve it with `sync_assets.apis.esi.sandbox.server.serve_in_thread(FaultProxy(...), log_level="critical")`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs

import httpx
import orjson

TRUNCATE, CUT, SLOW, HTML_200, WRONG_TYPE, XPAGES_PLUS_ONE, STALE_304, NUL_BYTE, COUNTED_503 = (
    "truncated JSON", "connection cut mid-body", "slower than the read timeout", "HTML page with status 200",
    "wrong-typed field", "X-Pages changed", "stale 304", "NUL byte in a string", "503 counted by the sandbox")
HTML_MAINTENANCE = (b"<html><head><title>Down for maintenance</title></head>"
                    b"<body><h1>Tranquility is down for maintenance</h1></body></html>")


@dataclass
class Status:
    """Answer with this status and body instead of forwarding."""

    status: int
    body: bytes = b'{"error": "Not found"}'
    content_type: str = "application/json; charset=UTF-8"
    headers: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"HTTP {self.status}"


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    n: int  # 1-based number of this request through the proxy

    @property
    def page(self) -> int:
        try:
            return int(self.query.get("page", "1"))
        except ValueError:
            return 0


Choose = Callable[[Req], "str | Status | None"]


class FaultProxy:
    def __init__(self, upstream: str, choose: Choose, slow_s: float = 1.5, corrupt_field: str | None = None):
        self.upstream, self.choose, self.slow_s = upstream.rstrip("/"), choose, slow_s
        self.corrupt_field = corrupt_field  # the field WRONG_TYPE / NUL_BYTE change (default: the first that fits)
        self.injected: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._n = 0
        self._client: httpx.AsyncClient | None = None

    def _count(self, fault: Any) -> None:
        with self._lock:
            self.injected[str(fault)] += 1

    def count(self, *kinds: str) -> int:
        with self._lock:
            return sum(self.injected[k] for k in kinds) if kinds else sum(self.injected.values())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64))
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        with self._lock:
            self._n += 1
            req = Req(scope["method"], scope["path"], query, headers, self._n)
        fault = self.choose(req)
        if isinstance(fault, Status):
            self._count(fault)
            await _send(send, fault.status, {"content-type": fault.content_type, **fault.headers}, fault.body)
            return
        if fault == SLOW:  # the client gives up first; the sandbox never sees the request
            self._count(fault)
            await asyncio.sleep(self.slow_s)
            await _send(send, 504, {"content-type": "application/json"}, b'{"error": "fault proxy: too slow"}')
            return
        if fault == STALE_304 and "if-none-match" in headers:  # a stale edge: "not modified", no Last-Modified
            self._count(fault)
            await _send(send, 304, {"etag": headers["if-none-match"]}, b"")
            return
        query_string = scope["query_string"].decode()
        if fault == COUNTED_503:  # a request the sandbox refuses (400): it counts against its error limit
            query_string = "order_type=bogus"
        url = f"{self.upstream}{scope['path']}" + (f"?{query_string}" if query_string else "")
        forward = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection", "accept-encoding")}
        upstream = await self._client.request(scope["method"], url, headers=forward)
        status, body = upstream.status_code, upstream.content
        out = {k: v for k, v in upstream.headers.items() if k not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
        if fault == COUNTED_503:  # ... and the client sees ESI's 503, with the sandbox's error-limit headers
            self._count(fault)
            status, body = 503, b'{"error": "The datasource tranquility is temporarily unavailable"}'
        elif fault in (TRUNCATE, HTML_200, WRONG_TYPE, NUL_BYTE, CUT) and status == 200 or fault == XPAGES_PLUS_ONE and "x-pages" in out:
            self._count(fault)  # counted only when applied (a sandbox 5xx passes through untouched)
        if fault == TRUNCATE and status == 200:
            body = body[: max(1, len(body) // 2)]
        elif fault == HTML_200 and status == 200:
            out["content-type"], body = "text/html", HTML_MAINTENANCE
        elif fault in (WRONG_TYPE, NUL_BYTE) and status == 200:
            body = _corrupt(body, fault, self.corrupt_field)
        elif fault == XPAGES_PLUS_ONE and "x-pages" in out:
            out["x-pages"] = str(int(out["x-pages"]) + 1)
        elif fault == CUT and status == 200:
            await send({"type": "http.response.start", "status": status,
                        "headers": _raw({**out, "content-length": str(len(body))})})
            await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            raise ConnectionAbortedError("fault proxy: connection cut mid-body")  # uvicorn drops the connection
        await _send(send, status, out, body)


def _corrupt(body: bytes, fault: str, field: str | None) -> bytes:
    rows = orjson.loads(body)
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        row = rows[len(rows) // 2]
        if fault == WRONG_TYPE:
            key = field or next((k for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)), None)
            if key is not None:
                row[key] = f"{row[key]}"  # a number sent as a string
        else:
            key = field or next((k for k, v in row.items() if isinstance(v, str)), None)
            if key is not None:
                row[key] = row[key] + "\u0000"
    return orjson.dumps(rows)


def _raw(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]


async def _send(send: Any, status: int, headers: Mapping[str, str], body: bytes) -> None:
    headers = {**headers, "content-length": str(len(body))} if status != 304 else dict(headers)
    await send({"type": "http.response.start", "status": status, "headers": _raw(headers)})
    await send({"type": "http.response.body", "body": body})


class Barrier:
    """ASGI wrapper: requests matching `hold` wait until `size` of them have arrived (or `timeout_s`
    passed), then all go on together - requests in flight at the same moment, made reproducible."""

    def __init__(self, app: Any, hold: Callable[[dict], bool], size: int, timeout_s: float = 20.0):
        self.app, self.hold, self.size, self.timeout_s = app, hold, size, timeout_s
        self.arrived = 0
        self._event: asyncio.Event | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.hold(scope):
            if self._event is None:
                self._event = asyncio.Event()
            self.arrived += 1
            if self.arrived >= self.size:
                self._event.set()
            try:
                await asyncio.wait_for(self._event.wait(), self.timeout_s)
            except asyncio.TimeoutError:
                self._event.set()
        await self.app(scope, receive, send)
