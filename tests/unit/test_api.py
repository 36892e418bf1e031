"""API core: JSON errors everywhere, validation from schemas, OpenAPI, auth, health."""

from __future__ import annotations

import pytest

from app.api import create_app
from app.settings import get_settings


@pytest.fixture
def client(pg_database):  # type: ignore[no-untyped-def]
    app = create_app(get_settings())
    return app.test_client()


ADMIN = {"Authorization": "Bearer test-admin-token"}


def _is_json_error(resp, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.data
    assert resp.is_json, resp.data[:200]
    body = resp.get_json()["error"]
    assert set(body) == {"code", "message", "details"} and body["message"]
    if code:
        assert body["code"] == code
    return body


def test_unknown_route_is_json_404(client) -> None:  # type: ignore[no-untyped-def]
    _is_json_error(client.get("/nope"), 404, "not_found")


def test_wrong_method_is_json_405(client) -> None:  # type: ignore[no-untyped-def]
    _is_json_error(client.delete("/health"), 405)


def test_malformed_json_is_json_400_naming_the_problem(client) -> None:  # type: ignore[no-untyped-def]
    resp = client.post("/api/admin/api-keys", data="{not json", headers=ADMIN | {"Content-Type": "application/json"})
    _is_json_error(resp, 400, "validation_error")


def test_schema_violation_names_the_field(client) -> None:  # type: ignore[no-untyped-def]
    body = _is_json_error(client.post("/api/admin/api-keys", json={"name": ""}, headers=ADMIN), 400, "validation_error")
    assert "name" in body["message"]
    assert body["details"][0]["loc"][-1] == "name"


def test_api_key_lifecycle(client, db_session) -> None:  # type: ignore[no-untyped-def]
    from app.models import ApiKey

    _is_json_error(client.post("/api/admin/api-keys", json={"name": "x"}), 401, "unauthorized")
    _is_json_error(client.post("/api/admin/api-keys", json={"name": "x"}, headers={"Authorization": "Bearer wrong"}), 401)

    created = client.post("/api/admin/api-keys", json={"name": "ci client"}, headers=ADMIN)
    assert created.status_code == 201
    key = created.get_json()["key"]
    row = db_session.get(ApiKey, created.get_json()["id"])
    assert row is not None and row.key_hash != key and key not in row.key_hash  # only the hash is stored

    me = client.get("/api/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200 and me.get_json()["name"] == "ci client"
    _is_json_error(client.get("/api/me"), 401)
    _is_json_error(client.get("/api/me", headers={"Authorization": "Bearer ak_forged"}), 401)

    assert client.delete(f"/api/admin/api-keys/{row.id}", headers=ADMIN).status_code == 204
    _is_json_error(client.get("/api/me", headers={"Authorization": f"Bearer {key}"}), 401)
    _is_json_error(client.delete("/api/admin/api-keys/999999", headers=ADMIN), 404)


def test_admin_routes_closed_without_admin_token(pg_database) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings().model_copy(update={"admin_token": type(get_settings().admin_token)("")})
    client = create_app(settings).test_client()
    try:
        _is_json_error(client.get("/api/admin/api-keys", headers=ADMIN), 403, "admin_disabled")
    finally:
        create_app(get_settings().model_copy(update={"admin_token": type(settings.admin_token)("test-admin-token")}))


def test_openapi_document_lists_routes_and_schemas(client) -> None:  # type: ignore[no-untyped-def]
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    assert {"/health", "/api/admin/api-keys", "/api/me"} <= set(doc["paths"])
    post = doc["paths"]["/api/admin/api-keys"]["post"]
    assert "requestBody" in post and "201" in post["responses"]
    assert "bearer" in doc["components"]["securitySchemes"]


def test_health_lists_each_dependency(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    resp = client.get("/health", headers={"Authorization": "Bearer test-admin-token"})
    body = resp.get_json()
    names = {d["name"]: d for d in body["dependencies"]}
    assert {"database", "broker", "redis", "storage"} <= set(names)
    assert resp.status_code == 200 and body["status"] == "ok"
    assert all(isinstance(d["latency_ms"], float) for d in names.values())


def test_health_is_503_when_a_required_dependency_is_down(pg_database) -> None:  # type: ignore[no-untyped-def]
    good = get_settings()
    bad = good.model_copy(update={"redis_url": "redis://127.0.0.1:1/0", "broker_url": "redis://127.0.0.1:1/0", "health_timeout": 1.0})
    try:
        resp = create_app(bad).test_client().get("/health", headers={"Authorization": "Bearer test-admin-token"})
        body = resp.get_json()
        assert resp.status_code == 503 and body["status"] == "degraded"
        down = {d["name"] for d in body["dependencies"] if d["status"] == "down"}
        assert {"redis", "broker"} <= down and "database" not in down
    finally:
        create_app(good)


def test_an_unreachable_database_is_a_json_503_with_retry_after(pg_database) -> None:  # type: ignore[no-untyped-def]
    good = get_settings()
    # Nothing listens on port 1: every connection attempt fails at once.
    bad = good.model_copy(update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none"})
    try:
        resp = create_app(bad).test_client().get("/api/scans/x", headers={"Authorization": "Bearer ak_any"})
        assert resp.status_code == 503, resp.get_data(as_text=True)
        assert resp.get_json()["error"]["code"] == "database_unavailable"
        assert resp.headers["Retry-After"] == "5"
    finally:
        create_app(good)
