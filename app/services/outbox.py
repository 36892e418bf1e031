"""Transactional outbox: add events in the caller's transaction; relay them to the broker.

The API writes its business row and an ``OutboxEvent`` in one transaction and never
talks to the broker inside the request, so it keeps accepting work while the broker is
down. The relay publishes due events in id order and marks them published in the same
transaction that locked them (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several
relays never take the same event; on SQLite the caller holds a lock instead).

Guarantee: at-least-once publish. An event is marked published only after the broker
accepted it; a crash between the two publishes it again, with the same task id
(``outbox-<event id>``), and consumers are idempotent.

Redelivery: the broker can still drop a published task (with Redis, a worker killed
between popping a message and recording it as unacknowledged loses it). A worker records
when it first starts an event's task (``mark_consumed``, from the ``task_prerun`` signal);
the relay publishes again, with the same task id, any event published more than
``OUTBOX_REDELIVER_AFTER`` seconds ago that no worker has started
(``redeliver_unconsumed``). Consumers are idempotent, so a task that was only slow
costs one no-op run.

Publish after commit: ``add_event`` (an event due now) and ``replay_dead`` mark the
session (``session.info["outbox_pending"]``); one ``after_commit`` listener on every
``Session`` then calls the process's commit hook once per commit that carried such a
mark (``set_commit_hook``: the API and the workers set it to the relay's nudge,
``app.tasks.outbox.nudge``). A rolled-back or closed transaction only drops the mark. The
hook is best effort and never raises into the committing code: an event it does not
publish waits for beat's periodic relay.

Tracing: ``add_event`` keeps the caller's W3C trace context (the API request's) under the
payload key ``_trace``; ``task_kwargs`` strips it again and the relay publishes inside
that context, so the task continues the request's trace (see ``app.tracing``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, SessionTransaction

from app.db import rows_changed
from app.models.base import utcnow
from app.models.outbox import OutboxEvent
from app.tracing import TRACE_KEY, carrier

logger = logging.getLogger(__name__)

PUBSUB_CHANNEL = "outbox.events"

#: ``session.info`` key: the session's transaction holds an event due now.
PENDING_KEY = "outbox_pending"

Scope = Callable[[], AbstractContextManager[Session]]

_commit_hook: Callable[[], None] | None = None


class NotDead(Exception):
    """Only a dead event can be replayed."""


class BrokerUnavailable(Exception):
    """The broker cannot be reached: stop the batch, charge no event an attempt."""


@dataclass
class RelayResult:
    published: int = 0
    failed: int = 0
    dead: int = 0
    broker_down: bool = False
    published_ids: list[int] = field(default_factory=list)


def task_id_for(event_id: int) -> str:
    """Deterministic Celery task id of an event: a re-publish is recognisably the same."""
    return f"outbox-{event_id}"


def add_event(
    session: Session,
    *,
    aggregate_type: str,
    aggregate_id: str,
    event_type: str,
    task_name: str,
    payload: dict[str, Any],
    delay: float = 0.0,
) -> OutboxEvent:
    """Add an event to the caller's transaction; it is published only if that commits.

    ``delay``: seconds before the relay may publish it (the task's countdown, kept in the
    database). An event due now asks for a relay run as soon as the transaction commits.
    """
    event = OutboxEvent(**_event_row(aggregate_type, str(aggregate_id), event_type, task_name, payload, carrier(),
                                     utcnow() + timedelta(seconds=_checked_delay(delay))))
    session.add(event)
    session.flush()
    if delay == 0:
        session.info[PENDING_KEY] = True
    return event


def add_events(session: Session, *, aggregate_type: str, event_type: str, task_name: str,
               events: list[tuple[str, dict[str, Any]]]) -> None:
    """``add_event`` for many events due now, as one multi-row INSERT (a bulk submit):
    ``events`` are (aggregate id, payload) pairs. (``RETURNING`` makes it one statement of
    many rows rather than one statement per row.)"""
    if not events:
        return
    trace_headers, now = carrier(), utcnow()
    session.execute(insert(OutboxEvent).returning(OutboxEvent.id), [
        _event_row(aggregate_type, str(aggregate_id), event_type, task_name, payload, trace_headers, now)
        for aggregate_id, payload in events])
    session.info[PENDING_KEY] = True


def _checked_delay(delay: float) -> float:
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(f"delay must be a finite number of seconds ≥ 0, not {delay!r}")
    return delay


def _event_row(aggregate_type: str, aggregate_id: str, event_type: str, task_name: str, payload: dict[str, Any],
               trace_headers: dict[str, str], due: datetime) -> dict[str, Any]:
    """An event's column values; its payload checked here, in the request, not later in the relay."""
    json.dumps(payload)
    if TRACE_KEY in payload:
        raise ValueError(f"payload key {TRACE_KEY!r} is reserved for the trace context")
    return {"aggregate_type": aggregate_type, "aggregate_id": aggregate_id, "event_type": event_type,
            "task_name": task_name, "payload": {**payload, TRACE_KEY: trace_headers} if trace_headers else payload,
            "next_attempt_at": due}


# --- publish after commit ----------------------------------------------------------------------


def set_commit_hook(hook: Callable[[], None] | None) -> None:
    """In this process, call ``hook`` after each commit that added an event due now; None:
    nothing is called (the periodic relay alone publishes). ``hook`` must return at once."""
    global _commit_hook
    _commit_hook = hook


def _after_commit(session: Session) -> None:
    # A savepoint's release is no commit: the mark waits for the outermost transaction.
    if session.in_nested_transaction() or not session.info.pop(PENDING_KEY, False):
        return
    hook = _commit_hook
    if hook is None:
        return
    try:
        hook()
    except Exception:  # best effort: the periodic relay publishes the events anyway
        logger.warning("outbox commit hook failed", exc_info=True)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # Rolled back or closed without a commit: the events are gone, so is the mark.
    if transaction.parent is None:
        session.info.pop(PENDING_KEY, None)


def _listen_once() -> None:
    for name, listener in (("after_commit", _after_commit), ("after_transaction_end", _after_transaction_end)):
        if not sa_event.contains(Session, name, listener):
            sa_event.listen(Session, name, listener)


_listen_once()


def event_id_for(task_id: str | None) -> int | None:
    """The event a task id was published for (``outbox-<event id>``); None for other tasks."""
    if not task_id or not task_id.startswith("outbox-"):
        return None
    tail = task_id[len("outbox-"):]
    return int(tail) if tail.isdigit() else None


def mark_consumed(session: Session, event_ids: list[int], now: datetime | None = None) -> int:
    """Record that a worker started the events' tasks; how many were not recorded before."""
    return rows_changed(
        session,
        update(OutboxEvent).where(OutboxEvent.id.in_(event_ids), OutboxEvent.consumed_at.is_(None))
        .values(consumed_at=now or utcnow()),
        synchronize=False,
    )


def hand_back(session: Session, event_id: int, delay: float, kwargs: dict[str, Any],
              now: datetime | None = None) -> bool:
    """Make a published event due again in ``delay`` seconds, its task to run with ``kwargs``.

    For a task's retry the broker could not take (``app.tasks.base.HandBackRetry``): the
    relay publishes the event again, with the same task id, once the broker answers. The
    trace context stays. False when the event does not exist or is dead.
    """
    json.dumps(kwargs)
    event = session.get(OutboxEvent, event_id, with_for_update=True)
    if event is None or event.dead:
        return False
    trace = (event.payload or {}).get(TRACE_KEY)
    event.payload = {**kwargs, TRACE_KEY: trace} if trace else dict(kwargs)
    event.published_at = None
    event.consumed_at = None
    event.next_attempt_at = (now or utcnow()) + timedelta(seconds=max(0.0, delay))
    return True


def redeliver_unconsumed(session: Session, older_than: float, limit: int,
                         now: datetime | None = None) -> list[int]:
    """Make events published over ``older_than`` seconds ago whose task no worker started
    due again; the relay then publishes them with their same task id. Their ids."""
    now = now or utcnow()
    stmt = (
        select(OutboxEvent.id)
        .where(OutboxEvent.published_at.is_not(None), OutboxEvent.consumed_at.is_(None),
               OutboxEvent.published_at < now - timedelta(seconds=older_than), OutboxEvent.dead.is_(False))
        .order_by(OutboxEvent.published_at, OutboxEvent.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    ids = list(session.scalars(stmt))
    if ids:
        session.execute(
            update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(published_at=None, next_attempt_at=now),
            execution_options={"synchronize_session": False},
        )
        logger.warning("outbox events published but never taken by a worker; publishing again",
                       extra={"events": ids[:20], "count": len(ids)})
    return ids


def task_kwargs(event: OutboxEvent) -> dict[str, Any]:
    """The keyword arguments of the event's task: its payload without the trace context."""
    return {k: v for k, v in (event.payload or {}).items() if k != TRACE_KEY}


def trace_headers(event: OutboxEvent) -> dict[str, str]:
    """The W3C trace context saved with the event (empty when it was added outside a trace)."""
    return dict((event.payload or {}).get(TRACE_KEY) or {})


def claim_due(session: Session, limit: int, now: datetime | None = None) -> list[OutboxEvent]:
    """Lock and return up to ``limit`` due, unpublished, live events in id order."""
    now = now or utcnow()
    stmt = (
        select(OutboxEvent)
        .where(OutboxEvent.published_at.is_(None), OutboxEvent.dead.is_(False), OutboxEvent.next_attempt_at <= now)
        .order_by(OutboxEvent.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return list(session.scalars(stmt))


def backoff_seconds(base: float, attempts: int) -> float:
    """1, 2, 4 … × base: the wait after the ``attempts``-th failed publish."""
    return base * (2 ** max(0, attempts - 1))


def relay_batch(
    session: Session,
    publish: Callable[[OutboxEvent], None],
    *,
    batch_size: int,
    max_attempts: int,
    backoff_base: float,
    notify: Callable[[list[OutboxEvent]], None] | None = None,
    now: datetime | None = None,
) -> RelayResult:
    """Publish one batch and record the outcome; the caller commits.

    ``publish`` raises ``BrokerUnavailable`` when the broker is down (the batch stops and
    the remaining events wait, uncharged) or any other exception for a failure of this
    event (charged: exponential backoff, then dead after ``max_attempts``).
    """
    now = now or utcnow()
    result = RelayResult()
    events = claim_due(session, batch_size, now)
    published: list[OutboxEvent] = []
    for event in events:
        try:
            publish(event)
        except BrokerUnavailable as exc:
            logger.warning("broker unavailable; relay stops this batch", extra={"error": str(exc)})
            result.broker_down = True
            break
        except Exception as exc:  # any per-event failure is recorded on the event
            event.attempts += 1
            event.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            if event.attempts >= max_attempts:
                event.dead = True
                result.dead += 1
                logger.error("outbox event dead", extra={"event_id": event.id, "error": event.last_error})
            else:
                event.next_attempt_at = now + timedelta(seconds=backoff_seconds(backoff_base, event.attempts))
            result.failed += 1
            continue
        published.append(event)
    if published:
        ids = [e.id for e in published]
        session.execute(
            update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(published_at=now),
            execution_options={"synchronize_session": False},
        )
        for event in published:
            event.published_at = now
        result.published = len(ids)
        result.published_ids = ids
        if notify is not None:
            try:
                notify(published)
            except Exception:  # real-time listeners are best effort; the broker has the event
                logger.warning("outbox pub/sub notify failed", exc_info=True)
    return result


@dataclass(frozen=True)
class RelayPolicy:
    """How one relay run drains (``OUTBOX_*`` settings)."""

    batch_size: int
    max_attempts: int
    backoff_base: float
    redeliver_after: float
    budget: float


def drain(
    scope: Scope,
    publish: Callable[[OutboxEvent], None],
    policy: RelayPolicy,
    *,
    notify: Callable[[list[OutboxEvent]], None] | None = None,
    on_batch: Callable[[RelayResult], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, int]:
    """One relay run: make lost publications due again, then publish batch after batch,
    each in its own transaction, until none is full, the broker is down or the budget is
    spent. ``on_batch`` sees each batch's result (metrics). The run's totals."""
    deadline = clock() + policy.budget
    totals = {"published": 0, "failed": 0, "dead": 0, "redelivered": 0}
    with scope() as session:
        # Published events the broker lost become due again, and go out in this run.
        totals["redelivered"] = len(redeliver_unconsumed(session, policy.redeliver_after, policy.batch_size))
    while clock() < deadline:
        with scope() as session:
            result = relay_batch(session, publish, batch_size=policy.batch_size, max_attempts=policy.max_attempts,
                                 backoff_base=policy.backoff_base, notify=notify)
        totals["published"] += result.published
        totals["failed"] += result.failed
        totals["dead"] += result.dead
        if on_batch is not None:
            on_batch(result)
        if result.broker_down or result.published + result.failed < policy.batch_size:
            break
    return totals


def replay_dead(session: Session, event_id: int) -> OutboxEvent | None:
    """Give a dead event a fresh set of attempts, due now."""
    event = session.get(OutboxEvent, event_id, with_for_update=True)
    if event is None:
        return None
    if not event.dead:
        raise NotDead(f"outbox event {event_id} is not dead")
    event.dead = False
    event.attempts = 0
    event.published_at = None
    event.next_attempt_at = utcnow()
    session.info[PENDING_KEY] = True
    return event


def list_events(session: Session, *, dead: bool | None = None, pending: bool | None = None, limit: int = 50, offset: int = 0) -> list[OutboxEvent]:
    stmt = select(OutboxEvent).order_by(OutboxEvent.id.desc()).limit(limit).offset(offset)
    if dead is not None:
        stmt = stmt.where(OutboxEvent.dead.is_(dead))
    if pending:
        stmt = stmt.where(OutboxEvent.published_at.is_(None), OutboxEvent.dead.is_(False))
    return list(session.scalars(stmt))


def event_message(event: OutboxEvent) -> str:
    """The JSON sent to real-time listeners for a published event."""
    return json.dumps(
        {
            "id": event.id,
            "aggregate_type": event.aggregate_type,
            "aggregate_id": event.aggregate_id,
            "event_type": event.event_type,
            "payload": task_kwargs(event),
        },
        separators=(",", ":"),
    )
