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
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from app.dev.http import JsonHandler, run, threading_server


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


class TelephonyHandler(JsonHandler):
    """``POST /calls`` and the control routes, over the ``state`` of one server."""

    state: ClassVar[TelephonyState]

    def do_GET(self) -> None:
        if self.path == "/_calls":
            with self.state.lock:
                self.send_json(200, {"items": list(self.state.calls)})
        else:
            self.send_json(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = self.read_json(empty={})
        state = self.state
        if self.path == "/_reset":
            state.reset()
            return self.send_json(200, {"ok": True})
        if self.path == "/_config":
            with state.lock:
                state.script = list((body or {}).get("script", []))
            return self.send_json(200, {"ok": True})
        if self.path != "/calls":
            return self.send_json(404, {"error": "not found"})
        if not self.headers.get("Authorization", "").removeprefix("Bearer ").strip():
            return self.send_json(401, {"error": "missing token"})
        if not isinstance(body, dict) or not str(body.get("to") or "").strip():
            return self.send_json(400, {"error": "`to` is required"})
        return self._call(body)

    def _call(self, body: dict[str, Any]) -> None:
        key = self.headers.get("Idempotency-Key") or uuid.uuid4().hex
        state = self.state
        with state.lock:
            if state.script:
                return self.send_json(state.script.pop(0), {"error": "scripted failure"})
            call_id = state.by_key.get(key)
            if call_id is None:
                call_id = f"call_{uuid.uuid4().hex[:16]}"
                state.by_key[key] = call_id
                state.calls.append({"id": call_id, "key": key, "body": body, "time": time.time()})
        return self.send_json(201, {"id": call_id})


def make_handler(state: TelephonyState) -> type[BaseHTTPRequestHandler]:
    """The handler class of one server, bound to its state."""
    return type("Handler", (TelephonyHandler,), {"state": state})


def serve(port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Build the server (not started), for tests that run it in a thread."""
    return threading_server(host, port, make_handler(TelephonyState()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9110)
    args = parser.parse_args()
    run(serve(args.port, args.host), "telephony server")


if __name__ == "__main__":
    main()
