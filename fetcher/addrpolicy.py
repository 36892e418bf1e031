"""Which network addresses an outbound fetch of a client-supplied URL may reach.

One policy for every such fetch: the URL-scan fetcher (``fetch.py``, next to this file
in the fetcher image) and the application's own fetches (``app.outbound``, e.g. a voice
clip's ``audio_url``). Standard library only, because the fetcher image has nothing else.

The rules, applied to every hop of a redirect chain:

* a literal host in any spelling the C resolver accepts (``2130706433``, ``0177.0.0.1``,
  ``0x7f.1``, ``127.1``, ``[::ffff:7f00:1]``, ``[fe80::1%25eth0]``) is read here, with no
  lookup, so the verdict does not depend on the resolver;
* a name is resolved once (``resolve``) and **every** address it resolves to is judged;
  the caller then connects to a judged address, never to the name again;
* only public unicast addresses pass: not loopback, private, link-local, CGNAT,
  multicast, reserved, unspecified, documentation/benchmark ranges, IPv6 ULA or
  site-local, nor a cloud metadata address;
* an IPv6 address carrying an IPv4 address (mapped ``::ffff:0:0/96``, translated
  ``::ffff:0:0:0/96``, NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``, 6to4
  ``2002::/16``, Teredo ``2001::/32``) is judged by the IPv4 address(es) it carries
  (and Teredo is refused in any case);
* an IPv6 address with a zone id (``%eth0``) is never fetched: it names an interface of
  this machine;
* an allow-list admits exceptions: networks (``10.5.0.0/16``: every port) or exact
  endpoints (``127.0.0.1:8080``, ``[::1]:8080``: that address and port only), but
  never a cloud metadata address (169.254.169.254, fd00:ec2::254, ...).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from dataclasses import dataclass
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: Cloud instance metadata services: each lies in one of the blocked ranges below (which
#: names the reason), and no allow-list entry admits them.
_METADATA = [
    "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    "169.254.170.2/32",  # AWS ECS task metadata
    "169.254.169.123/32",  # AWS time sync
    "100.100.100.200/32",  # Alibaba Cloud
    "192.0.0.192/32",  # Oracle Cloud (legacy)
    "fd00:ec2::254/128",  # AWS over IPv6
    "fd00:ec2::23/128",  # AWS DNS over IPv6
    "fd20:ce::254/128",  # GCP over IPv6
]
# Special-purpose ranges (IANA IPv4/IPv6 special-purpose address registries), in the
# order they are tested; the first match names the reason. Listed explicitly so the
# verdict does not depend on the ``ipaddress`` version inside the image.
_BLOCKED_V4 = [
    ("0.0.0.0/8", "unspecified / this network"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("169.254.0.0/16", "link-local"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("198.18.0.0/15", "benchmarking"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
]
_BLOCKED_V6 = [
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("fc00::/7", "unique local (ULA)"),
    ("ff00::/8", "multicast"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("2001::/23", "IETF protocol assignments"),
    ("::/96", "IPv4-compatible (deprecated)"),
]
METADATA = [ipaddress.ip_network(n) for n in _METADATA]
BLOCKED_V4 = [(ipaddress.ip_network(n), why) for n, why in _BLOCKED_V4]
BLOCKED_V6 = [(ipaddress.ip_network(n), why) for n, why in _BLOCKED_V6]
#: IPv6 prefixes that carry an IPv4 address: the embedded address is judged instead.
MAPPED = ipaddress.ip_network("::ffff:0:0/96")
TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
TEREDO = ipaddress.ip_network("2001::/32")


class Refused(Exception):
    """The policy refuses this address; ``reason`` says which rule."""

    def __init__(self, address: str, reason: str, host: str | None = None) -> None:
        super().__init__(f"blocked address {address} ({reason})" + (f" for host {host}" if host else ""))
        self.address = address
        self.reason = reason
        self.host = host


class ResolveError(Exception):
    """The host name could not be resolved (or has no address)."""


@dataclass(frozen=True)
class Endpoint:
    """An allow-list entry admitting one address on one port."""

    address: IPAddress
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


AllowRule = Union[IPNetwork, Endpoint]


# --- reading addresses -------------------------------------------------------------------------

_LOOSE_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)$")


def loose_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read as ``inet_aton`` reads it (1 to 4 parts, each decimal, octal or hex),
    or None when it is not such a number. ``0x7f.1``, ``0177.0.0.1``, ``2130706433`` and
    ``127.1`` are all 127.0.0.1."""
    parts = host.split(".")
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]  # a trailing dot, as in an absolute name
    if not 1 <= len(parts) <= 4 or not all(_LOOSE_PART.match(p) for p in parts):
        return None
    values = []
    for part in parts:
        if part[:2].lower() == "0x":
            values.append(int(part[2:] or "0", 16))
        elif part.startswith("0"):
            values.append(int(part, 8))
        else:
            values.append(int(part))
    # The last part fills all the bytes the others leave.
    last_bits = 8 * (5 - len(values))
    if any(v > 0xFF for v in values[:-1]) or values[-1] >= 1 << last_bits:
        return None
    number = 0
    for v in values[:-1]:
        number = (number << 8) | v
    number = (number << last_bits) | values[-1]
    return ipaddress.IPv4Address(number)


def host_literal(host: str) -> str | None:
    """The address a URL's host names literally, as text (an IPv6 zone id kept as
    ``%zone``), or None when the host is a name to resolve."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        address, sep, zone = host.partition("%")
        if sep and zone.startswith("25") and len(zone) > 2:
            zone = zone[2:]  # the URL's %25 escape of the "%"
        try:
            ip = ipaddress.IPv6Address(address)
        except ValueError:
            return None
        return f"{ip}%{zone}" if sep else str(ip)
    v4 = loose_ipv4(host)
    return str(v4) if v4 is not None else None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (mapped, translated, NAT64, 6to4,
    Teredo server and client); empty when it carries none."""
    if ip in MAPPED or ip in TRANSLATED or ip in NAT64 or ip in NAT64_LOCAL:
        # The last 32 bits (RFC 6052 with a /96 prefix, the usual NAT64 deployment).
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip in SIX_TO_FOUR:
        return [ipaddress.IPv4Address(ip.packed[2:6])]
    if ip in TEREDO:
        server, client = ip.teredo  # type: ignore[misc]
        return [server, client]
    return []


def _in_allow(ips: list[IPAddress], port: int | None, allow: list[AllowRule]) -> bool:
    for rule in allow:
        for ip in ips:
            if isinstance(rule, Endpoint):
                if port is not None and port == rule.port and ip == rule.address:
                    return True
            elif ip.version == rule.version and ip in rule:
                return True
    return False


def _is_metadata(ip: IPAddress) -> bool:
    return any(ip.version == net.version and ip in net for net in METADATA)


def _special(ip: IPAddress) -> str | None:
    # Why ``ip`` (itself, not what it carries) is not a public unicast address.
    for net, why in (BLOCKED_V4 if ip.version == 4 else BLOCKED_V6):
        if ip in net:
            return why
    if ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    return None


def blocked_reason(address: str, allow: list[AllowRule] | None = None, port: int | None = None) -> str | None:
    """Why ``address`` may not be fetched, or None when it may.

    An address the allow-list admits (a network containing it, or the exact endpoint
    ``address:port``) is allowed; otherwise only public unicast addresses are.
    """
    text, _, zone = address.partition("%")
    ip = ipaddress.ip_address(text)
    carried = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else []
    # A metadata service is refused even inside an allow-listed network.
    if not any(map(_is_metadata, [ip, *carried])) and _in_allow([ip, *carried], port, allow or []):
        return None
    if carried:
        for v4 in carried:
            why = _special(v4) or (None if v4.is_global else "not a public address")
            if why:
                return f"IPv6 address carrying IPv4 {v4}: {why}"
        if ip not in TEREDO:
            return None
        # Teredo carrying only public addresses is still refused below (2001::/23):
        # no client of this service needs a Teredo tunnel.
    why = _special(ip)
    if why:
        return why
    if zone:
        return "IPv6 address with a zone id (an interface of this host)"
    if not ip.is_global:
        return "not a public address"
    return None


def parse_allow(values: list[str] | str) -> list[AllowRule]:
    """Allow-list entries (comma-separated, or several values): ``CIDR``, a bare address
    (that address, any port), ``a.b.c.d:port`` or ``[v6]:port`` (that endpoint only).
    A network is read with ``strict=False``: a host address with a prefix is fine."""
    rules: list[AllowRule] = []
    for value in [values] if isinstance(values, str) else values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            if part.startswith("["):
                address, sep, port = part[1:].partition("]:")
                if not sep:
                    raise ValueError(f"{part!r}: an IPv6 endpoint is written [address]:port")
                rules.append(Endpoint(ipaddress.IPv6Address(address), _port(port, part)))
            elif "/" not in part and part.count(":") == 1:
                address, _, port = part.partition(":")
                rules.append(Endpoint(ipaddress.IPv4Address(address), _port(port, part)))
            else:
                rules.append(ipaddress.ip_network(part, strict=False))
    return rules


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535")
    return int(text)


# --- resolving and judging ---------------------------------------------------------------------


def resolve(host: str, port: int, timeout: float) -> list[str]:
    """Every address of ``host``: a literal without any lookup, a name by one
    ``getaddrinfo`` bounded by ``timeout`` (it has none of its own).

    Raises ``ResolveError``, or ``TimeoutError`` when the lookup takes too long.
    """
    literal = host_literal(host)
    if literal is not None:
        return [literal]
    result: dict[str, object] = {}

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            result["addresses"] = list(dict.fromkeys(str(info[4][0]) for info in infos))
        except (socket.gaierror, UnicodeError, OSError) as exc:
            result["error"] = exc

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(max(timeout, 0.0))
    if thread.is_alive():
        raise TimeoutError(f"resolving {host} took too long")
    if "error" in result:
        raise ResolveError(f"cannot resolve host {host}: {result['error']}")
    addresses = result.get("addresses")
    if not addresses:
        raise ResolveError(f"host {host} has no address")
    return addresses  # type: ignore[return-value]


def check(host: str, addresses: list[str], port: int, allow: list[AllowRule] | None = None) -> None:
    """Refuse (``Refused``) unless every one of ``addresses`` is allowed: one bad answer
    among good ones is enough, since the connection may go to any of them."""
    for address in addresses:
        reason = blocked_reason(address, allow, port)
        if reason:
            raise Refused(address, reason, host)


def checked_addresses(host: str, port: int, allow: list[AllowRule] | None, timeout: float) -> list[str]:
    """``resolve`` then ``check``: the addresses to connect to, all of them allowed."""
    addresses = resolve(host, port, timeout)
    check(host, addresses, port, allow)
    return addresses
