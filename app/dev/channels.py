"""Development channel server: one small HTTP server speaking both channel APIs.

``python -m app.dev.channels --port 9100`` serves

- WhatsApp Cloud API shape: ``POST /whatsapp/<version>/<phone_number_id>/messages``
- Instagram Messaging API shape: ``POST /instagram/<version>/me/messages``

Both need ``Authorization: Bearer <token>`` (any non-empty token unless ``--token`` is
given). Every accepted request is stored. Control routes, for tests and demos:

- ``GET /_received`` → ``{"items": [{"channel", "path", "body", "time"}]}``
- ``POST /_config`` with any of ``latency`` (seconds), ``failure_rate`` (0..1),
  ``failure_status`` (default 503), ``script`` (a list of status codes answered in turn
  before normal service, e.g. ``[503, 503]``), ``retry_after`` (header value for 429/503)
- ``POST /_reset`` → forget everything received and the configuration
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WHATSAPP = re.compile(r"^/whatsapp/[^/]+/(?P<phone>[^/]+)/messages$")
INSTAGRAM = re.compile(r"^/instagram/[^/]+/me/messages$")


class ChannelState:
    """What the server received and how it is told to behave; shared by its threads."""

    def __init__(self, token: str | None = None) -> None:
        self.lock = threading.Lock()
        self.token = token
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.received: list[dict[str, Any]] = []
            self.latency = 0.0
            self.failure_rate = 0.0
            self.failure_status = 503
            self.script: list[int] = []
            self.retry_after: str | None = None

    def next_status(self) -> int | None:
        with self.lock:
            if self.script:
                return self.script.pop(0)
            if self.failure_rate and random.random() < self.failure_rate:
                return self.failure_status
        return None


def make_handler(state: ChannelState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet by default
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw or b"null")
            except ValueError:
                return None

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/_received":
                with state.lock:
                    items = list(state.received)
                self._send(200, {"items": items})
            elif self.path == "/_health":
                self._send(200, {"ok": True})
            else:
                self._send(404, {"error": {"message": "unknown path", "code": 404}})

        def do_POST(self) -> None:  # noqa: N802
            body = self._body()
            if self.path == "/_reset":
                state.reset()
                self._send(200, {"ok": True})
                return
            if self.path == "/_config":
                if not isinstance(body, dict):
                    self._send(400, {"error": {"message": "JSON object expected"}})
                    return
                with state.lock:
                    state.latency = float(body.get("latency", state.latency))
                    state.failure_rate = float(body.get("failure_rate", state.failure_rate))
                    state.failure_status = int(body.get("failure_status", state.failure_status))
                    state.script = [int(s) for s in body.get("script", state.script)]
                    state.retry_after = body.get("retry_after", state.retry_after)
                self._send(200, {"ok": True})
                return
            wa, ig = WHATSAPP.match(self.path), INSTAGRAM.match(self.path)
            if not (wa or ig):
                self._send(404, {"error": {"message": "unknown path", "code": 404}})
                return
            auth = self.headers.get("Authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else ""
            if not token or (state.token and token != state.token):
                self._send(401, {"error": {"message": "invalid OAuth access token", "code": 190}})
                return
            if state.latency:
                time.sleep(state.latency)
            forced = state.next_status()
            if forced is not None and forced >= 400:
                headers = {"Retry-After": state.retry_after} if state.retry_after else None
                self._send(forced, {"error": {"message": f"simulated {forced}", "code": forced}}, headers)
                return
            if not isinstance(body, dict):
                self._send(400, {"error": {"message": "invalid JSON body", "code": 100}})
                return
            channel = "whatsapp" if wa else "instagram"
            provider_id = ("wamid." if wa else "mid.") + uuid.uuid4().hex
            with state.lock:
                state.received.append(
                    {"channel": channel, "path": self.path, "body": body, "provider_id": provider_id, "time": time.time()}
                )
            if wa:
                self._send(200, {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
                    "messages": [{"id": provider_id}],
                })
            else:
                recipient = (body.get("recipient") or {}).get("id")
                self._send(200, {"recipient_id": recipient, "message_id": provider_id})

    return Handler


def make_server(host: str = "127.0.0.1", port: int = 9100, token: str | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(ChannelState(token)))
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--token", default=None, help="require exactly this bearer token")
    args = parser.parse_args()
    server = make_server(args.host, args.port, args.token)
    print(f"channel server on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
