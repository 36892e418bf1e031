"""Security review, as tests: credentials stored only hashed and compared in constant
time, revoked credentials refused, each kind of credential refused where it does not
belong, authentication failures limited per address, request size limits, /metrics
and Flower behind credentials.

Route protection itself (every non-public route needs a credential) is
tests/security/test_route_protection.py.
"""

from __future__ import annotations

import base64
import inspect
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from app.api import create_app
from app.db import session_scope
from app.models import Base
from app.settings import get_settings
from tests.fixtures.services import wait_for
from tests.security.conftest import ROOT, free_port, http_status


def _rows_containing(needle: str) -> list[str]:
    """Every table whose rows' text contains ``needle`` (the whole database is searched)."""
    found = []
    with session_scope() as session:
        for table in Base.metadata.sorted_tables:
            hit = session.execute(text(f'SELECT 1 FROM "{table.name}" t WHERE CAST(t AS text) LIKE :n LIMIT 1'),
                                  {"n": f"%{needle}%"}).first()
            if hit:
                found.append(table.name)
    return found


@pytest.fixture
def worker_token(api) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    resp = api.client.post("/api/admin/workers", json={"name": "sec-worker"}, headers=api.admin)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    yield body["id"], body["token"]


# --- stored only hashed, compared in constant time -----------------------------------------

def test_api_keys_worker_tokens_and_admin_token_are_never_stored_in_clear(api, worker_token) -> None:  # type: ignore[no-untyped-def]
    created = api.client.post("/api/admin/api-keys", json={"name": "sec-key"}, headers=api.admin)
    assert created.status_code == 201
    key = created.get_json()["key"]
    worker_id, token = worker_token
    # They work...
    assert api.client.get("/api/me", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert api.client.post("/api/v1/worker/heartbeat", json={}, headers={"Authorization": f"Bearer {token}"}
                           ).status_code == 200
    # ...yet no row of any table holds them, nor ADMIN_TOKEN; only their SHA-256 is kept.
    import hashlib

    for secret in (key, token, get_settings().admin_token.get_secret_value()):
        assert _rows_containing(secret) == [], "a credential is stored in clear"
    assert _rows_containing(hashlib.sha256(key.encode()).hexdigest()) == ["api_keys"]
    assert _rows_containing(hashlib.sha256(token.encode()).hexdigest()) == ["remote_workers"]
    # Listing keys and workers never shows a secret either.
    listed = api.client.get("/api/admin/api-keys", headers=api.admin).get_data(as_text=True)
    assert key not in listed and key[:10] in listed  # the prefix identifies it
    assert token not in api.client.get("/api/admin/workers", headers=api.admin).get_data(as_text=True)


def test_credentials_are_compared_in_constant_time() -> None:
    """Secrets are looked up by hash and compared with ``hmac.compare_digest``, never ``==``."""
    from app.api import auth
    from app.api.voice import admin as voice_admin
    from app.services import auth as key_service
    from app.services.voice import workers

    for function in (key_service.verify_api_key, workers.authenticate, auth._matches, voice_admin.workers_login,
                     voice_admin._check_csrf):
        source = inspect.getsource(function)
        assert "compare_digest" in source, f"{function.__qualname__} does not compare in constant time"
    # The admin, metrics and operator checks compare through auth._matches.
    for function in (auth._check_admin.__wrapped__, auth._check_metrics_token.__wrapped__,
                     auth.check_operator_token.__wrapped__, auth._check_api_key.__wrapped__):
        source = inspect.getsource(function)
        assert "_matches(" in source or "_is_admin_token(" in source, function.__qualname__
    assert "key_hash == _hash(token)" in inspect.getsource(key_service.verify_api_key)  # lookup by hash


# --- revoked and misplaced credentials ------------------------------------------------------

def test_a_revoked_api_key_is_refused_at_once(api) -> None:  # type: ignore[no-untyped-def]
    body = api.client.post("/api/admin/api-keys", json={"name": "to-revoke"}, headers=api.admin).get_json()
    headers = {"Authorization": f"Bearer {body['key']}"}
    assert api.client.get("/api/me", headers=headers).status_code == 200
    assert api.client.delete(f"/api/admin/api-keys/{body['id']}", headers=api.admin).status_code == 204
    refused = api.client.get("/api/me", headers=headers)
    assert refused.status_code == 401 and refused.get_json()["error"]["message"] == "unknown or revoked API key"
    assert api.client.post("/api/messages", headers=headers, json={
        "conversation_id": "c", "channel": "whatsapp", "recipient": "+1555", "content": "x"}).status_code == 401


def test_a_revoked_worker_token_is_refused_at_once(api, worker_token) -> None:  # type: ignore[no-untyped-def]
    worker_id, token = worker_token
    headers = {"Authorization": f"Bearer {token}"}
    assert api.client.post("/api/v1/worker/heartbeat", json={}, headers=headers).status_code == 200
    assert api.client.delete(f"/api/admin/workers/{worker_id}", headers=api.admin).status_code == 204
    for resp in (api.client.post("/api/v1/worker/heartbeat", json={}, headers=headers),
                 api.client.get("/api/v1/worker/tasks/next", headers=headers)):
        assert resp.status_code == 401 and "revoked" in resp.get_json()["error"]["message"]


def test_each_credential_is_refused_where_it_does_not_belong(api, worker_token) -> None:  # type: ignore[no-untyped-def]
    _, token = worker_token
    worker = {"Authorization": f"Bearer {token}"}
    cases = [
        ("client key on an admin route", "GET", "/api/admin/api-keys", api.headers),
        ("client key on the schedules' status", "GET", "/api/schedules", api.headers),
        ("client key on a worker route", "GET", "/api/v1/worker/tasks/next", api.headers),
        ("worker token on an admin route", "GET", "/api/admin/workers", worker),
        ("worker token on a client route", "GET", "/api/me", worker),
        ("admin token on a worker route", "POST", "/api/v1/worker/heartbeat", api.admin),
        ("a forged worker JWT", "GET", "/api/v1/worker/tasks/next", {"Authorization": "Bearer " + token[:-4] + "AAAA"}),
    ]
    for what, method, path, headers in cases:
        resp = api.client.open(path, method=method, headers=headers, json={})
        assert resp.status_code == 401, f"{what}: {resp.status_code}"
        assert resp.get_json()["error"]["code"] == "unauthorized", what
    # The admin credential is accepted on the client routes, and sees every client's work
    # there (tests/security/test_ownership.py); it names no client of its own.
    me = api.client.get("/api/me", headers=api.admin)
    assert me.status_code == 200 and me.get_json()["client_id"] is None


# --- authentication failure limiting --------------------------------------------------------

@pytest.fixture
def limited_app(pg_database, redis_client):  # type: ignore[no-untyped-def]
    settings = get_settings().model_copy(update={"auth_failure_limit": 5, "auth_failure_window": 60})
    return create_app(settings)


def _from(address: str) -> dict[str, Any]:
    return {"environ_base": {"REMOTE_ADDR": address}}


def test_authentication_failures_are_limited_per_address(limited_app, api, redis_client) -> None:  # type: ignore[no-untyped-def]
    client = limited_app.test_client()
    attacker, bystander = f"198.51.100.{secrets.randbelow(200) + 1}", "203.0.113.7"
    redis_client.delete(f"authfail:{attacker}", f"authfail:{bystander}")
    # Five wrong guesses of three kinds of credential: each a plain 401.
    guesses = [("/api/me", "ak_wrong"), ("/api/admin/api-keys", "not-the-admin-token"),
               ("/api/v1/worker/tasks/next", "not.a.jwt"), ("/api/me", "ak_wrong2"), ("/api/me", "ak_wrong3")]
    for path, guess in guesses:
        assert client.get(path, headers={"Authorization": f"Bearer {guess}"}, **_from(attacker)).status_code == 401
    # The sixth is refused before the credential is looked at, even a correct one.
    for headers in ({"Authorization": "Bearer ak_wrong4"}, api.headers, api.admin):
        resp = client.get("/api/me", headers=headers, **_from(attacker))
        assert resp.status_code == 429, resp.get_json()
        assert resp.get_json()["error"]["code"] == "too_many_auth_failures"
        assert 0 < int(resp.headers["Retry-After"]) <= 60
    # The admin page's sign-in form is under the same limit.
    page = client.post("/admin/login", data={"token": get_settings().admin_token.get_secret_value()},
                       **_from(attacker))
    assert page.status_code == 429 and "Retry-After" in page.headers
    # Another address is not affected.
    assert client.get("/api/me", headers=api.headers, **_from(bystander)).status_code == 200
    # When the window ends the address may try again.
    redis_client.expire(f"authfail:{attacker}", 1)
    wait_for(lambda: redis_client.get(f"authfail:{attacker}") is None, timeout=5)
    assert client.get("/api/me", headers=api.headers, **_from(attacker)).status_code == 200


def test_wrong_admin_sign_ins_count_as_failures(limited_app, redis_client) -> None:  # type: ignore[no-untyped-def]
    client = limited_app.test_client()
    address = f"192.0.2.{secrets.randbelow(200) + 1}"
    redis_client.delete(f"authfail:{address}")
    for _ in range(5):
        assert client.post("/admin/login", data={"token": "guess"}, **_from(address)).status_code == 401
    assert client.post("/admin/login", data={"token": "guess"}, **_from(address)).status_code == 429
    assert int(redis_client.get(f"authfail:{address}")) == 5


# --- request size limits --------------------------------------------------------------------

def test_bodies_over_max_request_bytes_are_refused_with_json_413(pg_database, api) -> None:  # type: ignore[no-untyped-def]
    small = create_app(get_settings().model_copy(update={"max_request_bytes": 4096})).test_client()
    big = {"conversation_id": "c", "channel": "whatsapp", "recipient": "+1555", "content": "x" * 8000}
    resp = small.post("/api/messages", json=big, headers=api.headers)
    assert resp.status_code == 413 and resp.get_json()["error"]["code"] == "request_entity_too_large"
    # A streamed body (a file chunk) is cut off at the limit too.
    created = small.post("/api/files", json={"filename": "a.bin", "size": 10}, headers=api.headers)
    assert created.status_code == 201, created.get_json()
    chunk = small.put(created.get_json()["chunks"][0]["api_path"], data=b"x" * 8000, headers=api.headers)
    assert chunk.status_code == 413 and chunk.is_json
    # Under the limit the same request reaches validation (an unknown channel, so that
    # no message is queued for later tests' workers to pick up).
    under = small.post("/api/messages", json=big | {"content": "short", "channel": "sms"}, headers=api.headers)
    assert under.status_code == 400 and under.get_json()["error"]["code"] == "validation_error"


# --- /metrics and Flower behind credentials -------------------------------------------------

def test_metrics_require_the_metrics_token_when_one_is_set(pg_database) -> None:  # type: ignore[no-untyped-def]
    open_client = create_app(get_settings()).test_client()
    assert open_client.get("/metrics").status_code == 200  # METRICS_TOKEN unset: open (documented)
    closed = create_app(get_settings().model_copy(update={"metrics_token": type(get_settings().admin_token)(
        "metrics-secret-1")})).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic bWV0cmljczp4"}):
        resp = closed.get("/metrics", headers=headers)
        assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "unauthorized"
    ok = closed.get("/metrics", headers={"Authorization": "Bearer metrics-secret-1"})
    assert ok.status_code == 200 and b"# HELP" in ok.data


def test_flower_refuses_requests_without_its_basic_auth(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Flower started as the units and the dev stack start it (``--basic-auth``)."""
    unit = (ROOT / "deploy" / "systemd" / "app-flower.service").read_text()
    assert "--basic-auth=${FLOWER_USER}:${FLOWER_PASSWORD}" in unit
    assert "--basic-auth=" in (ROOT / "deploy" / "supervisor" / "app.conf").read_text()
    assert "--basic-auth=" in (ROOT / "app" / "devserver.py").read_text()
    port, password = free_port(), "fl-" + secrets.token_hex(8)
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "app", "flower", "--address=127.0.0.1",
                             f"--port={port}", f"--basic-auth=ops:{password}"], cwd=ROOT, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_status(base + "/healthcheck") != 0, timeout=60, interval=0.3, message="Flower up")
        good = "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()
        bad = "Basic " + base64.b64encode(b"ops:wrong").decode()
        for path in ("/", "/workers", "/api/workers", "/api/tasks"):
            assert http_status(base + path) == 401, path
            assert http_status(base + path, {"Authorization": bad}) == 401, path
        assert http_status(base + "/api/workers", {"Authorization": good}) == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
