"""The console over HTTP (Flask test client, real PostgreSQL and Redis): sign-in and its
cookie, roles (a viewer's action is 403), CSRF, bulk dry run and refusals, the audit log,
the sign-in rate limit and the OpenAPI document."""

from __future__ import annotations

import re
import secrets

import pytest

from app.services.console import operators
from tests.console.support import dead_message

ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture
def app(pg_database, redis_client):  # type: ignore[no-untyped-def]
    from app.api import create_app
    from app.settings import get_settings

    return create_app(get_settings().model_copy(update={"console_login_limit": "1000/minute"}))


def make_operator(role: str) -> tuple[str, str]:
    from app.db import session_scope

    name, password = f"{role}-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    with session_scope() as session:
        operators.create_operator(session, name, role, password)
    return name, password


def signed_in(app, role: str):  # type: ignore[no-untyped-def]
    client = app.test_client()
    name, password = make_operator(role)
    resp = client.post("/console/login", data={"name": name, "password": password})
    assert resp.status_code == 303, resp.data
    return client, name


def csrf_of(client) -> str:  # type: ignore[no-untyped-def]
    page = client.get("/console/jobs").get_data(as_text=True)
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)  # type: ignore[union-attr]


def test_sign_in_sets_a_strict_http_only_cookie_and_a_wrong_password_is_refused(app) -> None:  # type: ignore[no-untyped-def]
    client = app.test_client()
    name, password = make_operator("viewer")
    assert client.get("/console").status_code == 401  # the sign-in form
    bad = client.post("/console/login", data={"name": name, "password": "wrong-password!"})
    assert bad.status_code == 401 and b"Wrong name or password" in bad.data
    ok = client.post("/console/login", data={"name": name, "password": password})
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert client.get("/console/jobs").status_code == 200


def test_a_viewer_sees_but_its_actions_answer_403(app) -> None:  # type: ignore[no-untyped-def]
    client, _ = signed_in(app, "viewer")
    assert client.get("/console/api/jobs").status_code == 200
    token = csrf_of(client) if b'name="csrf"' in client.get("/console/jobs").data else "x"
    for path in ("/console/queues/ocr/pause", "/console/schedules/upload-gc/pause", "/console/bulk"):
        assert client.post(path, data={"csrf": token, "action": "replay", "family": "messages"}).status_code == 403
    assert client.post("/console/api/bulk", json={"action": "replay", "filter": {"family": "messages"}}).status_code == 403


def test_a_form_without_its_csrf_token_is_refused(app) -> None:  # type: ignore[no-untyped-def]
    client, _ = signed_in(app, "operator")
    resp = client.post("/console/bulk", data={"action": "replay", "family": "messages"})
    assert resp.status_code == 400 and b"expired" in resp.data


def test_bulk_dry_run_refusals_and_audit(app) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope
    from app.services.auth import create_api_key

    with session_scope() as session:
        key, _ = create_api_key(session, "console-api")
        client_id = key.client_id
        for _ in range(2):
            dead_message(session, client_id=client_id)
    client, name = signed_in(app, "operator")
    token = csrf_of(client)
    dry = client.post("/console/bulk", data={"csrf": token, "action": "replay", "client_id": str(client_id)})
    assert dry.status_code == 200 and b"replay 2 failed" in dry.data
    empty = client.post("/console/api/bulk", json={"action": "replay", "filter": {}, "dry_run": False},
                        headers={"X-CSRF-Token": token})
    assert empty.status_code == 400 and "empty filter" in empty.get_json()["error"]["message"]
    app.config["SETTINGS"] = app.config["SETTINGS"].model_copy(update={"console_bulk_max": 1})
    broad = client.post("/console/api/bulk", json={"action": "replay", "filter": {"client_id": client_id},
                                                   "dry_run": False}, headers={"X-CSRF-Token": token})
    assert broad.status_code == 400 and "more than 1 jobs (CONSOLE_BULK_MAX)" in broad.get_json()["error"]["message"]
    audit = client.get("/console/api/audit", query_string={"actor": name}).get_json()["items"]
    assert [e["outcome"] for e in audit] == ["refused", "refused"]
    assert all(e["action"] == "bulk.replay" for e in audit)


def test_the_admin_token_reaches_the_json_api_and_it_is_documented(app) -> None:  # type: ignore[no-untyped-def]
    client = app.test_client()
    assert client.get("/console/api/jobs", query_string={"state": "nope"}, headers=ADMIN).status_code == 400
    assert client.get("/console/api/jobs", headers=ADMIN).status_code == 200
    assert client.get("/console/api/jobs").status_code == 401
    paths = client.get("/openapi.json").get_json()["paths"]
    assert {"/console/api/jobs", "/console/api/bulk", "/console/api/queues/{queue}/{action}",
            "/console/api/schedules/{name}/{action}", "/console/api/audit"} <= set(paths)


def test_sign_in_is_rate_limited(pg_database, redis_client) -> None:  # type: ignore[no-untyped-def]
    from app.api import create_app
    from app.settings import get_settings

    app = create_app(get_settings().model_copy(update={"console_login_limit": "3/minute"}))
    client = app.test_client()
    redis_client.delete(*redis_client.keys("rate:*console-login*") or ["none"])
    codes = [client.post("/console/login", data={"name": "x", "password": "y"}).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]


def test_purge_needs_an_admin_and_the_queue_name_typed_again(app, redis_client) -> None:  # type: ignore[no-untyped-def]
    from app.celery_app import celery_app

    for _ in range(3):
        celery_app.send_task("app.tasks.system.ping", queue="gc")  # no worker consumes gc here
    operator_client, _ = signed_in(app, "operator")
    token = csrf_of(operator_client)
    assert operator_client.post("/console/queues/gc/purge", data={"csrf": token, "confirm": "gc"}).status_code == 403
    admin_client, admin = signed_in(app, "admin")
    token = csrf_of(admin_client)
    wrong = admin_client.post("/console/queues/gc/purge", data={"csrf": token, "confirm": "g"})
    assert wrong.status_code == 400 and b"type the queue" in wrong.data
    assert redis_client.llen("gc") == 3
    done = admin_client.post("/console/queues/gc/purge", data={"csrf": token, "confirm": "gc"})
    assert done.status_code == 303 and redis_client.llen("gc") == 0
    audit = admin_client.get("/console/api/audit", query_string={"actor": admin}).get_json()["items"]
    assert [(e["action"], e["outcome"], e["count"]) for e in audit] == [("queue.purge", "ok", 3),
                                                                        ("queue.purge", "refused", None)]
    assert admin_client.post("/console/queues/nope/pause", data={"csrf": token}).status_code == 404


def test_an_admin_manages_operators_and_others_cannot(app) -> None:  # type: ignore[no-untyped-def]
    admin_client, _ = signed_in(app, "admin")
    token = csrf_of(admin_client)
    short = admin_client.post("/console/operators", data={"csrf": token, "name": "new-op", "role": "operator",
                                                          "password": "short"})
    assert short.status_code == 400 and b"at least 12 characters" in short.data
    made = admin_client.post("/console/operators", data={"csrf": token, "name": f"op-{secrets.token_hex(3)}",
                                                         "role": "operator", "password": "a-long-enough-one"})
    assert made.status_code == 303
    operator_client, _ = signed_in(app, "operator")
    assert operator_client.get("/console/operators").status_code == 403


def test_one_failed_message_is_replayed_from_its_page(app) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope
    from app.models.messages import DeadLetter

    with session_scope() as session:
        mid, dl = dead_message(session)
    client, _ = signed_in(app, "operator")
    page = client.get(f"/console/jobs/messages/{mid}").get_data(as_text=True)
    assert 'id="job-replay"' in page
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)  # type: ignore[union-attr]
    dry = client.post("/console/bulk", data={"csrf": token, "action": "replay", "family": "messages", "q": mid})
    assert b"replay 1 failed messages with id" in dry.data
    done = client.post("/console/bulk", data={"csrf": token, "action": "replay", "family": "messages", "q": mid,
                                              "confirm": "yes", "expected": "1"})
    assert b"1 done" in done.data
    with session_scope() as session:
        assert session.get(DeadLetter, dl).replayed_at is not None
        from app.models.outbox import OutboxEvent

        session.query(OutboxEvent).filter(OutboxEvent.aggregate_id == mid).delete()
