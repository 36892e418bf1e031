"""Voice API in-process against the real PostgreSQL test database (no worker): submission
and its refusals, the remote pull protocol's rules, result validation, admin routes and
the admin page's sign-in, add (token once) and revoke."""

from __future__ import annotations

import io
import re

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models.outbox import OutboxEvent
from app.models.voice import VoiceJob
from app.settings import get_settings
from app.storage import get_storage

GOOD = {"scam_score": 0.93, "risk_level": "CRITICAL", "reasons": ["asks for a one-time code"], "confidence": 0.9}


def _worker(api, name: str = "w") -> tuple[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    resp = api.client.post("/api/admin/workers", json={"name": name}, headers=api.admin)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    return body["id"], {"Authorization": f"Bearer {body['token']}"}


def _drain(api, headers) -> None:  # type: ignore[no-untyped-def]
    # Earlier tests may leave pending remote tasks; take them so `next` sees only ours.
    while api.client.get("/api/v1/worker/tasks/next", headers=headers).status_code == 200:
        pass


def _remote_task(api, transcript: str = "read me the code") -> str:  # type: ignore[no-untyped-def]
    resp = api.post("/api/voice", json={"transcript": transcript, "target": "remote"})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def test_multipart_audio_is_stored_and_queued_through_the_outbox(api) -> None:  # type: ignore[no-untyped-def]
    resp = api.post("/api/voice", data={"audio": (io.BytesIO(b"RIFF-not-really"), "call.wav"),
                                        "transcript": "hello", "metadata": '{"caller": "+1555"}'},
                    content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert body["status"] == "pending" and body["target"] == "celery"
    assert body["status_url"] == f"/api/voice/{body['id']}"
    with session_scope() as session:
        task = session.get(VoiceJob, body["id"])
        assert task is not None and task.meta == {"caller": "+1555"} and task.audio_key == f"voice/{body['id']}/audio"
        event = session.scalars(select(OutboxEvent).where(OutboxEvent.aggregate_id == body["id"])).one()
        assert event.task_name == "app.tasks.voice.score"
    with get_storage(get_settings()).open(task.audio_key) as f:
        assert f.read() == b"RIFF-not-really"
    status = api.get(body["status_url"]).get_json()
    assert status["status"] == "pending" and status["has_audio"] is True and status["result"] is None


@pytest.mark.parametrize("payload,field", [
    ({}, "audio"),
    ({"transcript": "   "}, "audio"),
    ({"storage_key": "voice/none/here"}, "storage_key"),
    ({"storage_key": "../etc"}, "storage_key"),
    ({"audio_url": "ftp://x/y"}, "audio_url"),
    ({"transcript": "x", "target": "elsewhere"}, "target"),
])
def test_bad_submissions_are_400_naming_the_field(api, payload, field) -> None:  # type: ignore[no-untyped-def]
    resp = api.post("/api/voice", json=payload)
    assert resp.status_code == 400, resp.get_json()
    error = resp.get_json()["error"]
    assert error["code"] == "validation_error" and field in error["message"]


def test_bad_metadata_and_unknown_task(api) -> None:  # type: ignore[no-untyped-def]
    resp = api.post("/api/voice", data={"transcript": "x", "metadata": "[1, 2]"}, content_type="multipart/form-data")
    assert resp.status_code == 400 and "metadata" in resp.get_json()["error"]["message"]
    assert api.get("/api/voice/nope").status_code == 404
    assert api.client.get("/api/voice/nope").status_code == 401


def test_pull_claim_status_complete(api) -> None:  # type: ignore[no-untyped-def]
    worker_id, headers = _worker(api)
    _drain(api, headers)
    task_id = _remote_task(api)
    pulled = api.client.get("/api/v1/worker/tasks/next", headers=headers)
    assert pulled.status_code == 200
    body = pulled.get_json()
    assert body["task_id"] == task_id and body["transcript"] == "read me the code" and body["audio_url"] is None
    assert api.client.get("/api/v1/worker/tasks/next", headers=headers).status_code == 204
    resp = api.client.patch(f"/api/v1/worker/tasks/{task_id}/status", json={"status": "processing"}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["status"] == "processing"
    resp = api.client.post(f"/api/v1/worker/tasks/{task_id}/complete", json=GOOD, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["status"] == "completed"
    result = api.get(f"/api/voice/{task_id}").get_json()
    assert result["status"] == "completed" and result["result"]["risk_level"] == "CRITICAL"
    assert result["result"]["scored_by"] == f"remote:{worker_id}"
    listing = api.client.get("/api/admin/workers", headers=api.admin).get_json()
    mine = next(w for w in listing["items"] if w["id"] == worker_id)
    assert mine["tasks_completed"] == 1 and mine["tasks_processed"] == 1 and mine["active"] is True


@pytest.mark.parametrize("bad", [
    GOOD | {"scam_score": 1.5}, GOOD | {"scam_score": -0.1}, GOOD | {"risk_level": "SEVERE"},
    GOOD | {"reasons": "a string"}, GOOD | {"reasons": [1, 2]}, GOOD | {"confidence": 2},
    {k: v for k, v in GOOD.items() if k != "confidence"},
])
def test_bad_results_are_400_json_and_change_nothing(api, bad) -> None:  # type: ignore[no-untyped-def]
    _, headers = _worker(api)
    _drain(api, headers)
    task_id = _remote_task(api)
    assert api.client.get("/api/v1/worker/tasks/next", headers=headers).get_json()["task_id"] == task_id
    resp = api.client.post(f"/api/v1/worker/tasks/{task_id}/complete", json=bad, headers=headers)
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "validation_error"
    assert api.get(f"/api/voice/{task_id}").get_json()["status"] == "claimed"


def test_a_worker_may_only_touch_tasks_it_holds(api) -> None:  # type: ignore[no-untyped-def]
    _, holder = _worker(api, "holder")
    _, other = _worker(api, "other")
    _drain(api, holder)
    task_id = _remote_task(api)
    api.client.get("/api/v1/worker/tasks/next", headers=holder)
    for method, path, body in (("post", "complete", GOOD), ("post", "fail", {"reason": "x"}),
                               ("patch", "status", {"status": "processing"})):
        resp = getattr(api.client, method)(f"/api/v1/worker/tasks/{task_id}/{path}", json=body, headers=other)
        assert resp.status_code == 409, (path, resp.get_json())
        assert resp.get_json()["error"]["code"] == "not_task_holder"
    assert api.client.post("/api/v1/worker/tasks/missing/complete", json=GOOD, headers=holder).status_code == 404


def test_fail_requeues_then_fails_with_the_reason(api) -> None:  # type: ignore[no-untyped-def]
    _, headers = _worker(api)
    _drain(api, headers)
    task_id = _remote_task(api)
    api.client.get("/api/v1/worker/tasks/next", headers=headers)
    resp = api.client.post(f"/api/v1/worker/tasks/{task_id}/fail", json={"reason": "network glitch"}, headers=headers)
    assert resp.get_json()["status"] == "pending"
    api.client.get("/api/v1/worker/tasks/next", headers=headers)
    resp = api.client.post(f"/api/v1/worker/tasks/{task_id}/fail",
                           json={"reason": "silent_audio: the clip is silent", "retryable": False}, headers=headers)
    assert resp.get_json()["status"] == "failed"
    status = api.get(f"/api/voice/{task_id}").get_json()
    assert status["status"] == "failed" and status["error"] == "silent_audio: the clip is silent"
    assert status["attempts"] == 2


def test_tokens_heartbeat_and_revocation(api) -> None:  # type: ignore[no-untyped-def]
    worker_id, headers = _worker(api, "hb")
    resp = api.client.post("/api/v1/worker/heartbeat", json={"worker_id": "host-7", "status": "online"}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["worker"] == worker_id
    listing = api.client.get("/api/admin/workers", headers=api.admin).get_json()
    assert next(w for w in listing["items"] if w["id"] == worker_id)["instance"] == "host-7"
    assert api.client.get("/api/v1/worker/tasks/next", headers=api.headers).status_code == 401  # a client key
    assert api.client.get("/api/v1/worker/tasks/next").status_code == 401
    assert api.client.delete(f"/api/admin/workers/{worker_id}", headers=api.admin).status_code == 204
    resp = api.client.post("/api/v1/worker/heartbeat", json={}, headers=headers)
    assert resp.status_code == 401 and "revoked" in resp.get_json()["error"]["message"]
    assert api.client.delete("/api/admin/workers/rw_none", headers=api.admin).status_code == 404
    assert api.client.get("/api/admin/workers", headers=api.headers).status_code == 401


def test_admin_page_sign_in_add_shows_token_once_and_revoke(api) -> None:  # type: ignore[no-untyped-def]
    c = api.client
    assert 'id="admin-token"' in c.get("/admin/workers").get_data(as_text=True)
    assert c.post("/admin/login", data={"token": "wrong"}).status_code == 401
    resp = c.post("/admin/login", data={"token": "test-admin-token"})
    assert resp.status_code == 303 and "HttpOnly" in resp.headers["Set-Cookie"]
    page = c.get("/admin/workers").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    assert c.post("/admin/workers", data={"name": "page-worker"}).status_code == 400  # no CSRF token
    resp = c.post("/admin/workers", data={"name": "page-worker", "csrf": csrf})
    assert resp.status_code == 201
    html = resp.get_data(as_text=True)
    token = re.search(r'<code id="new-token">([^<]+)</code>', html).group(1)  # type: ignore[union-attr]
    worker_id = re.search(r'data-worker-id="(rw_[0-9a-f]+)"', html).group(1)  # type: ignore[union-attr]
    assert token not in c.get("/admin/workers").get_data(as_text=True)  # shown once
    hb = c.post("/api/v1/worker/heartbeat", json={}, headers={"Authorization": f"Bearer {token}"})
    assert hb.status_code == 200
    resp = c.post(f"/admin/workers/{worker_id}/revoke", data={"csrf": csrf})
    assert resp.status_code == 303
    hb = c.post("/api/v1/worker/heartbeat", json={}, headers={"Authorization": f"Bearer {token}"})
    assert hb.status_code == 401
