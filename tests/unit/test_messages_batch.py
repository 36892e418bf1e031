"""``POST /api/messages/batch`` through the real API: per-item validation errors and
duplicates, one transaction, ownership, the batch size cap and the rate limit counting
each item; the key cache and its revocation bound."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.api import create_app
from app.api.limits import reset_limiter
from app.db import session_scope
from app.models.messages import Message, MessageDelivery, MessageStatusUpdate
from app.models.outbox import OutboxEvent
from app.services.auth import KEY_CACHE, create_api_key
from app.settings import get_settings

GOOD = {"conversation_id": "c", "channel": "whatsapp", "recipient": "+1", "content": "hi"}


@pytest.fixture(autouse=True)
def _fresh_limiter() -> Iterator[None]:
    reset_limiter()
    yield
    reset_limiter()


def _client() -> tuple[int, dict[str, str]]:
    with session_scope() as session:
        key, token = create_api_key(session, f"batch-{secrets.token_hex(3)}")
        return key.client_id, {"Authorization": f"Bearer {token}"}


def _app(**update: object) -> Flask:
    return create_app(get_settings().model_copy(update=update))


def _rows(client_id: int) -> dict[str, int]:
    with session_scope() as session:
        ids = list(session.scalars(select(Message.id).where(Message.client_id == client_id)))
        return {
            "messages": len(ids),
            "deliveries": session.scalar(select(func.count()).select_from(MessageDelivery)
                                         .where(MessageDelivery.message_id.in_(ids))) or 0,
            "history": session.scalar(select(func.count()).select_from(MessageStatusUpdate)
                                      .where(MessageStatusUpdate.message_id.in_(ids))) or 0,
            "events": session.scalar(select(func.count()).select_from(OutboxEvent)
                                     .where(OutboxEvent.aggregate_id.in_(ids))) or 0,
        }


def test_a_batch_answers_each_item_in_its_place(pg_database) -> None:  # type: ignore[no-untyped-def]
    client_id, headers = _client()
    http = _app().test_client()
    assert http.post("/api/messages", json=GOOD | {"id": "sent-before"}, headers=headers).status_code == 202
    items = [
        GOOD | {"id": "b-1"},
        GOOD | {"id": "b-2", "channel": "all"},
        GOOD | {"id": "b-3", "channel": "telegram"},           # invalid channel
        GOOD | {"id": "b-4", "content": "x" * 5000},           # over MESSAGE_MAX_LENGTH
        GOOD | {"id": "sent-before"},                           # duplicate of a stored message
        GOOD | {"id": "sent-before", "content": "other"},       # conflict with a stored message
        GOOD | {"id": "b-1"},                                   # duplicate within the batch
        GOOD | {"id": "b-2", "content": "changed"},             # conflict within the batch
        GOOD | {"id": "sys:forged"},                            # reserved id
        GOOD,                                                   # no id: the server picks one
        "not an object",
    ]
    resp = http.post("/api/messages/batch", json={"items": items}, headers=headers)
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    answers = body["items"]
    assert [a["index"] for a in answers] == list(range(len(items)))
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (3, 2, 6)
    assert [a["status"] for a in answers[:2]] == ["queued", "queued"] and not answers[0]["duplicate"]
    assert answers[0]["status_url"] == "/api/messages/b-1"
    assert answers[2]["error"]["code"] == "validation_error" and "channel" in answers[2]["error"]["message"]
    assert answers[3]["error"]["details"][0]["type"] == "string_too_long"
    assert answers[4]["duplicate"] and answers[4]["error"] is None
    assert answers[5]["error"]["code"] == "conflict" and answers[5]["status"] == "rejected"
    assert answers[6]["duplicate"] and answers[6]["id"] == "b-1"
    assert answers[7]["error"]["code"] == "conflict"
    assert answers[8]["error"]["code"] == "validation_error"
    assert answers[9]["id"] and not answers[9]["duplicate"]
    assert answers[10]["error"]["code"] == "validation_error"
    # 4 messages in all (the one before, b-1, b-2, the one without id), each with its
    # deliveries (b-2 on both channels), its first status row and one outbox event.
    assert _rows(client_id) == {"messages": 4, "deliveries": 5, "history": 4, "events": 4}
    assert http.get("/api/messages/b-2", headers=headers).get_json()["deliveries"][1]["channel"] == "whatsapp"


def test_the_same_batch_again_is_all_duplicates_and_writes_nothing(pg_database) -> None:  # type: ignore[no-untyped-def]
    client_id, headers = _client()
    http = _app().test_client()
    items = [GOOD | {"id": f"again-{i}", "content": f"hi {i}"} for i in range(50)]
    first = http.post("/api/messages/batch", json={"items": items}, headers=headers).get_json()
    assert first["accepted"] == 50
    before = _rows(client_id)
    second = http.post("/api/messages/batch", json={"items": items}, headers=headers).get_json()
    assert (second["accepted"], second["duplicates"]) == (0, 50)
    assert [a["id"] for a in second["items"]] == [f"again-{i}" for i in range(50)]
    assert _rows(client_id) == before
    # The single endpoint sees the same idempotency.
    single = http.post("/api/messages", json=items[7], headers=headers).get_json()
    assert single["duplicate"] is True


def test_ids_are_per_client_in_a_batch(pg_database) -> None:  # type: ignore[no-untyped-def]
    a_id, a = _client()
    b_id, b = _client()
    http = _app().test_client()
    mine = GOOD | {"id": "shared-id", "content": "from a"}
    assert http.post("/api/messages/batch", json={"items": [mine]}, headers=a).get_json()["accepted"] == 1
    # Another client's message of the same id is a new message of b's, not a duplicate or a conflict.
    theirs = http.post("/api/messages/batch", json={"items": [GOOD | {"id": "shared-id", "content": "from b"}]},
                       headers=b).get_json()
    assert theirs["accepted"] == 1 and theirs["items"][0]["error"] is None
    assert http.get("/api/messages/shared-id", headers=a).get_json()["content"] == "from a"
    assert http.get("/api/messages/shared-id", headers=b).get_json()["content"] == "from b"
    assert _rows(a_id)["messages"] == 1 and _rows(b_id)["messages"] == 1


def test_a_batch_needs_a_key_and_a_valid_envelope(pg_database) -> None:  # type: ignore[no-untyped-def]
    _, headers = _client()
    http = _app(messages_batch_max=3).test_client()
    assert http.post("/api/messages/batch", json={"items": [GOOD]}).status_code == 401
    for body, field in (({"items": []}, "items"), ({}, "items"), ({"items": "x"}, "items")):
        resp = http.post("/api/messages/batch", json=body, headers=headers)
        assert resp.status_code == 400 and field in resp.get_json()["error"]["message"], body
    resp = http.post("/api/messages/batch", json={"items": [GOOD] * 4}, headers=headers)
    assert resp.status_code == 400 and "at most 3 items" in resp.get_json()["error"]["message"]


def test_a_batch_counts_each_item_against_the_rate_limit(pg_database, redis_client) -> None:  # type: ignore[no-untyped-def]
    client_id, headers = _client()
    for key in redis_client.scan_iter(match=f"rate:LIMITER/*/{client_id}/*"):
        redis_client.delete(key)
    http = _app(rate_limit_default="10/minute").test_client()
    ok = http.post("/api/messages/batch", json={"items": [GOOD] * 6}, headers=headers)
    assert ok.status_code == 202 and ok.headers["RateLimit-Remaining"] == "4"
    refused = http.post("/api/messages/batch", json={"items": [GOOD] * 6}, headers=headers)
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "rate_limited"
    assert "Retry-After" in refused.headers
    assert _rows(client_id)["messages"] == 6  # the refused batch wrote nothing


def test_the_openapi_document_describes_the_batch(pg_database) -> None:  # type: ignore[no-untyped-def]
    doc = _app().test_client().get("/openapi.json").get_json()
    operation = doc["paths"]["/api/messages/batch"]["post"]
    assert {"202", "400", "401", "429"} <= set(operation["responses"])


def test_a_verified_key_is_reused_and_a_revoked_one_refused_within_the_cache_time(pg_database) -> None:  # type: ignore[no-untyped-def]
    from app.models.auth import ApiKey
    from app.models.base import utcnow

    _, headers = _client()
    http = _app(auth_key_cache_seconds=0.5).test_client()
    assert http.get("/api/me", headers=headers).status_code == 200
    # Revoked behind the API's back (another process, the CLI): refused once the entry ages out.
    with session_scope() as session:
        key = session.scalars(select(ApiKey).order_by(ApiKey.id.desc())).first()
        assert key is not None
        key.revoked_at = utcnow()
    assert http.get("/api/me", headers=headers).status_code == 200  # still cached
    import time

    time.sleep(0.6)
    assert http.get("/api/me", headers=headers).status_code == 401
    KEY_CACHE.clear()
