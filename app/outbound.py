"""HTTP GET of a URL a client gave, under the shared outbound address policy.

The policy is ``fetcher.addrpolicy`` (standard library only, because the URL-scan
fetcher's image carries the same file next to ``fetch.py``); this module applies it to
the application's own fetches, e.g. a voice clip's ``audio_url``:

* every hop of a redirect chain is resolved once and **every** address judged before
  anything is sent;
* the connection goes to the judged address (no second lookup, so DNS rebinding has no
  window) while the request carries the original name in ``Host`` and TLS's SNI and
  certificate check;
* redirects, the body size and the whole fetch's time are bounded.

A refusal raises ``Refused`` (``reason`` names the rule); any other failure raises
``FetchFailed``, whose message is for the logs, not for the client.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit, urlunsplit

from fetcher.addrpolicy import (  # noqa: F401  (re-exported: the application's name for the policy)
    AllowRule,
    Endpoint,
    Refused,
    ResolveError,
    blocked_reason,
    checked_addresses,
    host_literal,
    parse_allow,
)

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
USER_AGENT = "app-fetch/1.0"


class FetchFailed(Exception):
    """The URL could not be fetched (bad URL, no such host, refused connection, HTTP error,
    timeout...). The message is detail for the logs."""


def _split(url: str) -> tuple[str, str, int, str]:
    # Scheme, host, port and request target of an http(s) URL.
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchFailed(f"invalid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchFailed(f"scheme {scheme or '(none)'!r} is not fetched (http and https only)")
    if parts.username is not None or parts.password is not None:
        raise FetchFailed("URLs with credentials are not fetched")
    host = parts.hostname
    if not host:
        raise FetchFailed("URL has no host")
    try:
        host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise FetchFailed(f"host is not a valid name: {exc}") from None
    target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return scheme, host, port or (443 if scheme == "https" else 80), target


def judge(url: str, *, allow: list[AllowRule] | None, timeout: float) -> None:
    """``Refused`` when the first hop of ``url`` is refused by the policy (for a URL another
    party will fetch: a remote voice worker); a URL that cannot be read or resolved passes
    here and fails where it is fetched."""
    try:
        _, host, port, _ = _split(url)
        checked_addresses(host, port, allow, timeout)
    except (FetchFailed, ResolveError):
        return


def get(url: str, *, allow: list[AllowRule] | None, timeout: float, max_bytes: int,
        max_redirects: int = MAX_REDIRECTS, headers: dict[str, str] | None = None) -> bytes:
    """The body of ``url`` (at most ``max_bytes + 1`` bytes: one past the limit tells the
    caller it was too long), following redirects; ``Refused`` or ``FetchFailed`` otherwise.

    ``timeout`` bounds the whole fetch, every hop included.
    """
    end = time.monotonic() + timeout

    def remaining() -> float:
        left = end - time.monotonic()
        if left <= 0:
            raise FetchFailed(f"the fetch took longer than {timeout:g} s")
        return left

    for _hop in range(max_redirects + 1):
        scheme, host, port, target = _split(url)
        try:
            addresses = checked_addresses(host, port, allow, remaining())
        except (ResolveError, TimeoutError) as exc:
            raise FetchFailed(str(exc)) from None
        conn = _open(scheme, host, port, addresses, remaining)
        try:
            conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "*/*",
                                                 "Accept-Encoding": "identity", "Connection": "close",
                                                 **(headers or {})})
            resp = conn.getresponse()
            location = resp.getheader("location")
            if resp.status in REDIRECT_STATUSES and location:
                try:
                    url = urljoin(url, location.strip())
                except ValueError as exc:
                    raise FetchFailed(f"unusable redirect location: {exc}") from None
                continue
            if resp.status != 200:
                raise FetchFailed(f"HTTP {resp.status}")
            return _read(resp, conn, max_bytes, remaining)
        except (OSError, http.client.HTTPException) as exc:
            raise FetchFailed(f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
    raise FetchFailed(f"more than {max_redirects} redirects")


def _open(scheme: str, host: str, port: int, addresses: list[str],
          remaining: Callable[[], float]) -> http.client.HTTPConnection:
    # A connection to the first judged address that answers; TLS names the URL's host.
    sock: socket.socket | None = None
    last: OSError | None = None
    for address in addresses:
        try:
            # A literal address: create_connection does no name lookup here.
            sock = socket.create_connection((address, port), timeout=remaining())
            break
        except OSError as exc:
            last = exc
    if sock is None:
        raise FetchFailed(f"cannot connect to {host} port {port}: {last}")
    conn_cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(host, port, timeout=remaining())
    if scheme == "https":
        try:
            sock = ssl.create_default_context().wrap_socket(
                sock, server_hostname=(host_literal(host) or host).split("%")[0])
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise FetchFailed(f"TLS handshake with {host} failed: {exc}") from None
    sock.settimeout(remaining())
    conn.sock = sock  # already connected to the judged address: http.client must not connect again
    return conn


def _read(resp: http.client.HTTPResponse, conn: http.client.HTTPConnection, max_bytes: int,
          remaining: Callable[[], float]) -> bytes:
    chunks, size = [], 0
    while size <= max_bytes:
        if conn.sock is not None:
            conn.sock.settimeout(remaining())
        chunk = resp.read(min(CHUNK, max_bytes + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
