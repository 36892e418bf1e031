"""The scans API: validation with JSON errors, the job and its outbox event in one
transaction, reading a scan with its audit trail, listing by state."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models.outbox import OutboxEvent
from app.models.scans import ScanJob
from app.services.scans import transition
from tests.scans_support import clean_scan_tables  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("clean_scan_tables")


def _count_jobs() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(ScanJob)) or 0)


@pytest.mark.parametrize(("payload", "needle"), [
    ({"url": "ftp://example.com/file.txt"}, "scheme ftp: is not allowed"),
    ({"url": "file:///etc/passwd"}, "scheme file: is not allowed"),
    ({"url": "http:///no-host"}, "no host"),
    ({"url": "https://"}, "no host"),
    ({"url": "http://example.com/" + "a" * 4981}, "url"),  # 5000 characters
    ({"url": "http://admin:secret@example.com/"}, "user information"),
    ({"url": "gopher://example.com/"}, "only http and https"),
    ({"url": ""}, "url"),
    ({"link": "http://example.com/"}, "url"),
    ({"url": 42}, "url"),
])
def test_bad_urls_are_refused_with_400_json(api, payload: dict, needle: str) -> None:  # type: ignore[no-untyped-def]
    before = _count_jobs()
    resp = api.post("/api/scans", json=payload)
    assert resp.status_code == 400 and resp.is_json
    error = resp.get_json()["error"]
    assert error["code"] == "validation_error" and needle in error["message"]
    assert error["details"] and error["details"][0]["loc"][-1] == "url"
    assert _count_jobs() == before


def test_five_thousand_character_url_names_the_limit(api) -> None:  # type: ignore[no-untyped-def]
    resp = api.post("/api/scans", json={"url": "http://example.com/" + "a" * 4981})
    details = resp.get_json()["error"]["details"]
    assert resp.status_code == 400 and "2048" in details[0]["msg"]


def test_malformed_json_and_missing_auth(api) -> None:  # type: ignore[no-untyped-def]
    resp = api.post("/api/scans", data="{nope", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "validation_error"
    resp = api.client.post("/api/scans", json={"url": "http://example.com/"})
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "unauthorized"


def test_submit_then_read_the_scan(api) -> None:  # type: ignore[no-untyped-def]
    resp = api.post("/api/scans", json={"url": "https://scan-target.invalid/a?b=1"})
    assert resp.status_code == 202
    body = resp.get_json()
    scan_id = body["id"]
    assert body == {"id": scan_id, "state": "QUEUED", "status_url": f"/api/scans/{scan_id}"}
    with session_scope() as session:
        event = session.scalars(select(OutboxEvent).where(OutboxEvent.aggregate_id == scan_id)).one()
        assert event.task_name == "app.tasks.scans.run" and event.payload["scan_id"] == scan_id
        assert event.published_at is None  # the API never calls the broker; the relay does

    scan = api.get(f"/api/scans/{scan_id}").get_json()
    assert scan["url"] == "https://scan-target.invalid/a?b=1" and scan["state"] == "QUEUED" and scan["result"] is None
    assert [(a["from_state"], a["to_state"], a["worker"]) for a in scan["audit"]] == [(None, "QUEUED", "api")]

    with session_scope() as session:
        transition(session, scan_id, from_state="QUEUED", to_state="FAILED", version=1, worker="w",
                   detail="because", values={"error": "because"})
    scan = api.get(f"/api/scans/{scan_id}").get_json()
    assert scan["state"] == "FAILED" and scan["error"] == "because" and scan["version"] == 2
    assert scan["audit"][-1]["detail"] == "because" and scan["finished_at"] is not None


def test_unknown_scan_is_404(api) -> None:  # type: ignore[no-untyped-def]
    resp = api.get("/api/scans/doesnotexist")
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"


def test_list_filters_by_state_and_paginates(api) -> None:  # type: ignore[no-untyped-def]
    ids = [api.post("/api/scans", json={"url": f"http://scan-target.invalid/{i}"}).get_json()["id"] for i in range(3)]
    with session_scope() as session:
        transition(session, ids[0], from_state="QUEUED", to_state="FETCHING", version=1, worker="w")
    fetching = api.get("/api/scans?state=fetching").get_json()
    assert [item["id"] for item in fetching["items"]] == [ids[0]] and fetching["total"] == 1
    queued = api.get("/api/scans?state=QUEUED&per_page=1&page=1").get_json()
    assert len(queued["items"]) == 1 and queued["total"] == 2 and queued["per_page"] == 1
    assert queued["items"][0]["id"] == ids[2]  # newest first
    page2 = api.get("/api/scans?state=QUEUED&per_page=1&page=2").get_json()
    assert page2["items"][0]["id"] == ids[1]
    assert page2["items"][0]["status_url"] == f"/api/scans/{ids[1]}"
    everything = api.get("/api/scans").get_json()
    assert everything["total"] == 3 and [i["id"] for i in everything["items"]] == ids[::-1]
    bad = api.get("/api/scans?state=DONE")
    assert bad.status_code == 400 and "unknown state" in str(bad.get_json()["error"]["details"])


def test_openapi_documents_the_routes(api) -> None:  # type: ignore[no-untyped-def]
    doc = api.client.get("/openapi.json").get_json()
    assert {"/api/scans", "/api/scans/{scan_id}"} <= set(doc["paths"])
    assert "202" in doc["paths"]["/api/scans"]["post"]["responses"]


def test_disabled_scans_answer_503(api) -> None:  # type: ignore[no-untyped-def]
    from app.api import create_app
    from app.settings import get_settings

    good = get_settings()
    try:
        client = create_app(good.model_copy(update={"enable_scans": False})).test_client()
        resp = client.post("/api/scans", json={"url": "http://example.com/"}, headers=api.headers)
        assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "scans_disabled"
    finally:
        create_app(good)
