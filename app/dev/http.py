"""What the development servers share: a quiet JSON request handler and the serve loop."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    """A handler that reads and answers JSON and logs nothing."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        pass

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def read_json(self, empty: Any = None) -> Any:
        """The request's JSON body; ``empty`` when there is none, None when it is not JSON."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return empty
        try:
            return json.loads(raw)
        except ValueError:
            return None


def threading_server(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """The server (not started), its request threads daemonic."""
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def run(server: ThreadingHTTPServer, what: str) -> None:
    """Serve until interrupted, saying where."""
    host, port = server.server_address[:2]
    print(f"{what} on http://{host!s}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
