"""Every route that is not deliberately public refuses a request without credentials.

The test walks the application's URL map, so a new route added without authentication
fails here until it is protected or listed as public with the reason.
"""

from __future__ import annotations

import re

import pytest

from app.api import create_app
from app.settings import get_settings

#: Public on purpose, each with why.
PUBLIC = {
    "/": "the home page: links only",
    "/health": "load balancers and operators probe it",
    "/openapi.json": "the API description",
    "/metrics": "open only while METRICS_TOKEN is unset (test_security.py checks the token); bind the API "
                "to a private address then (docs/operations.md)",
    "/static/<path:filename>": "Flask's static files",
    "/storage/download/<token>": "the signed, expiring token is the credential",
    "/admin/login": "the admin page's sign-in form",
    "/admin/logout": "signing out needs no credential",
    "/admin/workers": "without a session it only shows the sign-in form (checked below)",
    "/console/login": "the console's sign-in form",
    "/console/logout": "signing out needs no credential",
}
PUBLIC_PREFIXES = ("/docs/",)  # the rendered OpenAPI pages


def _sample(rule: str) -> str:
    """A concrete URL for a rule: every converter filled with a harmless value."""
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: "1" if "int" in m.group(0) else "x1", rule)


def _routes() -> list[tuple[str, str]]:
    app = create_app(get_settings())
    out = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, rule.rule))
    return out


@pytest.fixture
def client(pg_database):  # type: ignore[no-untyped-def]
    return create_app(get_settings()).test_client()


def test_every_non_public_route_needs_credentials(client) -> None:  # type: ignore[no-untyped-def]
    checked = []
    for method, rule in _routes():
        if rule in PUBLIC or rule.startswith(PUBLIC_PREFIXES):
            continue
        resp = client.open(_sample(rule), method=method, json={})
        assert resp.status_code in (401, 403), f"{method} {rule} answered {resp.status_code} without credentials"
        if rule.startswith("/api/"):  # the admin page's own routes answer with HTML
            assert resp.is_json and "error" in resp.get_json(), f"{method} {rule}: error body is not JSON"
        checked.append((method, rule))
    assert len(checked) >= 40  # the map really was walked


def test_admin_routes_refuse_a_client_key(api) -> None:  # type: ignore[no-untyped-def]
    for method, rule in _routes():
        if not rule.startswith(("/api/admin/", "/api/schedules")):
            continue
        resp = api.client.open(_sample(rule), method=method, json={}, headers=api.headers)
        assert resp.status_code in (401, 403), f"{method} {rule} accepted a client API key"


def test_admin_page_without_a_session_shows_only_the_sign_in_form(client) -> None:  # type: ignore[no-untyped-def]
    resp = client.get("/admin/workers")
    body = resp.get_data(as_text=True).lower()
    assert resp.status_code in (200, 401, 403)
    assert "password" in body or "token" in body  # the sign-in form
    assert "/revoke" not in body  # no worker list, no revoke actions
    add = client.post("/admin/workers", data={"name": "intruder"})
    assert add.status_code in (302, 401, 403)
    if add.status_code == 302:
        assert "login" in add.headers.get("Location", "") or add.headers.get("Location", "").endswith("/admin/workers")
