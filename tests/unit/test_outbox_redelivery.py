"""Outbox redelivery on PostgreSQL and SQLite: a published event whose task no worker
started is made due again after OUTBOX_REDELIVER_AFTER; a started one never is; a task
whose retry the broker could not take is handed back to its event."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from app.models.base import utcnow
from app.models.outbox import OutboxEvent
from app.services.outbox import (
    add_event,
    claim_due,
    event_id_for,
    hand_back,
    mark_consumed,
    redeliver_unconsumed,
    relay_batch,
    task_kwargs,
)
from app.tracing import TRACE_KEY
from tests.unit.test_outbox_service import session  # noqa: F401  (fixture: both databases)


def _published(session: Session, n: int) -> list[OutboxEvent]:
    events = [add_event(session, aggregate_type="t", aggregate_id=str(i), event_type="e", task_name="x.y",
                        payload={"i": i}) for i in range(n)]
    session.commit()
    relay_batch(session, lambda e: None, batch_size=100, max_attempts=3, backoff_base=1.0)
    session.commit()
    return events


def test_an_event_nobody_took_is_made_due_again_and_a_taken_one_is_not(session: Session) -> None:
    lost, taken, recent = _published(session, 3)
    assert mark_consumed(session, [taken.id]) == 1 and mark_consumed(session, [taken.id]) == 0
    session.commit()
    later = utcnow() + timedelta(seconds=60)
    # Not yet: nothing is older than the threshold.
    assert redeliver_unconsumed(session, 120, 100, now=later) == []
    ids = redeliver_unconsumed(session, 30, 100, now=later)
    session.commit()
    assert lost.id in ids and recent.id in ids and taken.id not in ids
    session.expire_all()
    assert session.get(OutboxEvent, lost.id).published_at is None  # type: ignore[union-attr]
    assert session.get(OutboxEvent, taken.id).published_at is not None  # type: ignore[union-attr]
    # The relay publishes it again, with the same task id.
    sent: list[int] = []
    result = relay_batch(session, lambda e: sent.append(e.id), batch_size=100, max_attempts=3, backoff_base=1.0,
                         now=later)
    session.commit()
    assert set(sent) == {lost.id, recent.id} and result.published == 2


def test_event_ids_come_from_outbox_task_ids_only() -> None:
    assert event_id_for("outbox-42") == 42
    assert event_id_for("outbox-x") is None and event_id_for("4f1c-uuid") is None and event_id_for(None) is None


def test_a_task_handed_back_is_due_after_its_countdown_with_the_retry_arguments(session: Session) -> None:
    event, dead = _published(session, 2)
    event.payload = {**event.payload, TRACE_KEY: {"traceparent": "00-abc-def-01"}}
    dead.dead = True
    mark_consumed(session, [event.id, dead.id])
    session.commit()
    now = utcnow()
    assert hand_back(session, event.id, 30.0, {"i": 0, "db_retries": 2}, now=now)
    assert not hand_back(session, dead.id, 30.0, {"i": 1}, now=now)
    assert not hand_back(session, 10**9, 30.0, {"i": 2}, now=now)
    session.commit()
    session.refresh(event)
    assert event.published_at is None and event.consumed_at is None
    assert task_kwargs(event) == {"i": 0, "db_retries": 2}
    assert event.payload[TRACE_KEY] == {"traceparent": "00-abc-def-01"}  # still in the request's trace
    assert [e.id for e in claim_due(session, 10, now=now + timedelta(seconds=29))] == []
    session.rollback()
    assert [e.id for e in claim_due(session, 10, now=now + timedelta(seconds=31))] == [event.id]
    session.rollback()
