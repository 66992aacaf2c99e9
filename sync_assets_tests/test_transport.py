"""The wire under every API client (sync_assets.fetch.transport: httpx over urllib3's pools), over
real sockets on 127.0.0.1: what a server sends arrives as httpx would deliver it, and every way a
connection fails becomes the httpx error the retry policy and its messages expect."""

from __future__ import annotations

import gzip
import socket
import threading
from typing import Callable, Iterator

import httpx
import pytest

from sync_assets.apis.esi.spec import EsiErrors
from sync_assets.core.errors import ApiUnreachable
from sync_assets.fetch.http import ApiHttpClient, RetryPolicy
from sync_assets.fetch.transport import PooledTransport


class RawServer:
    """Answers each connection with `reply(request_bytes)` (raw bytes), then closes it or keeps it."""

    def __init__(self, reply: Callable[[bytes], bytes | None]):
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    self.requests.append(head)
                    answer = self.reply(head)
                    if answer is None:  # say nothing, hold the connection
                        threading.Event().wait(5)
                        return
                    conn.sendall(answer)
                    if b"Connection: close" in answer:
                        return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[bytes], bytes | None]], RawServer]]:
    servers: list[RawServer] = []

    def start(reply: Callable[[bytes], bytes | None]) -> RawServer:
        servers.append(RawServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def ok(body: bytes, *headers: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def client(url: str, attempts: int = 2, read_s: float = 5.0) -> ApiHttpClient:
    return ApiHttpClient(base_url=url, headers={"User-Agent": "test"}, timeout=httpx.Timeout(5.0, read=read_s),
                         max_connections=2, retry=RetryPolicy(max_attempts=attempts, initial_wait_s=0.0, max_wait_s=0.0),
                         classifier=EsiErrors())


def test_pages_arrive_decoded_with_every_header_over_kept_alive_connections(serve) -> None:
    body = b'[{"a": 1}]'
    server = serve(lambda head: ok(gzip.compress(body), "Content-Encoding: gzip", 'ETag: "v1"', "X-Pages: 3",
                                   "Set-Cookie: a=1", "Set-Cookie: b=2"))
    http = client(server.url)
    pages = [http.get_page("/x/", {"q": "1"}, page, None) for page in (1, 2, 3)]
    assert [p.data for p in pages] == [[{"a": 1}]] * 3  # gzip decoded once, by httpx
    assert pages[0].etag == '"v1"' and pages[0].headers["x-pages"] == "3"
    assert pages[0].headers.get_list("set-cookie") == ["a=1", "b=2"]  # repeated headers kept apart
    assert server.connections == 1  # one connection, kept alive
    first = server.requests[0].decode()
    assert first.startswith("GET /x/?q=1&page=1 HTTP/1.1") and "host: 127.0.0.1" in first.lower()
    assert "?q=1&page=2" in server.requests[1].decode()
    http.close()


def test_a_conditional_request_carries_its_etag_and_a_304_has_no_body(serve) -> None:
    server = serve(lambda head: b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n' if b"if-none-match" in head.lower()
                   else ok(b"[]"))
    page = client(server.url).get_page("/x/", {}, 1, '"v1"')
    assert (page.status, page.data, page.etag) == (304, None, '"v1"')


def test_a_body_cut_short_is_retried_then_named(serve) -> None:
    served = []

    def reply(head: bytes) -> bytes:
        served.append(head)
        if len(served) == 1:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n[{\"a\""  # 94 bytes missing
        return ok(b'[{"a": 2}]')

    server = serve(reply)
    assert client(server.url).get_page("/x/", {}, 1, None).data == [{"a": 2}]
    assert len(served) == 2


def test_a_refused_connection_names_the_url_and_the_setting(serve) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    with pytest.raises(ApiUnreachable) as raised:
        client(f"http://127.0.0.1:{port}").get_page("/x/", {}, 1, None)
    assert f"127.0.0.1:{port}/x/" in str(raised.value) and "ConnectError" in str(raised.value)
    assert isinstance(raised.value.__cause__, httpx.ConnectError)


def test_a_silent_server_times_out_as_a_read_timeout(serve) -> None:
    server = serve(lambda head: None)
    with pytest.raises(ApiUnreachable) as raised:
        client(server.url, attempts=1, read_s=0.2).get_page("/x/", {}, 1, None)
    assert isinstance(raised.value.__cause__, httpx.ReadTimeout)


def test_no_tls_context_is_built_for_plain_http(serve, monkeypatch) -> None:
    import sync_assets.fetch.transport as transport

    built = []
    monkeypatch.setattr(transport, "_tls_context", lambda: built.append(1) or pytest.fail("TLS context built"))
    server = serve(lambda head: ok(b"[]"))
    assert client(server.url).get_page("/x/", {}, 1, None).data == []
    assert built == []


def test_https_uses_httpx_trust_rules(monkeypatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    pool = PooledTransport(2)._pool(tls=True)
    context = pool.connection_pool_kw["ssl_context"]
    assert context.verify_mode.name == "CERT_REQUIRED" and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0  # a trust store was loaded (certifi, as httpx does)
