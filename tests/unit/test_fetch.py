"""The fetch program (fetcher/fetch.py) run in-process against test sites on loopback.

The program is stdlib-only, so the tests import it straight from fetcher/. Every
request goes to 127.0.0.1; the addresses it must refuse are refused before any
connection, which the request counters check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import fetcher.fetch as fetch_mod  # the very program the image runs, with the shared address policy
from app.settings import ROOT
from tests import scans_sites

LOCAL = ["127.0.0.1/32"]



class CountingHandler(scans_sites.Handler):
    requests: list[str] = []

    def do_GET(self) -> None:
        CountingHandler.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The test sites on a free loopback port."""
    server = scans_sites.serve(0, "127.0.0.1")
    server.RequestHandlerClass = CountingHandler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _reset_counter() -> None:
    CountingHandler.requests = []


def _fetch(url: str, allow: list[str] | None = None, **kwargs: object) -> dict:
    options = {"max_bytes": 5 * 1024 * 1024, "max_redirects": 5, "max_time": 10.0, "connect_timeout": 5.0}
    options.update(kwargs)
    return fetch_mod.fetch(url, allow=fetch_mod.parse_allow(LOCAL if allow is None else allow), **options)


# --- the address rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"),
    ("127.9.9.9", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("0.0.0.0", "unspecified"),
    ("192.0.2.10", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fd12:3456::1", "unique local"),
    ("fc00::1", "unique local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("::ffff:127.0.0.1", "IPv6 address carrying IPv4 127.0.0.1: loopback"),
    ("::ffff:169.254.169.254", "IPv6 address carrying IPv4 169.254.169.254: link-local"),
    ("64:ff9b::a9fe:a9fe", "IPv6 address carrying IPv4 169.254.169.254: link-local"),
    ("2002:7f00:1::1", "IPv6 address carrying IPv4 127.0.0.1: loopback"),
])
def test_non_public_addresses_are_blocked(address: str, reason: str) -> None:
    got = fetch_mod.blocked_reason(address, [])
    assert got is not None and got.startswith(reason), got


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "100.128.0.1", "172.32.0.1",
                                     "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert fetch_mod.blocked_reason(address, []) is None


def test_allow_list_admits_only_its_networks() -> None:
    allow = fetch_mod.parse_allow(["172.18.0.0/16,10.5.0.7/32"])
    assert fetch_mod.blocked_reason("172.18.3.4", allow) is None
    assert fetch_mod.blocked_reason("::ffff:172.18.3.4", allow) is None
    assert fetch_mod.blocked_reason("10.5.0.7", allow) is None
    assert fetch_mod.blocked_reason("10.5.0.8", allow) == "private"
    assert fetch_mod.blocked_reason("127.0.0.1", allow) == "loopback"
    assert fetch_mod.parse_allow(["10.0.0.1/8"]) == [ipaddress.ip_network("10.0.0.0/8")]


@pytest.mark.parametrize(("address", "reason"), [
    ("::ffff:0:7f00:1", "IPv6 address carrying IPv4 127.0.0.1: loopback"),  # IPv4-translated
    ("64:ff9b::7f00:1", "IPv6 address carrying IPv4 127.0.0.1: loopback"),  # NAT64
    ("64:ff9b::a00:1", "IPv6 address carrying IPv4 10.0.0.1: private"),
    ("fe80::1%eth0", "link-local"),
])
def test_translated_nat64_and_zoned_addresses_are_blocked(address: str, reason: str) -> None:
    assert fetch_mod.blocked_reason(address, []) == reason


@pytest.mark.parametrize("host", ["[::ffff:0:7f00:1]", "[64:ff9b::7f00:1]", "[64:ff9b::a00:1]", "[fe80::1%25eth0]",
                                  "[fe80::1%eth0]", "2130706433", "0177.0.0.1", "0x7f.1", "127.1"])
def test_such_hosts_are_refused_as_blocked_before_any_connection(site: str, host: str) -> None:
    # Each is, spells or carries a non-public address; a zone id is refused as blocked,
    # not reported as a failed lookup of "fe80::1%25eth0".
    port = int(site.rsplit(":", 1)[1])
    doc = _fetch(f"http://{host}:{port}/plain", allow=[])
    assert doc["error"]["kind"] == "blocked_address", doc["error"]
    assert doc["status"] is None and CountingHandler.requests == []


def test_odd_spellings_of_an_allowed_address_reach_it(site: str) -> None:
    """Read as the resolver reads them, with no lookup: the site really is at 127.1."""
    port = int(site.rsplit(":", 1)[1])
    for host in ("2130706433", "0177.0.0.1", "0x7f.1", "127.1"):
        doc = _fetch(f"http://{host}:{port}/plain")
        assert doc["error"] is None and doc["redirect_chain"][0]["address"] == "127.0.0.1"
    assert CountingHandler.requests == ["/plain"] * 4


# --- fetching --------------------------------------------------------------------------------


def test_plain_page(site: str) -> None:
    doc = _fetch(f"{site}/plain")
    assert doc["error"] is None and doc["status"] == 200
    assert doc["final_url"] == f"{site}/plain" and doc["content_type"] == "text/html"
    assert doc["bytes_read"] == len(scans_sites.PLAIN_HTML) and doc["truncated"] is False
    assert doc["sha256"] == hashlib.sha256(scans_sites.PLAIN_HTML).hexdigest()
    assert {k: doc["page"][k] for k in scans_sites.PLAIN_COUNTS} == scans_sites.PLAIN_COUNTS
    assert doc["page"]["meta_refresh"] is None and doc["tls"] is None
    assert doc["headers"]["content-type"] == "text/html; charset=utf-8"
    assert doc["redirect_chain"] == [{"url": f"{site}/plain", "status": 200, "location": None, "address": "127.0.0.1"}]
    timings = doc["timings"]
    assert timings["total_ms"] >= timings["first_byte_ms"] > 0 and timings["dns_ms"] >= 0
    assert dt.datetime.fromisoformat(doc["fetched_at"]).tzinfo is not None
    assert CountingHandler.requests == ["/plain"]


def test_loopback_is_refused_without_the_allow_list_and_nothing_is_sent(site: str) -> None:
    doc = _fetch(f"{site}/plain", allow=[])
    assert doc["error"]["kind"] == "blocked_address"
    assert "blocked address 127.0.0.1 (loopback)" in doc["error"]["message"]
    assert doc["status"] is None and doc["page"] is None
    assert CountingHandler.requests == []


def test_redirect_chain_is_followed_and_recorded(site: str) -> None:
    doc = _fetch(f"{site}/r1")
    assert [(h["url"], h["status"], h["location"]) for h in doc["redirect_chain"]] == [
        (f"{site}/r1", 302, "/r2"), (f"{site}/r2", 301, "/r3"), (f"{site}/r3", 307, "/plain"),
        (f"{site}/plain", 200, None)]
    assert doc["final_url"] == f"{site}/plain" and doc["page"]["title"] == "Plain test page"


@pytest.mark.parametrize(("path", "address"), [("/to-metadata", "169.254.169.254")])
def test_every_hop_is_checked(site: str, path: str, address: str) -> None:
    doc = _fetch(f"{site}{path}")
    assert doc["error"]["kind"] == "blocked_address" and f"blocked address {address}" in doc["error"]["message"]
    assert doc["redirect_chain"][0]["status"] == 302 and doc["redirect_chain"][-1]["address"] == address
    assert CountingHandler.requests == [path]


def test_redirect_limit_and_schemes(site: str) -> None:
    doc = _fetch(f"{site}/loop", max_redirects=2)
    assert doc["error"]["kind"] == "too_many_redirects" and len(doc["redirect_chain"]) == 3
    doc = _fetch(f"{site}/to-ftp")
    assert doc["error"]["kind"] == "invalid_url" and "ftp" in doc["error"]["message"]


def test_body_is_capped_and_marked_truncated(site: str) -> None:
    doc = _fetch(f"{site}/big?mb=1", max_bytes=100_000)
    assert doc["bytes_read"] == 100_000 and doc["truncated"] is True
    assert doc["sha256"] == hashlib.sha256(scans_sites.stream_prefix("text/plain", 100_000)).hexdigest()
    exact = 131072
    doc = _fetch(f"{site}/big?mb={exact / 1024 / 1024}", max_bytes=exact)
    assert doc["bytes_read"] == exact and doc["truncated"] is False


def test_total_time_is_capped(site: str) -> None:
    doc = _fetch(f"{site}/slow?seconds=5", max_time=1.0)
    assert doc["error"]["kind"] == "timeout"
    assert 900 <= doc["timings"]["total_ms"] < 3000


def test_meta_refresh_and_password_forms(site: str) -> None:
    assert _fetch(f"{site}/refresh")["page"]["meta_refresh"] == f"{site}/plain"
    page = _fetch(f"{site}/login")["page"]
    assert page["password_field"] is True and page["password_form_actions"] == [scans_sites.LOGIN_ACTION]


def test_html_parser_edge_cases() -> None:
    html = (b"<title>unclosed <b>bold</b>   title"
            b"<INPUT TYPE=Password name=p>"  # outside any form: the page itself receives it
            b"<form><input type='password'></form><form action='//other.example/x'><input type=password></form>"
            b"<a href=''>empty</a><a>none</a><iframe></iframe><script></script><meta http-equiv='Refresh' content='3'>")
    page = fetch_mod.analyse_html(html, "text/html; charset=latin-1", "http://a.example/p")
    assert page["title"] == "unclosed bold title"
    assert page["password_form_actions"] == ["http://a.example/p", "http://other.example/x"]
    assert page["links"] == 1 and page["iframes"] == 1 and page["scripts"] == 1 and page["forms"] == 2
    assert page["meta_refresh"] is None


def test_connects_to_the_checked_address_without_a_second_lookup(site: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A name whose answer changes after the first lookup (DNS rebinding) must not move
    the connection: one lookup per hop, and the connection goes to what was checked."""
    real = socket.getaddrinfo
    lookups: list[str] = []
    port = int(site.rsplit(":", 1)[1])

    def rebinding(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host == "rebind.test":
            lookups.append(host)
            # First answer: the allowed address; any later one: another loopback address
            # that is not on the allow-list (nothing listens there).
            return real("127.0.0.1" if len(lookups) == 1 else "127.0.0.2", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    doc = _fetch(f"http://rebind.test:{port}/plain")
    assert doc["error"] is None and doc["redirect_chain"][0]["address"] == "127.0.0.1"
    assert lookups == ["rebind.test"]
    # Each hop of a redirect chain is resolved and checked again.
    lookups.clear()
    doc = _fetch(f"http://rebind.test:{port}/r1")
    assert doc["error"]["kind"] == "blocked_address" and "127.0.0.2 (loopback)" in doc["error"]["message"]
    assert len(lookups) == 2


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scan-test"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tests")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(4242).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_reports_tls_details_of_an_untrusted_certificate(tmp_path: Path) -> None:
    from app.services.verdict import evaluate

    cert, key = _self_signed(tmp_path)
    server = scans_sites.serve(0, "127.0.0.1")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/plain"
        doc = _fetch(url)
    finally:
        server.shutdown()
        server.server_close()
    assert doc["error"] is None and doc["status"] == 200 and doc["page"]["title"] == "Plain test page"
    tls = doc["tls"]
    assert tls["protocol"].startswith("TLSv1.") and tls["cipher"]
    assert tls["verified"] is False and "self-signed" in tls["verify_error"]
    assert tls["subject"] == "CN=scan-test, O=Tests" and tls["issuer"] == "CN=scan-test, O=Tests"
    assert tls["san"] == ["DNS:localhost", "IP Address:127.0.0.1"]
    not_before = dt.datetime.fromisoformat(tls["not_before"])
    assert dt.timedelta(minutes=50) < dt.datetime.now(dt.UTC) - not_before < dt.timedelta(minutes=70)
    assert dt.datetime.fromisoformat(tls["not_after"]) > not_before + dt.timedelta(days=29)
    assert tls["serial"] == "1092" and len(tls["sha256"]) == 64
    assert doc["timings"]["tls_ms"] > 0
    rules = {r.rule for r in evaluate(url, doc).reasons}
    assert {"untrusted_certificate", "new_certificate", "ip_literal_host"} <= rules


def test_command_line_prints_one_json_document(site: str) -> None:
    # -I -S: isolated, no site-packages: the program needs the standard library only.
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(ROOT / "fetcher" / "fetch.py"), "--max-bytes", "2048", "--allow",
         "127.0.0.1/32", "--", f"{site}/plain"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["schema"] == 1 and doc["page"]["title"] == "Plain test page"
    proc = subprocess.run([sys.executable, "-I", "-S", str(ROOT / "fetcher" / "fetch.py"), "--allow", "nonsense",
                           "http://x/"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--allow" in proc.stderr
