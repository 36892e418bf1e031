"""Clients see only their own work: every route that reads, lists or acts on an object.

The test walks the application's URL map. Each route is either a case below (client A
makes the object, client B is answered 404 exactly like for a missing object or does not
find it in the list, A and the admin credential reach it) or listed as not owning an
object, with the reason. A new route that is neither fails the test.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.security.test_route_protection import PUBLIC, PUBLIC_PREFIXES, _routes

ADMIN = {"Authorization": "Bearer test-admin-token"}

def _console_routes() -> list[tuple[str, str]]:
    return [(m, r) for m, r in _routes() if r.startswith("/console") and r not in PUBLIC]


#: Routes that create an object, or belong to another actor, with why they are not cases.
NOT_OWNED = {
    ("POST", "/api/scans"): "creates a scan (owner recorded: checked by the reads below)",
    ("POST", "/api/uploads"): "creates an upload",
    ("POST", "/api/voice"): "creates a voice task (a storage_key it names is checked below)",
    ("POST", "/api/messages"): "creates a message (ids per client: checked below)",
    ("POST", "/api/messages/batch"): "creates messages (ids per client: tests/unit/test_messages_batch.py)",
    ("POST", "/api/files"): "creates a file",
    ("POST", "/api/tenants"): "creates a tenant",
    ("POST", "/api/leads"): "creates a lead (its tenant_id is checked below)",
    ("POST", "/api/campaigns"): "creates a campaign (its tenant_id is checked below)",
    ("POST", "/api/calls"): "creates a call (its tenant_id and lead_id are checked below)",
    ("GET", "/api/me"): "the caller's own key",
    ("GET", "/api/schedules"): "admin credential only: the beat jobs serve every client",
    ("GET", "/api/admin/api-keys"): "admin credential only",
    ("POST", "/api/admin/api-keys"): "admin credential only",
    ("DELETE", "/api/admin/api-keys/<int(max=2147483647):key_id>"): "admin credential only",
    ("GET", "/api/admin/outbox"): "admin credential only",
    ("POST", "/api/admin/outbox/<int(max=9223372036854775807):event_id>/replay"): "admin credential only",
    ("GET", "/api/admin/workers"): "admin credential only",
    ("POST", "/api/admin/workers"): "admin credential only",
    ("DELETE", "/api/admin/workers/<worker_id>"): "admin credential only",
    ("GET", "/api/v1/worker/tasks/next"): "remote voice workers: only the tasks they hold (test_voice_remote.py)",
    ("PATCH", "/api/v1/worker/tasks/<task_id>/status"): "remote voice workers: only the tasks they hold",
    ("POST", "/api/v1/worker/tasks/<task_id>/complete"): "remote voice workers: only the tasks they hold",
    ("POST", "/api/v1/worker/tasks/<task_id>/fail"): "remote voice workers: only the tasks they hold",
    ("POST", "/api/v1/worker/heartbeat"): "remote voice workers",
    ("GET", "/admin/workers"): "the admin page (signed-in operators)",
    ("POST", "/admin/workers"): "the admin page (signed-in operators)",
    ("POST", "/admin/workers/<worker_id>/revoke"): "the admin page (signed-in operators)",
    **{(m, r): "the operator console: operators and ADMIN_TOKEN only, every client's work by design (tests/console)"
       for m, r in _console_routes()},
}


@dataclass
class Case:
    """One route on one of A's objects: ``path`` has the object's id; ``kwargs`` the request."""

    path: str
    ident: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    listed: str | None = None  # for a list route: the id that must (not) appear in it


def _key(name: str) -> dict[str, str]:
    from app.db import session_scope
    from app.services.auth import create_api_key

    with session_scope() as session:
        _, token = create_api_key(session, name)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def two_clients(pg_database):  # type: ignore[no-untyped-def]
    from app.api import create_app
    from app.settings import get_settings

    app = create_app(get_settings())
    u = uuid.uuid4().hex[:8]
    return app.test_client(), _key(f"client-a-{u}"), _key(f"client-b-{u}")


def _ok(resp, status: int | tuple[int, ...] = 200):  # type: ignore[no-untyped-def]
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.get_json())
    return resp.get_json()


def _objects_of(client, a: dict[str, str]) -> dict[tuple[str, str], Case]:  # type: ignore[no-untyped-def]
    """Make one object of every family as client A; the case of every route on it."""
    from app.db import session_scope
    from app.models.messages import DeadLetter, Message

    scan = _ok(client.post("/api/scans", json={"url": "http://example.com/a?token=secret"}, headers=a), 202)["id"]
    upload = _ok(client.post("/api/uploads", headers=a, data={
        "file": (io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "card.png")}), 201)["id"]
    voice = _ok(client.post("/api/voice", json={"transcript": "hello, this is your bank", "target": "remote"},
                            headers=a), 202)["id"]
    ref = f"msg-{uuid.uuid4().hex[:8]}"
    _ok(client.post("/api/messages", json={"id": ref, "conversation_id": "c", "channel": "whatsapp",
                                           "recipient": "u1", "content": "private words"}, headers=a), 202)
    file = _ok(client.post("/api/files", json={"filename": "a.bin", "size": 10}, headers=a), 201)["id"]
    tenant = _ok(client.post("/api/tenants", json={"name": "a's tenant", "plan": "paid"}, headers=a), 201)["id"]
    lead = _ok(client.post("/api/leads", json={"tenant_id": tenant, "name": "Ann", "email": "ann@example.com",
                                                "phone": "+15551234567"}, headers=a), 201)["id"]
    campaign = _ok(client.post("/api/campaigns", json={
        "tenant_id": tenant, "channel": "email", "template": "hi", "recipients": ["x@example.com"],
        "scheduled_at": "2099-01-01T00:00:00Z"}, headers=a), 201)["id"]
    call = _ok(client.post("/api/calls", json={"tenant_id": tenant, "lead_id": lead,
                                                "scheduled_for": "2099-01-01T00:00:00Z"}, headers=a), 201)["id"]
    with session_scope() as session:
        message = session.query(Message).filter_by(client_ref=ref).one()
        dead = DeadLetter(message_id=message.id, channel="whatsapp", error="HTTP 400", error_kind="permanent",
                          attempts=1, client_id=message.client_id)
        session.add(dead)
        session.flush()
        dead_id = str(dead.id)
    return {
        ("GET", "/api/scans/<scan_id>"): Case(f"/api/scans/{scan}", scan),
        ("GET", "/api/scans"): Case("/api/scans?per_page=500", scan, listed=scan),
        ("GET", "/api/uploads/<upload_id>/status"): Case(f"/api/uploads/{upload}/status", upload),
        ("POST", "/api/uploads/<upload_id>/complete"): Case(f"/api/uploads/{upload}/complete", upload),
        ("GET", "/api/voice/<task_id>"): Case(f"/api/voice/{voice}", voice),
        ("GET", "/api/messages/<message_id>"): Case(f"/api/messages/{ref}", ref),
        ("GET", "/api/files/<file_id>"): Case(f"/api/files/{file}", file),
        ("PUT", "/api/files/<file_id>/chunks/<int(signed=True):index>"): Case(
            f"/api/files/{file}/chunks/0", file, {"data": b"0123456789"}),
        ("POST", "/api/files/<file_id>/complete"): Case(f"/api/files/{file}/complete", file),
        ("GET", "/api/tenants/<tenant_id>"): Case(f"/api/tenants/{tenant}", str(tenant)),
        ("GET", "/api/leads/<lead_id>"): Case(f"/api/leads/{lead}", str(lead)),
        ("GET", "/api/campaigns/<campaign_id>"): Case(
            f"/api/campaigns/{campaign}", str(campaign)),
        ("GET", "/api/calls/<call_id>"): Case(f"/api/calls/{call}", str(call)),
        ("GET", "/api/dlq"): Case("/api/dlq?per_page=500", dead_id, listed=dead_id),
        ("POST", "/api/dlq/<int(max=9223372036854775807):dead_letter_id>/replay"): Case(
            f"/api/dlq/{dead_id}/replay", dead_id),
    }


def _missing_twin(case: Case) -> str:
    """The same route on an id nobody has."""
    fake = "987654321987" if case.ident.isdigit() else uuid.uuid4().hex
    return case.path.replace(case.ident, fake), fake  # type: ignore[return-value]


def _ids(body: dict[str, Any]) -> set[str]:
    return {str(item["id"]) for item in body["items"]}


def test_every_route_on_an_object_is_scoped_to_its_client(two_clients) -> None:  # type: ignore[no-untyped-def]
    client, a, b = two_clients
    cases = _objects_of(client, a)
    routes = [(m, r) for m, r in _routes() if r not in PUBLIC and not r.startswith(PUBLIC_PREFIXES)]
    uncovered = [mr for mr in routes if mr not in cases and mr not in NOT_OWNED]
    assert not uncovered, f"routes neither scoped by a case here nor listed in NOT_OWNED: {uncovered}"
    assert len(cases) >= 15

    for (method, _rule), case in cases.items():
        if case.listed is not None:  # a list: B does not see A's row, A and the admin do
            assert case.listed not in _ids(_ok(client.open(case.path, method=method, headers=b)))
            assert case.listed in _ids(_ok(client.open(case.path, method=method, headers=a)))
            assert case.listed in _ids(_ok(client.open(case.path, method=method, headers=ADMIN)))
            continue
        foreign = client.open(case.path, method=method, headers=b, **case.kwargs)
        twin_path, fake = _missing_twin(case)
        missing = client.open(twin_path, method=method, headers=b, **case.kwargs)
        assert foreign.status_code == 404, (method, case.path, foreign.status_code, foreign.get_json())
        # No existence oracle: the very body of a missing object, but for the id itself.
        assert foreign.get_json() == _replace(missing.get_json(), fake, case.ident), (method, case.path)
        mine = client.open(case.path, method=method, headers=a, **case.kwargs)
        assert mine.status_code < 400 or mine.status_code == 409, (method, case.path, mine.get_json())
        admin = client.open(case.path, method=method, headers=ADMIN, **case.kwargs)
        assert admin.status_code != 404, (method, case.path, admin.get_json())


def _replace(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _replace(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, old, new) for v in value]
    return value.replace(old, new) if isinstance(value, str) else value


def test_admin_lists_every_client_and_filters_by_one(two_clients) -> None:  # type: ignore[no-untyped-def]
    client, a, b = two_clients
    scan_a = _ok(client.post("/api/scans", json={"url": "http://example.com/a"}, headers=a), 202)["id"]
    scan_b = _ok(client.post("/api/scans", json={"url": "http://example.com/b"}, headers=b), 202)["id"]
    client_b = _ok(client.get("/api/me", headers=b))["client_id"]
    everything = _ids(_ok(client.get("/api/scans?per_page=500", headers=ADMIN)))
    assert {scan_a, scan_b} <= everything
    only_b = _ids(_ok(client.get(f"/api/scans?per_page=500&client_id={client_b}", headers=ADMIN)))
    assert scan_b in only_b and scan_a not in only_b


def test_objects_named_in_a_request_must_be_the_callers(two_clients) -> None:  # type: ignore[no-untyped-def]
    """B cannot hang a lead, campaign or call on A's tenant or lead, nor score A's stored clip:
    each is answered exactly like a reference to nothing."""
    client, a, b = two_clients
    tenant = _ok(client.post("/api/tenants", json={"name": "a", "plan": "paid"}, headers=a), 201)["id"]
    lead = _ok(client.post("/api/leads", json={"tenant_id": tenant, "name": "Ann", "phone": "+15551234567"},
                           headers=a), 201)["id"]
    own_tenant = _ok(client.post("/api/tenants", json={"name": "b", "plan": "paid"}, headers=b), 201)["id"]
    nobody = "0" * 32

    def same_as_missing(path: str, body: dict[str, Any], key: str, real: str, fake: str) -> None:
        foreign = client.post(path, json=body | {key: real}, headers=b)
        missing = client.post(path, json=body | {key: fake}, headers=b)
        assert foreign.status_code == 400, foreign.get_json()
        assert foreign.get_json() == _replace(missing.get_json(), str(fake), str(real))

    same_as_missing("/api/leads", {"name": "x"}, "tenant_id", tenant, nobody)
    same_as_missing("/api/campaigns", {"channel": "email", "template": "t", "recipients": ["v@example.com"]},
                    "tenant_id", tenant, nobody)
    same_as_missing("/api/calls", {"lead_id": lead}, "tenant_id", tenant, nobody)
    same_as_missing("/api/calls", {"tenant_id": own_tenant}, "lead_id", lead, nobody)

    # A stored clip of A's (a voice task's audio) as B's storage_key: refused like a missing key.
    from app.db import session_scope
    from app.models.voice import VoiceJob

    voice = _ok(client.post("/api/voice", headers=a, data={"audio": (io.BytesIO(b"RIFF-clip"), "call.wav"),
                                                            "target": "remote"}), 202)["id"]
    with session_scope() as session:
        key = session.get(VoiceJob, voice).audio_key
    foreign = client.post("/api/voice", json={"storage_key": key, "target": "remote"}, headers=b)
    missing = client.post("/api/voice", json={"storage_key": key.replace(voice, "0" * 32), "target": "remote"},
                          headers=b)
    assert foreign.status_code == 400 and "storage_key" in foreign.get_json()["error"]["message"]
    assert foreign.get_json() == _replace(missing.get_json(), "0" * 32, voice)
    assert client.post("/api/voice", json={"storage_key": key, "target": "remote"}, headers=a).status_code == 202
    # Nor any other object of the store (an OCR original), even for its owner.
    upload = _ok(client.post("/api/uploads", headers=a, data={
        "file": (io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "card.png")}), 201)["id"]
    from app.models.ocr import Upload

    with session_scope() as session:
        original = session.get(Upload, upload).storage_key
    assert client.post("/api/voice", json={"storage_key": original}, headers=b).status_code == 400
    assert client.post("/api/voice", json={"storage_key": original}, headers=a).status_code == 400


def test_message_ids_are_per_client(two_clients) -> None:  # type: ignore[no-untyped-def]
    client, a, b = two_clients
    ref = f"order-{uuid.uuid4().hex[:8]}"
    body = {"id": ref, "conversation_id": "c", "channel": "whatsapp", "recipient": "u1", "content": "from A"}
    first = _ok(client.post("/api/messages", json=body, headers=a), 202)
    assert first["duplicate"] is False
    # B reusing A's id gets its own new message: not A's, not a duplicate, not a conflict.
    other = _ok(client.post("/api/messages", json=body | {"content": "from B", "recipient": "u2"}, headers=b), 202)
    assert other["duplicate"] is False and other["id"] == ref
    assert _ok(client.get(f"/api/messages/{ref}", headers=a))["content"] == "from A"
    assert _ok(client.get(f"/api/messages/{ref}", headers=b))["content"] == "from B"
    # Each client's own resend is its duplicate.
    assert _ok(client.post("/api/messages", json=body, headers=a), 202)["duplicate"] is True
    # The system's own message ids are out of every client's reach.
    reserved = client.post("/api/messages", json=body | {"id": "sys:campaign-1-1"}, headers=a)
    assert reserved.status_code == 400 and "reserved" in str(reserved.get_json()["error"])
