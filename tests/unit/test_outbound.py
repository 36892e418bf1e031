"""The outbound address policy (fetcher/addrpolicy.py, through app.outbound) and the
application's guarded GET. Every request goes to 127.0.0.1; the addresses the policy
refuses are refused before any lookup or connection, which the tests check by making
both fail loudly."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app import outbound


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every name lookup and connection attempt is recorded and fails."""
    attempts: list[str] = []

    def lookup(host, *_a, **_k):  # type: ignore[no-untyped-def]
        attempts.append(f"getaddrinfo {host}")
        raise socket.gaierror("no lookups in this test")

    def connect(address, *_a, **_k):  # type: ignore[no-untyped-def]
        attempts.append(f"connect {address}")
        raise OSError("no connections in this test")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(socket, "create_connection", connect)
    return attempts


# --- the policy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "address"), [
    ("2130706433", "127.0.0.1"),  # one decimal number
    ("0177.0.0.1", "127.0.0.1"),  # octal
    ("0x7f.1", "127.0.0.1"),  # hex, short form
    ("0x7f000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),  # short form
    ("127.0.0.1.", "127.0.0.1"),  # trailing dot
    ("10.1", "10.0.0.1"),
    ("0xa9.0376.43518", "169.254.169.254"),
    ("[::ffff:7f00:1]", "::ffff:7f00:1"),
    ("fe80::1%25eth0", "fe80::1%eth0"),  # the URL's escaped zone id
    ("fe80::1%eth0", "fe80::1%eth0"),
])
def test_every_spelling_of_a_literal_is_read_without_a_lookup(host: str, address: str) -> None:
    assert outbound.host_literal(host) == address


@pytest.mark.parametrize("host", ["example.com", "256.1.1.1", "08.1.1.1", "1.2.3.4.5", "0x1g", "[not:an:ip]"])
def test_names_are_not_literals(host: str) -> None:
    assert outbound.host_literal(host) is None


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"),
    ("10.0.0.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"),
    ("0.0.0.0", "unspecified / this network"),
    ("240.0.0.1", "reserved"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fd00:ec2::254", "unique local (ULA)"),  # AWS metadata over IPv6
    ("fe80::1%eth0", "link-local"),
    ("2606:4700:4700::1111%eth0", "IPv6 address with a zone id (an interface of this host)"),
    ("::ffff:127.0.0.1", "IPv6 address carrying IPv4 127.0.0.1: loopback"),  # mapped
    ("::ffff:0:7f00:1", "IPv6 address carrying IPv4 127.0.0.1: loopback"),  # translated
    ("::ffff:0:a00:1", "IPv6 address carrying IPv4 10.0.0.1: private"),
    ("64:ff9b::7f00:1", "IPv6 address carrying IPv4 127.0.0.1: loopback"),  # NAT64
    ("64:ff9b::a9fe:a9fe", "IPv6 address carrying IPv4 169.254.169.254: link-local"),
    ("64:ff9b:1::a00:1", "IPv6 address carrying IPv4 10.0.0.1: private"),  # local-use NAT64
    ("2002:a00:1::1", "IPv6 address carrying IPv4 10.0.0.1: private"),  # 6to4
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "IPv6 address carrying IPv4 127.0.0.1: loopback"),  # Teredo client
])
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    assert outbound.blocked_reason(address) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "::ffff:8.8.8.8", "::ffff:0:808:808", "64:ff9b::808:808",
                                     "64:ff9b:1::808:808", "2002:808:808::1", "2606:4700:4700::1111"])
def test_public_ones_are_allowed_without_connecting_anywhere(address: str, no_network: list[str]) -> None:
    assert outbound.blocked_reason(address) is None
    host = f"[{address}]" if ":" in address else address
    [checked] = outbound.checked_addresses(host, 443, [], timeout=1)
    assert ipaddress.ip_address(checked) == ipaddress.ip_address(address)
    assert no_network == []


def test_allow_entries_admit_exactly_their_endpoint_or_network_but_never_metadata() -> None:
    allow = outbound.parse_allow("127.0.0.1:8081, [::1]:8082, 10.5.0.0/16")
    assert outbound.blocked_reason("127.0.0.1", allow, 8081) is None
    assert outbound.blocked_reason("::ffff:127.0.0.1", allow, 8081) is None
    assert outbound.blocked_reason("127.0.0.1", allow, 8082) == "loopback"
    assert outbound.blocked_reason("127.0.0.2", allow, 8081) == "loopback"
    assert outbound.blocked_reason("::1", allow, 8082) is None and outbound.blocked_reason("::1", allow, 8081)
    assert outbound.blocked_reason("10.5.3.4", allow, 1) is None and outbound.blocked_reason("10.6.0.1", allow, 1)
    everything = outbound.parse_allow("0.0.0.0/0,::/0,169.254.169.254:80")
    assert outbound.blocked_reason("169.254.169.254", everything, 80) == "link-local"
    assert outbound.blocked_reason("fd00:ec2::254", everything, 80) == "unique local (ULA)"
    for bad in ("nope", "127.0.0.1:0", "127.0.0.1:x", "[::1]"):
        with pytest.raises(ValueError):
            outbound.parse_allow(bad)


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1%25eth0]/",
                                 "http://[::ffff:0:7f00:1]/", "http://[64:ff9b::7f00:1]/", "http://0x7f.1/",
                                 "http://2130706433/", "http://[fd00:ec2::254]/"])
def test_refused_urls_never_reach_the_network(url: str, no_network: list[str]) -> None:
    with pytest.raises(outbound.Refused):
        outbound.get(url, allow=outbound.parse_allow("169.254.0.0/16"), timeout=5, max_bytes=100)
    assert no_network == []


def test_every_resolved_address_is_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    def answers(host, port, *_a, **_k):  # type: ignore[no-untyped-def]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]

    monkeypatch.setattr(socket, "getaddrinfo", answers)
    with pytest.raises(outbound.Refused) as info:
        outbound.checked_addresses("mixed.example", 80, [], timeout=1)
    assert info.value.address == "10.0.0.7" and info.value.reason == "private"


# --- the guarded GET -----------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Serves /clip, redirects /to?url=..., records every request with its Host header."""

    seen: list[tuple[int, str, str]]

    def do_GET(self) -> None:
        self.server.seen.append((self.server.server_address[1], self.path, self.headers["Host"]))  # type: ignore[attr-defined]
        if self.path.startswith("/to?url="):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to?url="):])
            self.end_headers()
            return
        body = b"x" * 5000 if self.path == "/clip" else b""
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[int, int, list[tuple[int, str, str]]]]:
    """Two recording servers on 127.0.0.1 (ports a and b) sharing one request log."""
    seen: list[tuple[int, str, str]] = []
    running = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        server.seen = seen  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        running.append(server)
    yield running[0].server_address[1], running[1].server_address[1], seen
    for server in running:
        server.shutdown()
        server.server_close()


def test_an_allowed_endpoint_is_fetched_pinned_with_the_original_host_name(servers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    a, _b, seen = servers
    real, lookups = socket.getaddrinfo, []

    def rebinding(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host == "clips.test":
            lookups.append(host)  # first answer allowed, any later one would not be
            return real("127.0.0.1" if len(lookups) == 1 else "127.0.0.2", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    allow = outbound.parse_allow(f"127.0.0.1:{a}")
    assert outbound.get(f"http://clips.test:{a}/clip", allow=allow, timeout=5, max_bytes=100) == b"x" * 101
    assert lookups == ["clips.test"] and seen == [(a, "/clip", f"clips.test:{a}")]


def test_a_redirect_to_a_refused_address_is_not_followed(servers) -> None:  # type: ignore[no-untyped-def]
    a, b, seen = servers
    allow = outbound.parse_allow(f"127.0.0.1:{a}")
    with pytest.raises(outbound.Refused) as info:
        outbound.get(f"http://127.0.0.1:{a}/to?url=http://127.0.0.1:{b}/clip", allow=allow, timeout=5, max_bytes=100)
    assert info.value.reason == "loopback"
    assert [port for port, _, _ in seen] == [a]  # b never saw a request


def test_failures_are_fetch_failed_and_redirects_bounded(servers) -> None:  # type: ignore[no-untyped-def]
    a, b, seen = servers
    allow = outbound.parse_allow(f"127.0.0.1:{a},127.0.0.1:{b}")
    with pytest.raises(outbound.FetchFailed, match="HTTP 404"):
        outbound.get(f"http://127.0.0.1:{a}/missing", allow=allow, timeout=5, max_bytes=100)
    loop = f"http://127.0.0.1:{a}/to?url=http://127.0.0.1:{b}/clip"
    assert outbound.get(loop, allow=allow, timeout=5, max_bytes=10_000) == b"x" * 5000
    with pytest.raises(outbound.FetchFailed, match="redirects"):
        outbound.get(loop, allow=allow, timeout=5, max_bytes=100, max_redirects=0)
    with pytest.raises(outbound.FetchFailed, match="scheme"):
        outbound.get(f"http://127.0.0.1:{a}/to?url=file:///etc/passwd", allow=allow, timeout=5, max_bytes=100)
    assert len(seen) == 5  # the refused hops sent nothing
