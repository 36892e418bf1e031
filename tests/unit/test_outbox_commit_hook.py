"""Publish after commit, on PostgreSQL and SQLite: a transaction that added an event due now
calls the process's commit hook once, through the real ``after_commit`` listener; a rolled
back, closed or delayed one does not. With the relay's own nudge as the hook, the commit
puts one relay task on the ``outbox`` queue of the real broker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy.orm import Session

from app.models.base import utcnow
from app.services import outbox as outbox_service
from app.services.outbox import PENDING_KEY, add_event, claim_due, relay_batch, replay_dead, set_commit_hook
from tests.unit.test_outbox_service import session  # noqa: F401  (fixture: both databases)


@pytest.fixture
def calls() -> Iterator[list[int]]:
    """The commit hook of this process records its calls for the test, then is put back."""
    before = outbox_service._commit_hook
    seen: list[int] = []
    set_commit_hook(lambda: seen.append(1))
    yield seen
    set_commit_hook(before)


def _event(session: Session, **kw: float) -> None:
    add_event(session, aggregate_type="t", aggregate_id="1", event_type="t.e", task_name="app.tasks.system.ping",
              payload={}, **kw)


def test_a_committed_event_calls_the_hook_once_per_commit(session: Session, calls: list[int]) -> None:
    _event(session)
    _event(session)
    assert calls == []  # nothing before the commit
    session.commit()
    assert calls == [1]
    session.commit()  # a commit that added nothing is no nudge
    assert calls == [1]


def test_a_rolled_back_event_does_not_call_the_hook(session: Session, calls: list[int]) -> None:
    _event(session)
    session.rollback()
    assert PENDING_KEY not in session.info
    session.commit()  # the next transaction, with nothing added, does not inherit the mark
    assert calls == []
    _event(session)
    session.close()  # closed without a commit: rolled back too
    session.commit()
    assert calls == []


def test_a_savepoint_release_waits_for_the_outer_commit(session: Session, calls: list[int]) -> None:
    with session.begin_nested():
        _event(session)
    assert calls == []
    session.commit()
    assert calls == [1]


def test_an_event_delayed_asks_for_no_relay_and_is_due_after_its_delay(session: Session, calls: list[int]) -> None:
    now = utcnow()
    _event(session, delay=30)
    session.commit()
    assert calls == []
    assert claim_due(session, 10, now=now + timedelta(seconds=29)) == []
    session.rollback()
    assert len(claim_due(session, 10, now=now + timedelta(seconds=31))) == 1
    session.rollback()
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="delay"):
            _event(session, delay=bad)


def test_a_dead_event_replayed_calls_the_hook(session: Session, calls: list[int]) -> None:
    _event(session)
    session.commit()
    calls.clear()

    def refuse(_event: object) -> None:
        raise LookupError("no such task")

    relay_batch(session, refuse, batch_size=10, max_attempts=1, backoff_base=1)
    session.commit()
    assert calls == []  # the relay's own commits ask for no relay
    [dead] = outbox_service.list_events(session, dead=True)
    replay_dead(session, dead.id)
    session.commit()
    assert calls == [1]


def test_a_hook_that_raises_never_reaches_the_committing_code(session: Session, calls: list[int]) -> None:
    def broken() -> None:
        raise ConnectionError("broker down")

    set_commit_hook(broken)
    _event(session)
    session.commit()  # no exception
    assert session.info.get(PENDING_KEY) is None


def test_the_relay_nudge_puts_one_relay_task_on_the_broker_after_the_commit(
    session: Session, calls: list[int], redis_client: redis.Redis
) -> None:
    from app.tasks.outbox import relay_after_commits

    relay_after_commits()  # the hook the API and the workers set
    redis_client.delete("outbox")  # the broker's queue (the Redis fixture is per session)
    _event(session)
    session.flush()
    time.sleep(0.3)
    assert redis_client.llen("outbox") == 0  # not before the commit
    session.commit()
    deadline = time.monotonic() + 10
    while redis_client.llen("outbox") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    messages = [json.loads(raw) for raw in redis_client.lrange("outbox", 0, -1)]
    redis_client.delete("outbox")
    assert [m["headers"]["task"] for m in messages] == ["app.tasks.outbox.relay"]
