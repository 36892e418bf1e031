"""Bad input to the messages API: 400 JSON naming the problem, nothing written."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models.messages import Message
from app.models.outbox import OutboxEvent
from app.services.outbox import task_kwargs


def _counts() -> tuple[int, int]:
    with session_scope() as session:
        return (session.scalar(select(func.count()).select_from(Message)) or 0,
                session.scalar(select(func.count()).select_from(OutboxEvent)) or 0)


GOOD = {"conversation_id": "c", "channel": "whatsapp", "recipient": "+1", "content": "hi"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (GOOD | {"channel": "telegram"}, "channel"),
        (GOOD | {"content": ""}, "content"),
        (GOOD | {"content": "x" * 5000}, "content"),
        ({k: v for k, v in GOOD.items() if k != "recipient"}, "recipient"),
        (GOOD | {"id": "bad id with spaces"}, "id"),
    ],
)
def test_invalid_message_is_400_and_nothing_is_written(api, body, field) -> None:  # type: ignore[no-untyped-def]
    before = _counts()
    resp = api.post("/api/messages", json=body)
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert error["code"] == "validation_error" and field in error["message"]
    assert _counts() == before


def test_malformed_json_is_400_and_nothing_is_written(api) -> None:  # type: ignore[no-untyped-def]
    before = _counts()
    resp = api.post("/api/messages", data='{"channel": "whatsapp",', headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "validation_error"
    assert _counts() == before


def test_messages_need_an_api_key(api) -> None:  # type: ignore[no-untyped-def]
    resp = api.client.post("/api/messages", json=GOOD)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "unauthorized"


def test_accepted_message_writes_message_and_outbox_event_together(api, unique) -> None:  # type: ignore[no-untyped-def]
    resp = api.post("/api/messages", json=GOOD | {"id": f"tx-{unique}"})
    assert resp.status_code == 202
    with session_scope() as session:
        assert session.get(Message, f"tx-{unique}") is not None
        event = session.scalars(select(OutboxEvent).where(OutboxEvent.aggregate_id == f"tx-{unique}")).one()
        assert event.task_name == "app.tasks.messages.route" and task_kwargs(event) == {"message_id": f"tx-{unique}"}
        # Leave nothing for a later test's relay to deliver.
        session.delete(event)
        session.delete(session.get(Message, f"tx-{unique}"))


def test_unknown_message_is_json_404(api) -> None:  # type: ignore[no-untyped-def]
    resp = api.get("/api/messages/nope")
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
