"""The verdict of a URL scan: a deterministic score with its reasons, from the fetch result.

``evaluate(url, fetch)`` looks only at the submitted URL, the fetcher's JSON document and
the list of suspicious TLDs in ``app/services/data/suspicious_tlds.txt``: the same input
always gives the same verdict (the certificate rules compare with the document's own
``fetched_at``, not the clock). Each rule that fires adds its weight once; the score is
the sum, capped at 100, and the risk level follows from it. The rules and weights are
documented in docs/scans.md, and each is unit-tested on its own.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from publicsuffixlist import PublicSuffixList

TLD_FILE = Path(__file__).resolve().parent / "data" / "suspicious_tlds.txt"

#: name → (weight, what it means). Order is the order reasons are reported in.
RULES: dict[str, tuple[int, str]] = {
    "ip_literal_host": (25, "the URL names an IP address instead of a domain"),
    "punycode_host": (10, "the host has an internationalised (xn--) label"),
    "mixed_script_host": (35, "a host label mixes writing systems (e.g. Latin with Cyrillic): a look-alike"),
    "many_redirects": (10, "three or more redirects before the page"),
    "cross_domain_redirect": (15, "the redirects end on another registrable domain"),
    "password_form_over_http": (35, "a password field on a page, or posted to a form, without TLS"),
    "password_form_cross_domain": (30, "a password field on another domain than the URL's, or posted to one"),
    "executable_download": (40, "the URL serves an executable or installer"),
    "new_certificate": (15, "the TLS certificate is less than 7 days old"),
    "expired_certificate": (30, "the TLS certificate has expired or is not yet valid"),
    "untrusted_certificate": (20, "the TLS certificate does not verify (self-signed, wrong host, unknown CA)"),
    "suspicious_tld": (15, "the domain is under a TLD on the suspicious list"),
}
#: Scores at or above these are ``high`` / ``medium`` risk; below, ``low``.
HIGH, MEDIUM = 60, 25
MANY_REDIRECTS = 3
NEW_CERTIFICATE = timedelta(days=7)

EXECUTABLE_TYPES = frozenset({
    "application/x-msdownload", "application/x-msdos-program", "application/x-dosexec",
    "application/vnd.microsoft.portable-executable", "application/x-ms-installer", "application/x-msi",
    "application/x-executable", "application/x-elf", "application/x-sharedlib", "application/x-mach-binary",
    "application/x-apple-diskimage", "application/vnd.android.package-archive", "application/java-archive",
    "application/x-java-archive", "application/x-sh", "application/x-bat", "application/x-msdos-batch",
    "application/hta", "application/x-ms-shortcut", "application/vnd.ms-cab-compressed",
})
EXECUTABLE_EXTENSIONS = (".exe", ".scr", ".msi", ".bat", ".cmd", ".com", ".pif", ".apk", ".dmg", ".jar", ".vbs",
                         ".js", ".hta", ".ps1", ".lnk", ".sh", ".elf", ".appimage")
#: Script combinations allowed inside one label (Unicode TS #39, "highly restrictive").
ALLOWED_SCRIPT_SETS = (
    frozenset({"LATIN", "CJK", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "CJK", "BOPOMOFO"}),
    frozenset({"LATIN", "CJK", "HANGUL"}),
)


@dataclass(frozen=True)
class Reason:
    """One rule that fired: its name, its weight and what it saw."""

    rule: str
    weight: int
    detail: str


@dataclass(frozen=True)
class Verdict:
    """Score (0–100), risk level and the reasons, in rule order."""

    score: int
    risk: str  # low | medium | high
    reasons: tuple[Reason, ...]

    def reasons_as_dicts(self) -> list[dict[str, Any]]:
        """The reasons as JSON-ready dicts (stored in ``ScanResult.reasons``)."""
        return [asdict(r) for r in self.reasons]


@lru_cache(maxsize=4)
def load_suspicious_tlds(path: Path = TLD_FILE) -> frozenset[str]:
    """The TLD list: one a line, ``#`` comments, case and leading dots ignored."""
    tlds = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        value = line.split("#", 1)[0].strip().lower().lstrip(".")
        if value:
            tlds.add(value)
    return frozenset(tlds)


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def is_ip_literal(host: str) -> bool:
    """Whether the host is an IPv4 or IPv6 address rather than a name."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        return True
    except ValueError:
        return False


def registrable_domain(host: str) -> str:
    """The domain a person registers (``example.co.uk`` for ``a.example.co.uk``), by the
    Public Suffix List; an IP address or a bare suffix stands for itself."""
    host = host.lower().rstrip(".")
    if not host or is_ip_literal(host):
        return host
    return _psl().privatesuffix(host) or host


def _host(url: str | None) -> str:
    if not url:
        return ""
    try:
        return (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""


def _unicode_label(label: str) -> str:
    if label.startswith("xn--"):
        try:
            return label.encode("ascii").decode("idna")
        except UnicodeError:
            return label
    return label


def label_scripts(label: str) -> set[str]:
    """The writing systems of a label's letters (digits and hyphens belong to none)."""
    scripts = set()
    for ch in _unicode_label(label):
        if not ch.isalpha():
            continue
        try:
            words = unicodedata.name(ch).split()
        except ValueError:
            scripts.add("UNKNOWN")
            continue
        if words[0] in ("HALFWIDTH", "FULLWIDTH") and len(words) > 1:
            words = words[1:]
        # The prolonged sound mark belongs to both kana scripts.
        scripts.add("KATAKANA" if words[0] == "KATAKANA-HIRAGANA" else words[0])
    return scripts


def is_mixed_script(label: str) -> bool:
    """Whether one label mixes scripts in a way TS #39 (highly restrictive) does not allow."""
    scripts = label_scripts(label)
    if len(scripts) <= 1:
        return False
    return not any(scripts <= allowed for allowed in ALLOWED_SCRIPT_SETS)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


@dataclass(frozen=True)
class _Seen:
    """What the rules look at: the URL, where it led and what the fetcher saw there."""

    url: str
    fetch: dict[str, Any]
    tlds: frozenset[str]
    final_url: str
    hosts: list[str]
    start_domain: str

    @property
    def name_hosts(self) -> list[str]:
        return [h for h in self.hosts if not is_ip_literal(h)]


def _host_rules(seen: _Seen) -> dict[str, str]:
    reasons = {}
    ip_hosts = [h for h in seen.hosts if is_ip_literal(h)]
    if ip_hosts:
        reasons["ip_literal_host"] = f"host {', '.join(ip_hosts)} is an IP address"
    puny = [h for h in seen.name_hosts if any(lbl.startswith("xn--") for lbl in h.lower().split("."))]
    if puny:
        shown = ", ".join(f"{h} ({'.'.join(_unicode_label(lbl) for lbl in h.lower().split('.'))})" for h in puny)
        reasons["punycode_host"] = f"internationalised host {shown}"
    mixed = [
        f"{_unicode_label(lbl)} ({'+'.join(sorted(label_scripts(lbl)))})"
        for h in seen.name_hosts for lbl in h.lower().split(".") if is_mixed_script(lbl)
    ]
    if mixed:
        reasons["mixed_script_host"] = f"label {', '.join(dict.fromkeys(mixed))} mixes scripts"
    flagged = [h for h in seen.name_hosts if h.lower().rsplit(".", 1)[-1] in seen.tlds]
    if flagged:
        reasons["suspicious_tld"] = ", ".join(f".{h.lower().rsplit('.', 1)[-1]} ({h})" for h in flagged)
    return reasons


def _redirect_rules(seen: _Seen) -> dict[str, str]:
    reasons = {}
    chain = seen.fetch.get("redirect_chain") or []
    redirects = sum(1 for hop in chain if hop.get("location"))
    if redirects >= MANY_REDIRECTS:
        reasons["many_redirects"] = f"{redirects} redirects"
    hop_domains = [registrable_domain(_host(hop.get("url"))) for hop in chain]
    hop_domains.append(registrable_domain(_host(seen.final_url)))
    foreign = [d for d in dict.fromkeys(hop_domains) if d and d != seen.start_domain]
    if foreign:
        reasons["cross_domain_redirect"] = f"from {seen.start_domain} to {', '.join(foreign)}"
    return reasons


def _password_rules(seen: _Seen) -> dict[str, str]:
    page = seen.fetch.get("page") or {}
    if not page.get("password_field"):
        return {}
    reasons = {}
    actions = [a for a in page.get("password_form_actions") or [] if isinstance(a, str)]
    plain = [u for u in [seen.final_url, *actions] if urlsplit(u).scheme.lower() == "http"]
    if plain:
        reasons["password_form_over_http"] = f"password sent over plain http ({', '.join(dict.fromkeys(plain))})"
    page_domain = registrable_domain(_host(seen.final_url))
    elsewhere = []
    if page_domain != seen.start_domain:
        elsewhere.append(f"page on {page_domain}, URL on {seen.start_domain}")
    for action in actions:
        action_domain = registrable_domain(_host(action))
        if action_domain and action_domain != page_domain:
            elsewhere.append(f"form posts to {action_domain}")
    if elsewhere:
        reasons["password_form_cross_domain"] = "; ".join(dict.fromkeys(elsewhere))
    return reasons


def _download_rules(seen: _Seen) -> dict[str, str]:
    content_type = (seen.fetch.get("content_type") or "").lower()
    disposition = ((seen.fetch.get("headers") or {}).get("content-disposition") or "").lower()
    path = urlsplit(seen.final_url).path.lower()
    if content_type in EXECUTABLE_TYPES:
        return {"executable_download": f"content type {content_type}"}
    if "attachment" in disposition and any(ext in disposition for ext in EXECUTABLE_EXTENSIONS):
        return {"executable_download": f"download {disposition[:200]}"}
    if content_type in ("application/octet-stream", "binary/octet-stream", "") and path.endswith(EXECUTABLE_EXTENSIONS):
        return {"executable_download": f"binary download {path.rsplit('/', 1)[-1][:100]}"}
    return {}


def _certificate_rules(seen: _Seen) -> dict[str, str]:
    tls = seen.fetch.get("tls") or None
    if not tls:
        return {}
    reasons = {}
    fetched_at = _parse_time(seen.fetch.get("fetched_at"))
    not_before, not_after = _parse_time(tls.get("not_before")), _parse_time(tls.get("not_after"))
    if fetched_at and not_after and not_after < fetched_at:
        reasons["expired_certificate"] = f"expired {not_after.date().isoformat()}"
    elif fetched_at and not_before and not_before > fetched_at:
        reasons["expired_certificate"] = f"not valid before {not_before.date().isoformat()}"
    elif fetched_at and not_before and fetched_at - not_before < NEW_CERTIFICATE:
        age = fetched_at - not_before
        reasons["new_certificate"] = f"issued {age.days} day(s) {age.seconds // 3600} h before the scan"
    if tls.get("verified") is False:
        reasons["untrusted_certificate"] = str(tls.get("verify_error") or "verification failed")[:200]
    return reasons


#: Each family of rules: what it sees → the rules that fired, with what each saw.
RULE_CHECKS = (_host_rules, _redirect_rules, _password_rules, _download_rules, _certificate_rules)


def evaluate(url: str, fetch: dict[str, Any], suspicious_tlds: frozenset[str] | None = None) -> Verdict:
    """Score a completed fetch of ``url`` (see the module docstring and docs/scans.md)."""
    final_url = fetch.get("final_url") or url
    seen = _Seen(
        url=url, fetch=fetch, tlds=load_suspicious_tlds() if suspicious_tlds is None else suspicious_tlds,
        final_url=final_url, hosts=list(dict.fromkeys(h for h in (_host(url), _host(final_url)) if h)),
        start_domain=registrable_domain(_host(url)),
    )
    reasons: dict[str, str] = {}
    for check in RULE_CHECKS:
        reasons.update(check(seen))
    ordered = tuple(Reason(rule, RULES[rule][0], reasons[rule]) for rule in RULES if rule in reasons)
    score = min(100, sum(r.weight for r in ordered))
    risk = "high" if score >= HIGH else "medium" if score >= MEDIUM else "low"
    return Verdict(score, risk, ordered)
