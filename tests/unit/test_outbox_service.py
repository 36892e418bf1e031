"""Outbox service on PostgreSQL and SQLite: caller's transaction, backoff, dead, replay."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.models.base import utcnow
from app.models.outbox import OutboxEvent
from app.services.outbox import (
    BrokerUnavailable,
    NotDead,
    RelayPolicy,
    RelayResult,
    add_event,
    backoff_seconds,
    drain,
    relay_batch,
    replay_dead,
)
from tests.unit.test_db import _migrate


@pytest.fixture(params=["postgresql", "sqlite"])
def session(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    from app.settings import get_settings

    if request.param == "postgresql":
        request.getfixturevalue("pg_database")
        settings = get_settings()
    else:
        settings = get_settings().model_copy(update={"database_url": f"sqlite:///{tmp_path}/o.db"})
    engine = _migrate(settings)
    with Session(engine) as s:
        s.execute(delete(OutboxEvent))
        s.commit()
        yield s
        s.rollback()
        s.execute(delete(OutboxEvent))
        s.commit()
    engine.dispose()


def _event(session: Session, n: int = 0) -> OutboxEvent:
    return add_event(session, aggregate_type="t", aggregate_id=str(n), event_type="t.e",
                     task_name="app.tasks.system.ping", payload={"n": n})


def _count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(OutboxEvent)) or 0


def test_event_lives_and_dies_with_the_callers_transaction(session: Session) -> None:
    _event(session)
    session.rollback()
    assert _count(session) == 0
    _event(session)
    session.commit()
    assert _count(session) == 1


def test_unserialisable_payload_is_refused_at_once(session: Session) -> None:
    with pytest.raises(TypeError):
        add_event(session, aggregate_type="t", aggregate_id="1", event_type="e", task_name="x", payload={"x": object()})


def test_relay_publishes_in_order_and_marks_published(session: Session) -> None:
    for n in range(5):
        _event(session, n)
    session.commit()
    seen: list[int] = []
    result = relay_batch(session, lambda e: seen.append(e.payload["n"]), batch_size=3, max_attempts=3, backoff_base=1)
    session.commit()
    assert seen == [0, 1, 2] and result.published == 3
    result = relay_batch(session, lambda e: seen.append(e.payload["n"]), batch_size=3, max_attempts=3, backoff_base=1)
    session.commit()
    assert seen == [0, 1, 2, 3, 4] and result.published == 2
    assert session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))) == 0


def test_failed_publish_backs_off_1_2_4_then_dead_and_replayable(session: Session) -> None:
    event = _event(session)
    session.commit()

    def fail(_e: OutboxEvent) -> None:
        raise RuntimeError("no such route")

    now = utcnow()
    waits = []
    for attempt in range(1, 4):
        result = relay_batch(session, fail, batch_size=10, max_attempts=3, backoff_base=1, now=now)
        session.commit()
        session.refresh(event)
        assert result.failed == 1 and event.attempts == attempt
        if attempt < 3:
            waits.append((event.next_attempt_at - now).total_seconds())
            # not due before its backoff
            assert relay_batch(session, fail, batch_size=10, max_attempts=3, backoff_base=1, now=now).failed == 0
            now = event.next_attempt_at
    assert waits == [1.0, 2.0]
    assert backoff_seconds(1, 3) == 4.0
    assert event.dead and "no such route" in (event.last_error or "")
    assert relay_batch(session, fail, batch_size=10, max_attempts=3, backoff_base=1, now=now + timedelta(hours=1)).failed == 0

    replay_dead(session, event.id)
    session.commit()
    published = []
    relay_batch(session, published.append, batch_size=10, max_attempts=3, backoff_base=1)
    session.commit()
    assert [e.id for e in published] == [event.id]
    with pytest.raises(NotDead):
        replay_dead(session, event.id)


def test_broker_down_charges_no_attempt(session: Session) -> None:
    for n in range(3):
        _event(session, n)
    session.commit()

    def down(_e: OutboxEvent) -> None:
        raise BrokerUnavailable("connection refused")

    result = relay_batch(session, down, batch_size=10, max_attempts=3, backoff_base=1)
    session.commit()
    assert result.broker_down and result.published == 0
    rows = list(session.scalars(select(OutboxEvent)))
    assert all(e.attempts == 0 and not e.dead and e.published_at is None for e in rows)


def _scope_of(session: Session):  # type: ignore[no-untyped-def]
    """The relay's session scope, on the test's own connection: each batch commits."""
    from contextlib import contextmanager

    @contextmanager
    def scope():  # type: ignore[no-untyped-def]
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise

    return scope


def _policy(**kw: float) -> RelayPolicy:
    return RelayPolicy(**({"batch_size": 100, "max_attempts": 3, "backoff_base": 1.0, "redeliver_after": 600.0,
                           "budget": 5.0} | kw))  # type: ignore[arg-type]


def test_a_relay_run_drains_batch_after_batch_until_one_is_not_full(session: Session) -> None:
    for n in range(250):
        _event(session, n)
    session.commit()
    sent: list[int] = []
    batches: list[RelayResult] = []
    totals = drain(_scope_of(session), lambda e: sent.append(e.payload["n"]), _policy(), on_batch=batches.append)
    assert totals == {"published": 250, "failed": 0, "dead": 0, "redelivered": 0}
    assert sent == list(range(250)) and [b.published for b in batches] == [100, 100, 50]
    assert session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))) == 0


def test_a_relay_run_stops_at_a_broker_outage_and_at_its_budget(session: Session) -> None:
    for n in range(30):
        _event(session, n)
    session.commit()

    def down(_e: OutboxEvent) -> None:
        raise BrokerUnavailable("connection refused")

    batches: list[RelayResult] = []
    assert drain(_scope_of(session), down, _policy(batch_size=10), on_batch=batches.append)["published"] == 0
    assert len(batches) == 1 and batches[0].broker_down
    # Every batch full, and the clock past the budget after the second: two batches.
    ticks = iter([0.0, 0.5, 1.5, 9.0])
    totals = drain(_scope_of(session), lambda e: None, _policy(batch_size=10, budget=2.0), clock=lambda: next(ticks))
    assert totals["published"] == 20
