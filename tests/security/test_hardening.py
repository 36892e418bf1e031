"""Hardening, as tests: authentication before the body is read, the client address
behind a trusted reverse proxy, no placeholder secrets in production, size caps on
free-form JSON fields, a credential-free /health that says only the overall status, and
DLQ replays that a stale dedup key cannot drop. docs/security.md "Hardening" lists them.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from tests.security.conftest import Served

MIB = 1024 * 1024


# --- 1. authenticate before the body is read ----------------------------------------------

def _post_raw(url: str, body_size: int, content_type: str, headers: dict[str, str] | None = None,
              chunk: bytes = b"{") -> tuple[int, bytes, float, int]:
    """POST ``body_size`` bytes (``chunk`` repeated) over a raw socket, reading the answer
    while the body is still being sent. Returns the status, the response body, the seconds
    until the status line arrived and how many body bytes had been sent by then."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Type: {content_type}",
            f"Content-Length: {body_size}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sent = [0]

    def send_body() -> None:
        block = chunk * (64 * 1024 // len(chunk))
        try:
            while sent[0] < body_size:
                piece = block[: body_size - sent[0]]
                sock.sendall(piece)
                sent[0] += len(piece)
        except OSError:  # the server answered and closed: the rest is never read
            pass

    started = time.monotonic()
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    received = b""
    elapsed = None
    sent_then = 0
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            if elapsed is None:
                elapsed, sent_then = time.monotonic() - started, sent[0]
            received += data
    except OSError:
        pass
    finally:
        sock.close()
        sender.join(timeout=10)
    status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/") else 0
    return status, received.partition(b"\r\n\r\n")[2], elapsed if elapsed is not None else float("inf"), sent_then


@pytest.mark.parametrize("path", ["/api/messages", "/api/voice"])
def test_an_unauthenticated_10_mib_body_is_refused_401_before_it_is_read(served_api: Served, path: str) -> None:
    url = served_api.url(path)
    for headers in ({}, {"Authorization": "Bearer ak_wrong"}):
        # Not JSON at all: had the body been parsed this would be a 400.
        status, body, elapsed, sent = _post_raw(url, 10 * MIB, "application/json", headers)
        assert status == 401, body[:300]
        assert b'"unauthorized"' in body
        assert elapsed < 1.0, f"401 after {elapsed:.2f} s"
        assert sent < 10 * MIB, "the whole body was sent before the answer: it was read"
    # Larger than MAX_REQUEST_BYTES (50 MiB) or the voice route's own size guard: 401, not 413.
    status, body, elapsed, _ = _post_raw(url, 60 * MIB, "application/json")
    assert status == 401 and elapsed < 1.0, (status, body[:300])
    # The same route with its credential does read the body: invalid JSON is a 400.
    status, body, _, _ = _post_raw(url, 1024, "application/json", served_api.client)
    assert status == 400 and b"not valid JSON" in body, body[:300]
