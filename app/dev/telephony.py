"""Development telephony server: the provider's ``POST /calls`` on loopback.

``python -m app.dev.telephony --port 9110`` accepts calls (``Authorization: Bearer
<token>`` with any non-empty token) and answers ``{"id": "call_…"}``. The
``Idempotency-Key`` header is honoured: the same key returns the same call id and is
stored once, like a real provider. Control routes, for tests and demos:

- ``GET /_calls`` → ``{"items": [{"id", "key", "body", "time"}]}``
- ``POST /_config`` with ``script`` (status codes answered in turn, e.g. ``[503]``)
- ``POST /_reset`` → forget every call and the configuration
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class TelephonyState:
    """Calls received, keyed by idempotency key; shared by the server's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.calls: list[dict[str, Any]] = []
            self.by_key: dict[str, str] = {}
            self.script: list[int] = []


def make_handler(state: TelephonyState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                return json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return None

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/_calls":
                with state.lock:
                    self._send(200, {"items": list(state.calls)})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            body = self._body()
            if self.path == "/_reset":
                state.reset()
                return self._send(200, {"ok": True})
            if self.path == "/_config":
                with state.lock:
                    state.script = list((body or {}).get("script", []))
                return self._send(200, {"ok": True})
            if self.path != "/calls":
                return self._send(404, {"error": "not found"})
            if not self.headers.get("Authorization", "").removeprefix("Bearer ").strip():
                return self._send(401, {"error": "missing token"})
            if not isinstance(body, dict) or not str(body.get("to") or "").strip():
                return self._send(400, {"error": "`to` is required"})
            key = self.headers.get("Idempotency-Key") or uuid.uuid4().hex
            with state.lock:
                if state.script:
                    return self._send(state.script.pop(0), {"error": "scripted failure"})
                call_id = state.by_key.get(key)
                if call_id is None:
                    call_id = f"call_{uuid.uuid4().hex[:16]}"
                    state.by_key[key] = call_id
                    state.calls.append({"id": call_id, "key": key, "body": body, "time": time.time()})
            self._send(201, {"id": call_id})

    return Handler


def serve(port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Build the server (not started), for tests that run it in a thread."""
    server = ThreadingHTTPServer((host, port), make_handler(TelephonyState()))
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9110)
    args = parser.parse_args()
    server = serve(args.port, args.host)
    print(f"telephony server on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
