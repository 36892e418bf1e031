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
import random
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from app.dev.http import JsonHandler, run, threading_server

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


class ChannelHandler(JsonHandler):
    """Both channel APIs and the control routes, over the ``state`` of one server."""

    state: ClassVar[ChannelState]

    def do_GET(self) -> None:
        if self.path == "/_received":
            with self.state.lock:
                items = list(self.state.received)
            self.send_json(200, {"items": items})
        elif self.path == "/_health":
            self.send_json(200, {"ok": True})
        else:
            self.send_json(404, {"error": {"message": "unknown path", "code": 404}})

    def do_POST(self) -> None:
        body = self.read_json()
        if self.path == "/_reset":
            self.state.reset()
            self.send_json(200, {"ok": True})
        elif self.path == "/_config":
            self._configure(body)
        elif WHATSAPP.match(self.path) or INSTAGRAM.match(self.path):
            self._deliver(body, "whatsapp" if WHATSAPP.match(self.path) else "instagram")
        else:
            self.send_json(404, {"error": {"message": "unknown path", "code": 404}})

    def _configure(self, body: Any) -> None:
        if not isinstance(body, dict):
            self.send_json(400, {"error": {"message": "JSON object expected"}})
            return
        state = self.state
        with state.lock:
            state.latency = float(body.get("latency", state.latency))
            state.failure_rate = float(body.get("failure_rate", state.failure_rate))
            state.failure_status = int(body.get("failure_status", state.failure_status))
            state.script = [int(s) for s in body.get("script", state.script)]
            state.retry_after = body.get("retry_after", state.retry_after)
        self.send_json(200, {"ok": True})

    def _deliver(self, body: Any, channel: str) -> None:
        state = self.state
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if not token or (state.token and token != state.token):
            self.send_json(401, {"error": {"message": "invalid OAuth access token", "code": 190}})
            return
        if state.latency:
            time.sleep(state.latency)
        forced = state.next_status()
        if forced is not None and forced >= 400:
            headers = {"Retry-After": state.retry_after} if state.retry_after else None
            self.send_json(forced, {"error": {"message": f"simulated {forced}", "code": forced}}, headers)
            return
        if not isinstance(body, dict):
            self.send_json(400, {"error": {"message": "invalid JSON body", "code": 100}})
            return
        provider_id = ("wamid." if channel == "whatsapp" else "mid.") + uuid.uuid4().hex
        with state.lock:
            state.received.append(
                {"channel": channel, "path": self.path, "body": body, "provider_id": provider_id, "time": time.time()}
            )
        self.send_json(200, _accepted(channel, body, provider_id))


def _accepted(channel: str, body: dict[str, Any], provider_id: str) -> dict[str, Any]:
    """What each provider answers to an accepted message."""
    if channel == "whatsapp":
        return {
            "messaging_product": "whatsapp",
            "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
            "messages": [{"id": provider_id}],
        }
    return {"recipient_id": (body.get("recipient") or {}).get("id"), "message_id": provider_id}


def make_handler(state: ChannelState) -> type[BaseHTTPRequestHandler]:
    """The handler class of one server, bound to its state."""
    return type("Handler", (ChannelHandler,), {"state": state})


def make_server(host: str = "127.0.0.1", port: int = 9100, token: str | None = None) -> ThreadingHTTPServer:
    return threading_server(host, port, make_handler(ChannelState(token)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--token", default=None, help="require exactly this bearer token")
    args = parser.parse_args()
    run(make_server(args.host, args.port, args.token), "channel server")


if __name__ == "__main__":
    main()
