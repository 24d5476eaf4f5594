"""A reverse HTTP proxy on loopback that makes an S3 endpoint slow or dead, for tests.

`FaultyProxy(upstream_url)` listens on 127.0.0.1 (an OS-chosen port) and forwards each
request to `upstream_url` (the moto server of `s3server.py`) over a real socket. Faults,
changeable while it runs:
- `delay_s`: every request waits this long before it is forwarded (per request, not per
  connection: boto3 keeps connections alive);
- `drop`: every request is read and then answered by closing the connection, as a
  crashing load balancer would; the client sees "connection closed" and may retry.

`requests` records `(method, path)` of every request received, dropped ones included, so a
test can count uploads.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Headers about one hop's connection, never forwarded (RFC 9110 §7.6.1), plus Expect: the
# handler below already answered "100 Continue" and reads the whole body before forwarding.
_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
}


class FaultyProxy:
    """A started-on-demand proxy in front of `upstream_url`; use as a context manager."""

    def __init__(self, upstream_url: str, *, delay_s: float = 0.0, drop: bool = False) -> None:
        upstream = urlsplit(upstream_url)
        self.upstream = (upstream.hostname, upstream.port)
        self.delay_s, self.drop = delay_s, drop
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def count(self, method: str, path_suffix: str) -> int:
        """How many `method` requests for a path ending in `path_suffix` arrived."""
        with self._lock:
            return sum(m == method and p.endswith(path_suffix) for m, p in self.requests)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for Expect headers
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's name)
        pass  # keep test output for failures

    def do_GET(self) -> None:
        self.forward()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def forward(self) -> None:
        proxy: FaultyProxy = self.server.proxy
        body = self.read_body()
        proxy.record(self.command, self.path.split("?")[0])
        if proxy.drop:
            self.close_connection = True  # no answer at all: the client sees the socket close
            return
        time.sleep(proxy.delay_s)
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()  # http.client undoes a chunked encoding
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_HEADERS | {"content-length"}:
                    self.send_header(name, value)
            # A HEAD answer announces the object's length but carries no body.
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    def read_body(self) -> bytes:
        """The request body, by Content-Length or chunked transfer encoding."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))
