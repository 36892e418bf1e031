"""The scan verdict, rule by rule: each rule fires on its case alone, not on a clean page,
and the score, risk and order are deterministic."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.services.verdict import (
    HIGH,
    MEDIUM,
    RULES,
    TLD_FILE,
    evaluate,
    is_mixed_script,
    load_suspicious_tlds,
    registrable_domain,
)

URL = "https://www.example.com/start"
FETCHED_AT = "2026-06-15T12:00:00+00:00"


def clean(**changes: Any) -> dict[str, Any]:
    """A fetch document of an ordinary page on the submitted domain, over verified TLS."""
    doc: dict[str, Any] = {
        "schema": 1, "url": URL, "fetched_at": FETCHED_AT,
        "final_url": "https://www.example.com/start", "status": 200,
        "redirect_chain": [{"url": URL, "status": 200, "location": None, "address": "93.184.216.34"}],
        "headers": {"content-type": "text/html"}, "content_type": "text/html", "bytes_read": 1000,
        "truncated": False, "sha256": "0" * 64,
        "page": {"title": "Example", "links": 3, "forms": 0, "scripts": 1, "iframes": 0, "password_field": False,
                 "password_form_actions": [], "meta_refresh": None},
        "tls": {"protocol": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "verified": True, "verify_error": None,
                "subject": "CN=www.example.com", "issuer": "CN=Some CA", "san": ["DNS:www.example.com"],
                "not_before": "2026-03-01T00:00:00+00:00", "not_after": "2026-09-01T00:00:00+00:00"},
        "timings": {}, "error": None,
    }
    doc.update(copy.deepcopy(changes))
    if "redirect_chain" not in changes:  # a single hop, at whatever URL the page is
        doc["redirect_chain"][0]["url"] = doc["final_url"]
    return doc


def rules_of(url: str, doc: dict[str, Any]) -> dict[str, str]:
    return {r.rule: r.detail for r in evaluate(url, doc).reasons}


def test_clean_page_scores_zero() -> None:
    verdict = evaluate(URL, clean())
    assert verdict.score == 0 and verdict.risk == "low" and verdict.reasons == ()


def test_ip_literal_host() -> None:
    assert rules_of("http://203.0.113.9/login", clean(final_url="http://203.0.113.9/login")) == {
        "ip_literal_host": "host 203.0.113.9 is an IP address"}
    assert "ip_literal_host" in rules_of("http://[2001:db8::1]:8080/", clean(final_url="http://[2001:db8::1]:8080/"))


def test_punycode_host() -> None:
    url = "https://xn--bcher-kva.example/"  # bücher.example: one script, only punycode
    assert rules_of(url, clean(final_url=url)) == {"punycode_host": "internationalised host xn--bcher-kva.example "
                                                                    "(bücher.example)"}


def test_mixed_script_host() -> None:
    url = "https://xn--pypal-4ve.com/"  # "pаypal" with a Cyrillic а
    found = rules_of(url, clean(final_url=url))
    assert set(found) == {"punycode_host", "mixed_script_host"}
    assert "CYRILLIC+LATIN" in found["mixed_script_host"]
    assert is_mixed_script("xn--pypal-4ve") and not is_mixed_script("paypal") and not is_mixed_script("bücher")
    assert not is_mixed_script("東京タワー") and not is_mixed_script("abc日本")
    assert is_mixed_script("аpple-βeta")


def test_many_redirects() -> None:
    chain = [{"url": f"https://www.example.com/{i}", "status": 302, "location": f"/{i + 1}"} for i in range(3)]
    chain.append({"url": "https://www.example.com/start", "status": 200, "location": None})
    assert rules_of(URL, clean(redirect_chain=chain)) == {"many_redirects": "3 redirects"}
    assert rules_of(URL, clean(redirect_chain=chain[1:])) == {}


def test_cross_domain_redirect() -> None:
    chain = [{"url": URL, "status": 302, "location": "https://login.example-secure.net/"},
             {"url": "https://login.example-secure.net/", "status": 200, "location": None}]
    found = rules_of(URL, clean(redirect_chain=chain, final_url="https://login.example-secure.net/"))
    assert found == {"cross_domain_redirect": "from example.com to example-secure.net"}
    # Another host of the same registrable domain is not a cross-domain redirect.
    chain[1]["url"] = "https://accounts.example.com/"
    assert rules_of(URL, clean(redirect_chain=chain, final_url="https://accounts.example.com/")) == {}
    assert registrable_domain("a.b.example.co.uk") == "example.co.uk"


def test_password_form_over_http() -> None:
    url = "http://www.example.com/login"
    page = clean()["page"] | {"password_field": True, "password_form_actions": ["http://www.example.com/session"]}
    found = rules_of(url, clean(final_url=url, page=page, tls=None))
    assert set(found) == {"password_form_over_http"}
    # On an https page that posts to an http action, too.
    page["password_form_actions"] = ["http://www.example.com/session"]
    assert set(rules_of(URL, clean(page=page))) == {"password_form_over_http"}


def test_password_form_cross_domain() -> None:
    page = clean()["page"] | {"password_field": True, "password_form_actions": ["https://collector.evil.example/x"]}
    found = rules_of(URL, clean(page=page))
    assert found == {"password_form_cross_domain": "form posts to evil.example"}
    # A password form on a page the URL redirected to on another domain.
    page["password_form_actions"] = ["https://phish.example.net/login"]
    found = rules_of(URL, clean(page=page, final_url="https://phish.example.net/login"))
    assert found["password_form_cross_domain"] == "page on example.net, URL on example.com"
    # Same domain, https: nothing.
    page["password_form_actions"] = ["https://www.example.com/session"]
    assert rules_of(URL, clean(page=page)) == {}


@pytest.mark.parametrize("changes", [
    {"content_type": "application/x-msdownload"},
    {"content_type": "application/vnd.android.package-archive"},
    {"content_type": "application/octet-stream",
     "headers": {"content-disposition": 'attachment; filename="invoice.pdf.exe"'}},
    {"content_type": "application/octet-stream", "final_url": "https://www.example.com/setup.msi"},
])
def test_executable_download(changes: dict[str, Any]) -> None:
    assert set(rules_of(URL, clean(page=None, **changes))) == {"executable_download"}


def test_plain_binary_is_not_an_executable() -> None:
    assert rules_of(URL, clean(page=None, content_type="application/pdf")) == {}


def test_new_certificate() -> None:
    tls = clean()["tls"] | {"not_before": "2026-06-13T12:00:00+00:00"}
    assert rules_of(URL, clean(tls=tls)) == {"new_certificate": "issued 2 day(s) 0 h before the scan"}


@pytest.mark.parametrize(("field", "value", "detail"), [
    ("not_after", "2026-06-01T00:00:00+00:00", "expired 2026-06-01"),
    ("not_before", "2026-07-01T00:00:00+00:00", "not valid before 2026-07-01"),
])
def test_expired_certificate(field: str, value: str, detail: str) -> None:
    tls = clean()["tls"] | {field: value}
    assert rules_of(URL, clean(tls=tls)) == {"expired_certificate": detail}


def test_untrusted_certificate() -> None:
    tls = clean()["tls"] | {"verified": False, "verify_error": "self-signed certificate"}
    assert rules_of(URL, clean(tls=tls)) == {"untrusted_certificate": "self-signed certificate"}


def test_suspicious_tld_from_the_repository_list() -> None:
    tlds = load_suspicious_tlds()
    assert {"zip", "tk", "top"} <= tlds and "com" not in tlds
    assert TLD_FILE.is_file() and "#" not in "".join(tlds)
    url = "https://files.example.zip/doc"
    assert rules_of(url, clean(final_url=url)) == {"suspicious_tld": ".zip (files.example.zip)"}
    assert rules_of(url, clean(final_url=url)) == {r.rule: r.detail for r in evaluate(
        url, clean(final_url=url), suspicious_tlds=frozenset({"zip"})).reasons}
    assert evaluate(url, clean(final_url=url), suspicious_tlds=frozenset()).reasons == ()


def test_score_is_the_capped_sum_with_deterministic_order_and_risk() -> None:
    url = "http://198.51.100.7/login.zip"
    page = clean()["page"] | {"password_field": True, "password_form_actions": ["http://collect.example/"]}
    doc = clean(final_url=url, page=page, tls=None, content_type="application/x-msdownload")
    first, second = evaluate(url, doc), evaluate(url, copy.deepcopy(doc))
    assert first == second
    assert [r.rule for r in first.reasons] == [r for r in RULES if r in {r.rule for r in first.reasons}]
    assert sum(r.weight for r in first.reasons) > 100 and first.score == 100 and first.risk == "high"
    assert evaluate(URL, clean(tls=clean()["tls"] | {"verified": False})).risk == "low"  # 20 < MEDIUM
    medium = evaluate("http://203.0.113.9/", clean(final_url="http://203.0.113.9/", tls=None))
    assert medium.score == 25 == MEDIUM and medium.risk == "medium"
    assert HIGH > MEDIUM
