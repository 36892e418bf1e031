"""Fetch one URL safely and describe what came back, as one JSON document on stdout.

This program runs inside the throw-away, locked-down scan container (see
``fetcher/Dockerfile`` and ``docs/scans.md``). It uses the Python standard library only,
so the image needs nothing but a Python interpreter.

SSRF rules, applied to every hop of a redirect chain:

* the host is resolved once; **every** address it resolves to must pass the address
  policy of ``addrpolicy.py`` (copied next to this file in the image, and shared with the
  application's own fetches): public unicast only, an IPv6 address carrying an IPv4
  address judged by that address, odd spellings of a literal read as the resolver reads
  them, unless the allow-list (``--allow CIDR`` or ``--allow ADDRESS:PORT``, given by the
  worker) admits it;
* the connection goes to the address that was checked: there is no second lookup,
  so DNS rebinding has no window;
* redirects are followed here, one hop at a time, up to ``--max-redirects``, each hop
  checked again; only http and https are followed;
* the body is capped at ``--max-bytes`` and the whole fetch at ``--max-time`` seconds.

The exit status is 0 whenever a document was printed, including for a refused or failed
fetch (the ``error`` field says why); anything else is a bug and exits non-zero with a
traceback on stderr.

    python3 fetch.py URL [--max-bytes N] [--max-redirects N] [--max-time S]
                         [--connect-timeout S] [--allow CIDR|ADDRESS:PORT ...] [--user-agent UA]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import socket
import ssl
import sys
import tempfile
import time
from datetime import datetime, timezone
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

if __package__:  # imported as fetcher.fetch, from the application's tree
    from . import addrpolicy
else:  # run as a program: the policy sits next to this file, and -I keeps that directory off sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import addrpolicy  # noqa: E402

blocked_reason = addrpolicy.blocked_reason
parse_allow = addrpolicy.parse_allow

SCHEMA_VERSION = 1
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
CHUNK = 64 * 1024
#: Response headers worth keeping: what a reviewer of a scan looks at.
SELECTED_HEADERS = (
    "server", "content-type", "content-length", "content-disposition", "content-encoding", "location",
    "last-modified", "cache-control", "strict-transport-security", "content-security-policy",
    "x-frame-options", "x-content-type-options", "referrer-policy", "x-powered-by",
)
MAX_HEADER_VALUE = 1024
DEFAULT_USER_AGENT = "Mozilla/5.0 (compatible; app-url-scanner/1.0)"


class FetchError(Exception):
    """A fetch that cannot go on; ``kind`` is machine-readable, the message is for people."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Deadline:
    """The fetch's total time budget; every blocking call gets what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()
        self.end = self.start + seconds

    def remaining(self) -> float:
        """Seconds left; raises the ``timeout`` FetchError once none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise FetchError("timeout", f"the fetch took longer than its limit of {self.seconds:g} s")
        return left

    def elapsed_ms(self) -> float:
        """Milliseconds since the fetch started."""
        return round((time.monotonic() - self.start) * 1000, 1)


# --- addresses -------------------------------------------------------------------------------


def resolve(host: str, port: int, deadline: Deadline) -> list[str]:
    """All addresses of ``host`` (a literal one without any lookup), bounded by the deadline."""
    try:
        return addrpolicy.resolve(host, port, deadline.remaining())
    except TimeoutError:
        deadline.remaining()  # raises the timeout
        raise FetchError("timeout", f"resolving {host} took too long") from None
    except addrpolicy.ResolveError as exc:
        raise FetchError("dns", str(exc)) from None


# --- TLS -------------------------------------------------------------------------------------


def _name(parts: Any) -> str:
    """An X.509 name from ``getpeercert()`` as ``CN=..., O=...``."""
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
             "stateOrProvinceName": "ST", "localityName": "L"}
    out = []
    for rdn in parts or ():
        for key, value in rdn:
            out.append(f"{short.get(key, key)}={value}")
    return ", ".join(out)


def _iso(openssl_time: str | None) -> str | None:
    if not openssl_time:
        return None
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(openssl_time), timezone.utc).isoformat()


def decode_der(der: bytes) -> dict[str, Any]:
    """Decode a certificate that was not verified (``getpeercert()`` is empty then).

    The standard library only decodes a certificate from a file, through a private
    function; the PEM goes to the container's small tmpfs and is removed at once.
    """
    pem = ssl.DER_cert_to_PEM_cert(der)
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(pem)
        return ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    finally:
        os.unlink(path)


def tls_details(sock: ssl.SSLSocket, verified: bool, verify_error: str | None) -> dict[str, Any]:
    """Protocol, cipher and certificate fields of an established TLS connection."""
    der = sock.getpeercert(binary_form=True)
    cert: dict[str, Any] = {}
    decode_error = None
    if verified:
        cert = sock.getpeercert() or {}
    elif der:
        try:
            cert = decode_der(der)
        except Exception as exc:  # an undecodable certificate is itself a finding
            decode_error = f"{type(exc).__name__}: {exc}"
    cipher = sock.cipher()
    return {
        "protocol": sock.version(),
        "cipher": cipher[0] if cipher else None,
        "verified": verified,
        "verify_error": verify_error,
        "subject": _name(cert.get("subject")),
        "issuer": _name(cert.get("issuer")),
        "san": [f"{kind}:{value}" for kind, value in cert.get("subjectAltName", ())],
        "not_before": _iso(cert.get("notBefore")),
        "not_after": _iso(cert.get("notAfter")),
        "serial": cert.get("serialNumber"),
        "sha256": hashlib.sha256(der).hexdigest() if der else None,
        "decode_error": decode_error,
    }


# --- HTML ------------------------------------------------------------------------------------


#: Formatting tags that may sit inside a (broken) title without ending it.
INLINE_TAGS = frozenset({"b", "i", "em", "strong", "span", "u", "small", "sub", "sup", "font"})


class PageParser(HTMLParser):
    """Counts what a scan reports about a page, in one pass, tolerant of broken markup."""

    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.title: str | None = None
        self._in_title = False
        self._title_parts: list[str] = []
        self.links = self.forms = self.scripts = self.iframes = 0
        self.password_field = False
        self.password_form_actions: list[str] = []
        self.meta_refresh: str | None = None
        self._form_action: str | None = None
        self._form_has_password = False
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if self._in_title and tag not in INLINE_TAGS:
            self._end_title()  # an unclosed <title> ends where the page's structure starts
        if tag == "title" and self.title is None:
            self._in_title = True
        elif tag == "a" and "href" in a:
            self.links += 1
        elif tag == "form":
            self._close_form()
            self.forms += 1
            self._in_form = True
            self._form_action = self._resolve(a.get("action", "").strip() or self.base_url)
            self._form_has_password = False
        elif tag == "script":
            self.scripts += 1
        elif tag == "iframe":
            self.iframes += 1
        elif tag == "input" and a.get("type", "").strip().lower() == "password":
            self.password_field = True
            if self._in_form:
                self._form_has_password = True
            else:
                self._add_action(self.base_url)
        elif tag == "meta" and a.get("http-equiv", "").strip().lower() == "refresh" and self.meta_refresh is None:
            content = a.get("content", "")
            _, _, rest = content.partition(";")
            rest = rest.strip()
            if rest.lower().startswith("url="):
                rest = rest[4:].strip().strip("'\"")
            if rest:
                self.meta_refresh = self._resolve(rest)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if self._in_title and tag in ("title", "head"):
            self._end_title()
        elif tag == "form":
            self._close_form()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_parts.append(data)

    def close(self) -> None:
        super().close()
        self._close_form()
        if self._in_title:
            self._end_title()

    def _end_title(self) -> None:
        self._in_title = False
        self.title = " ".join("".join(self._title_parts).split())[:500]

    def _close_form(self) -> None:
        if self._in_form and self._form_has_password and self._form_action:
            self._add_action(self._form_action)
        self._in_form = False
        self._form_has_password = False

    def _add_action(self, url: str) -> None:
        if url not in self.password_form_actions and len(self.password_form_actions) < 20:
            self.password_form_actions.append(url)

    def _resolve(self, href: str) -> str:
        try:
            return urljoin(self.base_url, href)[:2048]
        except ValueError:
            return href[:2048]

    def summary(self) -> dict[str, Any]:
        """The ``page`` object of the document."""
        return {
            "title": self.title,
            "links": self.links,
            "forms": self.forms,
            "scripts": self.scripts,
            "iframes": self.iframes,
            "password_field": self.password_field,
            "password_form_actions": self.password_form_actions,
            "meta_refresh": self.meta_refresh,
        }


def analyse_html(body: bytes, content_type: str, base_url: str) -> dict[str, Any]:
    """Title, counts, password fields and meta refresh of an HTML body."""
    charset = "utf-8"
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip("'\" ")
    try:
        text = body.decode(charset, errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    parser = PageParser(base_url)
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # markup the parser gives up on still yields what was counted
        pass
    return parser.summary()


def is_html(content_type: str, body: bytes) -> bool:
    """HTML by its media type, or by its first bytes when the server sent no type."""
    media = content_type.split(";")[0].strip().lower()
    if media in ("text/html", "application/xhtml+xml"):
        return True
    if not media:
        head = body[:512].lstrip().lower()
        return head.startswith((b"<!doctype html", b"<html", b"<head", b"<title"))
    return False


# --- one hop ---------------------------------------------------------------------------------


class Hop:
    """One request/response of the chain, with its timings."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.address: str | None = None
        self.status: int | None = None
        self.location: str | None = None
        self.headers: dict[str, str] = {}
        self.tls: dict[str, Any] | None = None
        self.dns_ms = self.connect_ms = self.tls_ms = 0.0
        self.first_byte_at: float | None = None

    def record(self) -> dict[str, Any]:
        """This hop's entry in ``redirect_chain``."""
        return {"url": self.url, "status": self.status, "location": self.location, "address": self.address}


def split_url(url: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and request target of an http(s) URL, or a FetchError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError("invalid_url", f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError("invalid_url", f"scheme {scheme or '(none)'!r} is not fetched (http and https only): {url}")
    if parts.username is not None or parts.password is not None:
        raise FetchError("invalid_url", f"URLs with credentials are not fetched: {url}")
    host = parts.hostname
    if not host:
        raise FetchError("invalid_url", f"URL has no host: {url}")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError as exc:
        raise FetchError("invalid_url", f"host {host!r} is not a valid name: {exc}") from None
    target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return scheme, host, port or (443 if scheme == "https" else 80), target


def open_connection(hop: Hop, scheme: str, host: str, port: int, allow: list, deadline: Deadline,
                    connect_timeout: float) -> socket.socket:
    """Resolve, check every address, connect to a checked one, and do TLS for https."""
    t0 = time.monotonic()
    addresses = resolve(host, port, deadline)
    hop.dns_ms = round((time.monotonic() - t0) * 1000, 1)
    for address in addresses:
        reason = blocked_reason(address, allow, port)
        if reason:
            hop.address = address
            raise FetchError("blocked_address",
                             f"blocked address {address} ({reason}) for host {host} in {hop.url}")
    last: Exception | None = None
    sock = None
    t0 = time.monotonic()
    for address in addresses:
        try:
            # A literal address: create_connection does no name lookup here.
            sock = socket.create_connection((address, port), timeout=min(connect_timeout, deadline.remaining()))
            hop.address = address
            break
        except FetchError:
            raise
        except OSError as exc:
            last = exc
    hop.connect_ms = round((time.monotonic() - t0) * 1000, 1)
    if sock is None:
        if isinstance(last, (socket.timeout, TimeoutError)):
            deadline.remaining()
            raise FetchError("connect", f"connecting to {host} ({', '.join(addresses)}) port {port} timed out")
        raise FetchError("connect", f"cannot connect to {host} ({', '.join(addresses)}) port {port}: {last}")
    if scheme != "https":
        return sock
    t0 = time.monotonic()
    try:
        tls_sock = _tls(sock, host, deadline, verify=True)
        hop.tls = tls_details(tls_sock, True, None)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        verify_error = exc.verify_message or str(exc)
        # Report the certificate anyway: a bad certificate is exactly what a scan is for.
        # Same checked address, no new lookup.
        sock = socket.create_connection((hop.address, port), timeout=min(connect_timeout, deadline.remaining()))
        try:
            tls_sock = _tls(sock, host, deadline, verify=False)
        except (ssl.SSLError, OSError) as exc2:
            sock.close()
            raise FetchError("tls", f"TLS handshake with {host} failed: {exc2}") from None
        hop.tls = tls_details(tls_sock, False, verify_error)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        if isinstance(exc, (socket.timeout, TimeoutError)):
            deadline.remaining()
        raise FetchError("tls", f"TLS handshake with {host} failed: {exc}") from None
    hop.tls_ms = round((time.monotonic() - t0) * 1000, 1)
    return tls_sock


def _tls(sock: socket.socket, host: str, deadline: Deadline, verify: bool) -> ssl.SSLSocket:
    if verify:
        ctx = ssl.create_default_context()
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    sock.settimeout(deadline.remaining())
    return ctx.wrap_socket(sock, server_hostname=host)


def request(hop: Hop, sock: socket.socket, host: str, port: int, scheme: str, target: str, user_agent: str,
            deadline: Deadline) -> http.client.HTTPResponse:
    """Send a GET on the open socket and read the status line and headers."""
    conn_cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(host, port, timeout=deadline.remaining())
    conn.sock = sock  # already connected to the checked address: http.client must not connect again
    sock.settimeout(deadline.remaining())
    try:
        conn.request("GET", target, headers={
            "User-Agent": user_agent,
            "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
            "Accept-Encoding": "identity",
            "Connection": "close",
        })
        response = conn.getresponse()
    except (socket.timeout, TimeoutError):
        deadline.remaining()
        raise FetchError("timeout", f"{host} did not answer in time") from None
    except (http.client.HTTPException, OSError) as exc:
        raise FetchError("protocol", f"bad HTTP response from {host}: {type(exc).__name__}: {exc}") from None
    hop.first_byte_at = time.monotonic()
    hop.status = response.status
    hop.headers = {
        name: value[:MAX_HEADER_VALUE]
        for name in SELECTED_HEADERS
        if (value := response.getheader(name)) is not None
    }
    return response


def read_body(response: http.client.HTTPResponse, sock: socket.socket, max_bytes: int, keep: bool,
              deadline: Deadline) -> tuple[bytes, int, bool, str]:
    """Read at most ``max_bytes``: (kept bytes, count, truncated, sha256 of what was read)."""
    digest = hashlib.sha256()
    kept = bytearray()
    count = 0
    try:
        while count < max_bytes:
            sock.settimeout(deadline.remaining())
            chunk = response.read(min(CHUNK, max_bytes - count))
            if not chunk:
                break
            count += len(chunk)
            digest.update(chunk)
            if keep:
                kept += chunk
        truncated = False
        if count >= max_bytes:
            sock.settimeout(min(1.0, deadline.remaining()))
            truncated = bool(response.read(1))
    except (socket.timeout, TimeoutError):
        deadline.remaining()
        raise FetchError("timeout", "reading the body timed out") from None
    except http.client.IncompleteRead as exc:
        count += len(exc.partial)
        digest.update(exc.partial)
        if keep:
            kept += exc.partial
        truncated = False
    except (http.client.HTTPException, OSError) as exc:
        raise FetchError("protocol", f"reading the body failed: {type(exc).__name__}: {exc}") from None
    return bytes(kept), count, truncated, digest.hexdigest()


# --- the whole fetch -------------------------------------------------------------------------


def fetch(url: str, *, max_bytes: int, max_redirects: int, max_time: float, connect_timeout: float,
          allow: list, user_agent: str = DEFAULT_USER_AGENT) -> dict[str, Any]:
    """Fetch ``url`` following redirects; always returns the document (``error`` set on failure)."""
    deadline = Deadline(max_time)
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "url": url,
        "fetched_at": datetime.now(timezone.utc).isoformat(),
        "final_url": None,
        "status": None,
        "redirect_chain": [],
        "headers": {},
        "content_type": None,
        "bytes_read": 0,
        "truncated": False,
        "sha256": None,
        "page": None,
        "tls": None,
        "timings": {"dns_ms": 0.0, "connect_ms": 0.0, "tls_ms": 0.0, "first_byte_ms": None, "total_ms": None},
        "error": None,
    }
    hops: list[Hop] = []
    current = url
    try:
        while True:
            hop = Hop(current)
            hops.append(hop)
            scheme, host, port, target = split_url(current)
            sock = open_connection(hop, scheme, host, port, allow, deadline, connect_timeout)
            try:
                response = request(hop, sock, host, port, scheme, target, user_agent, deadline)
                location = response.getheader("location")
                if hop.status in REDIRECT_STATUSES and location:
                    hop.location = location[:2048]
                    if len(hops) > max_redirects:
                        raise FetchError("too_many_redirects",
                                         f"more than {max_redirects} redirects (last to {hop.location})")
                    try:
                        current = urljoin(current, location.strip())
                    except ValueError as exc:
                        raise FetchError("bad_redirect", f"unusable redirect location {location!r}: {exc}") from None
                    continue
                content_type = response.getheader("content-type") or ""
                media = content_type.split(";")[0].strip().lower()
                keep = media in ("", "text/html", "application/xhtml+xml")
                body, count, truncated, sha = read_body(response, sock, max_bytes, keep, deadline)
                doc.update({
                    "final_url": current, "status": hop.status, "headers": hop.headers,
                    "content_type": media or None, "bytes_read": count, "truncated": truncated, "sha256": sha,
                    "tls": hop.tls,
                })
                if keep and is_html(content_type, body):
                    doc["page"] = analyse_html(body, content_type, current)
                break
            finally:
                sock.close()
    except FetchError as exc:
        doc["error"] = {"kind": exc.kind, "message": exc.message}
        if hops and hops[-1].status is not None:
            doc["status"] = hops[-1].status
            doc["headers"] = hops[-1].headers
        if hops:
            doc["tls"] = hops[-1].tls
    doc["redirect_chain"] = [h.record() for h in hops]
    timings = doc["timings"]
    timings["dns_ms"] = round(sum(h.dns_ms for h in hops), 1)
    timings["connect_ms"] = round(sum(h.connect_ms for h in hops), 1)
    timings["tls_ms"] = round(sum(h.tls_ms for h in hops), 1)
    if hops and hops[-1].first_byte_at is not None:
        timings["first_byte_ms"] = round((hops[-1].first_byte_at - deadline.start) * 1000, 1)
    timings["total_ms"] = deadline.elapsed_ms()
    return doc


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, fetch, print the document; 0 whenever one was printed."""
    parser = argparse.ArgumentParser(description="Fetch one URL safely; print one JSON document.")
    parser.add_argument("url")
    parser.add_argument("--max-bytes", type=int, default=5 * 1024 * 1024)
    parser.add_argument("--max-redirects", type=int, default=5)
    parser.add_argument("--max-time", type=float, default=20.0)
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument("--allow", action="append", default=[], help="CIDR, or exact ADDRESS:PORT, allowed despite being non-public")
    parser.add_argument("--user-agent", default=DEFAULT_USER_AGENT)
    args = parser.parse_args(argv)
    try:
        allow = parse_allow(args.allow)
    except ValueError as exc:
        parser.error(f"--allow: {exc}")
    doc = fetch(args.url, max_bytes=args.max_bytes, max_redirects=args.max_redirects, max_time=args.max_time,
                connect_timeout=args.connect_timeout, allow=allow, user_agent=args.user_agent)
    sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
