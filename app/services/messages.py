"""Message routing: accept a message (with its outbox event), send it to its channels
exactly once, retry transient failures, and dead-letter what cannot be delivered.

Exactly-once effect rests on three checks, cheapest first:

1. Redis ``SET dedup:message:<id> <task id> NX EX 24h``: a second router task for the
   same message (another task id) stops at once. A replay from the dead-letter queue
   carries its dead letter's id and claims a key of its own
   (``dedup:message:<id>:replay:<dead letter id>``), so the first router's key, still
   set for 24 h, cannot make the replay look like a duplicate; nothing has to delete it.
2. ``messages.router_task_id`` set by a conditional UPDATE: the same check in the
   database, so a flushed Redis cannot let a second router through.
3. Each channel's ``MessageDelivery`` is claimed ``pending → sending`` by a conditional
   UPDATE committed *before* the HTTP call. Only the claimer sends. A delivery found in
   ``sending`` after its lease ran out belonged to a worker that died mid-send: whether
   the provider got it is unknown, so it is not sent again; it fails with that reason
   and goes to the dead-letter queue, where an operator can replay it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.db import rows_changed
from app.models.base import utcnow
from app.models.messages import (
    CHANNELS,
    DeadLetter,
    DeliveryStatus,
    Message,
    MessageDelivery,
    MessageStatus,
    MessageStatusUpdate,
)
from app.services.channels import OutgoingMessage, PermanentChannelError, TransientChannelError
from app.services.outbox import add_event

logger = logging.getLogger(__name__)

ROUTE_TASK = "app.tasks.messages.route"
STATUS_CHANNEL = "messages.status"
TERMINAL = ("delivered", "failed")


class MessageConflict(Exception):
    """The id is taken by a different message."""


class NotReplayable(Exception):
    """The dead letter was already replayed, or its message is gone."""


class Channel(Protocol):
    name: str

    def send(self, message: OutgoingMessage) -> str: ...


class DedupStore(Protocol):
    def set(self, name: str, value: str, ex: int | None = None, nx: bool = False) -> Any: ...
    def get(self, name: str) -> Any: ...
    def delete(self, *names: str) -> Any: ...


def dedup_key(message_id: str, replay: int | None = None) -> str:
    """The Redis key that lets one router task through for the message (or for one replay of it)."""
    return f"dedup:message:{message_id}" if replay is None else f"dedup:message:{message_id}:replay:{replay}"


# --- accepting -------------------------------------------------------------------------
#: Internal ids of the messages the system sends start with this; no client id may.
SYSTEM_ID_PREFIX = "sys:"


def submit_message(
    session: Session,
    *,
    conversation_id: str,
    channel: str,
    recipient: str,
    content: str,
    client_id: int | None = None,
    client_ref: str | None = None,
    message_id: str | None = None,
) -> tuple[Message, bool]:
    """Add the message, its deliveries and its outbox event in the caller's transaction.

    A client's message is named by ``client_ref``, its idempotency key, unique per
    client: the same message again returns the stored one (``created`` False) and adds
    nothing; a different message under the same id raises; another client's message of
    that id is never seen. ``message_id`` is the internal id of a message the system sends
    (campaigns; ``SYSTEM_ID_PREFIX``), which no client id can reach.
    """
    id_taken = True  # a client's id becomes the internal id only when no message has that one
    if client_ref is not None:
        owner = Message.client_id.is_(None) if client_id is None else Message.client_id == client_id
        # One read answers both questions: is this the client's resend, is the id free.
        rows = session.execute(select(Message.id, Message.client_id, Message.client_ref).where(
            or_(and_(owner, Message.client_ref == client_ref), Message.id == client_ref))).all()
        mine = next((r.id for r in rows if r.client_ref == client_ref and r.client_id == client_id), None)
        existing = session.get(Message, mine) if mine is not None else None
        id_taken = client_ref.startswith(SYSTEM_ID_PREFIX) or any(r.id == client_ref for r in rows)
    else:
        existing = session.get(Message, message_id) if message_id is not None else None
    if existing is not None:
        same = (existing.conversation_id, existing.channel, existing.recipient, existing.content) == (
            conversation_id, channel, recipient, content,
        )
        if not same:
            raise MessageConflict(f"message id {client_ref or message_id!r} is already used by a different message")
        return existing, False
    if message_id is None:
        # The first message to use an id keeps it as its internal id (what the channels see);
        # another client's message of the same id gets a fresh one. A racing insert of the
        # same internal id fails on the primary key and is retried by the caller.
        message_id = uuid.uuid4().hex if id_taken or client_ref is None else client_ref
    message = Message(
        id=message_id, client_id=client_id, client_ref=client_ref, conversation_id=conversation_id,
        channel=channel, recipient=recipient, content=content,
    )
    session.add(message)
    targets = CHANNELS if channel == "all" else (channel,)
    for name in targets:
        session.add(MessageDelivery(message=message, channel=name))
    session.add(MessageStatusUpdate(message_id=message_id, status="queued", detail="accepted"))
    add_event(
        session,
        aggregate_type="message",
        aggregate_id=message_id,
        event_type="message.submitted",
        task_name=ROUTE_TASK,
        payload={"message_id": message_id},
    )
    session.flush()
    return message, True


# --- routing ----------------------------------------------------------------------------
@dataclass
class RouteOutcome:
    result: str  # done | duplicate | missing | pending
    status: str | None = None
    retry_in: float | None = None


@dataclass
class RouteDeps:
    """What the router needs, handed in by the task."""

    scope: Callable[[], AbstractContextManager[Session]]
    channels: dict[str, Channel]
    dedup: DedupStore | None
    notify: Callable[[str, str, str | None], None]
    backoff: Callable[[int], float]
    max_retries: int
    lease_seconds: float
    dedup_ttl: int


def _claim_router(session: Session, deps: RouteDeps, message_id: str, task_id: str, replay: int | None) -> bool:
    if deps.dedup is not None:
        key = dedup_key(message_id, replay)
        try:
            if not deps.dedup.set(key, task_id, ex=deps.dedup_ttl, nx=True):
                owner = deps.dedup.get(key)
                owner = owner.decode() if isinstance(owner, bytes) else owner
                if owner is not None and owner != task_id:
                    return False
        except Exception:  # Redis down: the database check below still holds
            logger.warning("dedup store unavailable; relying on the database check", exc_info=True)
    claimed = rows_changed(
        session,
        update(Message)
        .where(Message.id == message_id)
        .where((Message.router_task_id.is_(None)) | (Message.router_task_id == task_id))
        .values(router_task_id=task_id),
        synchronize=False,
    )
    return claimed == 1


def _dead_letter(session: Session, delivery: MessageDelivery, kind: str, error: str) -> None:
    session.add(
        DeadLetter(
            message_id=delivery.message_id, channel=delivery.channel, error=error[:2000],
            error_kind=kind, attempts=delivery.attempts, client_id=delivery.message.client_id,
        )
    )


def _status(session: Session, deps: RouteDeps, message: Message, status: str, detail: str | None) -> None:
    session.add(MessageStatusUpdate(message_id=message.id, status=status, detail=detail))
    if message.status != status:
        message.status = status
    deps.notify(message.id, status, detail)


def _refresh_message_status(session: Session, deps: RouteDeps, message_id: str) -> str:
    message = session.get(Message, message_id, populate_existing=True)
    assert message is not None
    states = [d.status for d in session.scalars(select(MessageDelivery).where(MessageDelivery.message_id == message_id))]
    if all(s == "accepted" for s in states):
        new = "delivered"
    elif any(s == "failed" for s in states) and not any(s in ("pending", "sending") for s in states):
        new = "failed"
    elif any(s == "accepted" for s in states):
        new = "sent"
    else:
        new = message.status
    if new != message.status:
        errors = [d.last_error for d in message.deliveries if d.status == "failed" and d.last_error]
        message.last_error = errors[0] if new == "failed" and errors else message.last_error
        _status(session, deps, message, new, "; ".join(errors) if new == "failed" else None)
    return new


def route_message(deps: RouteDeps, message_id: str, task_id: str, replay: int | None = None) -> RouteOutcome:
    """Send every unsent channel of the message once; say when to come back if needed.

    ``replay`` is the dead letter a replay was made from (its event's payload carries it)."""
    with deps.scope() as session:
        message = session.get(Message, message_id)
        if message is None:
            return RouteOutcome("missing")
        if not _claim_router(session, deps, message_id, task_id, replay):
            logger.info("duplicate router task skipped", extra={"message_id": message_id, "task": task_id})
            return RouteOutcome("duplicate", message.status)
        deliveries = [_Delivery(d.id, d.channel, d.status, d.attempts, d.lease_until) for d in message.deliveries]
        outgoing = OutgoingMessage(message.id, message.recipient, message.content)
    waits = [_route_delivery(deps, message_id, outgoing, delivery) for delivery in deliveries]
    retry_in = min((w for w in waits if w is not None), default=None)
    with deps.scope() as session:
        final = _refresh_message_status(session, deps, message_id)
        message = session.get(Message, message_id)
        assert message is not None
        message.attempts = sum(d.attempts for d in message.deliveries)
    if final in TERMINAL:
        return RouteOutcome("done", final)
    return RouteOutcome("pending", final, retry_in if retry_in is not None else deps.backoff(1))


@dataclass(frozen=True)
class _Delivery:
    """One channel's delivery as the router read it."""

    id: int
    channel: str
    status: str
    attempts: int
    lease_until: datetime | None


def _route_delivery(deps: RouteDeps, message_id: str, outgoing: OutgoingMessage, delivery: _Delivery) -> float | None:
    """Settle or send one delivery; the seconds after which to look again, if any."""
    now = utcnow()
    if delivery.status in (DeliveryStatus.ACCEPTED, DeliveryStatus.FAILED):
        return None
    if delivery.status == DeliveryStatus.SENDING:
        if delivery.lease_until is not None and delivery.lease_until > now:
            return max(1.0, (delivery.lease_until - now).total_seconds())
        _settle_lost(deps, delivery)
        return None
    # pending: claim it, commit, then send
    with deps.scope() as session:
        claimed = rows_changed(
            session,
            update(MessageDelivery)
            .where(MessageDelivery.id == delivery.id, MessageDelivery.status == DeliveryStatus.PENDING,
                   MessageDelivery.attempts == delivery.attempts)
            .values(status=DeliveryStatus.SENDING, attempts=delivery.attempts + 1,
                    lease_until=now + timedelta(seconds=deps.lease_seconds)),
            synchronize=False,
        )
    if not claimed:
        return None
    return _send(deps, message_id, outgoing, delivery.id, delivery.channel, delivery.attempts + 1)


def _settle_lost(deps: RouteDeps, delivery: _Delivery) -> None:
    """A send whose worker died with the lease: its outcome is unknown, so it is failed and
    dead-lettered rather than sent twice."""
    with deps.scope() as session:
        lost = rows_changed(
            session,
            update(MessageDelivery)
            .where(MessageDelivery.id == delivery.id, MessageDelivery.status == DeliveryStatus.SENDING,
                   MessageDelivery.attempts == delivery.attempts)
            .values(status=DeliveryStatus.FAILED, lease_until=None,
                    last_error="worker lost during the send: outcome unknown, not resent"),
            synchronize=False,
        )
        if lost:
            d = session.get(MessageDelivery, delivery.id, populate_existing=True)
            assert d is not None
            _dead_letter(session, d, "unknown_outcome", d.last_error or "")


def _send(deps: RouteDeps, message_id: str, outgoing: OutgoingMessage, delivery_id: int, channel: str,
          attempt: int) -> float | None:
    """Send a claimed delivery and record what the channel said; a retry's wait, if any."""
    try:
        provider_id = deps.channels[channel].send(outgoing)
    except TransientChannelError as exc:
        return _record_transient(deps, message_id, delivery_id, channel, attempt, exc)
    except PermanentChannelError as exc:
        with deps.scope() as session:
            d = session.get(MessageDelivery, delivery_id)
            assert d is not None
            d.status, d.lease_until, d.last_error = DeliveryStatus.FAILED, None, f"{channel}: {exc}"[:2000]
            _dead_letter(session, d, "permanent", d.last_error)
        return None
    with deps.scope() as session:
        d = session.get(MessageDelivery, delivery_id)
        assert d is not None
        d.status, d.lease_until, d.provider_message_id, d.last_error = DeliveryStatus.ACCEPTED, None, provider_id, None
        session.add(MessageStatusUpdate(
            message_id=message_id, status=MessageStatus.SENT, detail=f"{channel} accepted",
            data={"provider_message_id": provider_id},
        ))
    return None


def _record_transient(deps: RouteDeps, message_id: str, delivery_id: int, channel: str, attempt: int,
                      exc: TransientChannelError) -> float | None:
    """Give the delivery back for a retry, or dead-letter it once its retries are spent."""
    with deps.scope() as session:
        d = session.get(MessageDelivery, delivery_id)
        assert d is not None
        d.last_error = str(exc)[:2000]
        d.lease_until = None
        if attempt > deps.max_retries:
            d.status = DeliveryStatus.FAILED
            _dead_letter(session, d, "exhausted", f"{channel}: {exc} (after {attempt} attempts)")
            return None
        d.status = DeliveryStatus.PENDING
        wait = exc.retry_after if exc.retry_after is not None else deps.backoff(attempt)
        message = session.get(Message, message_id)
        assert message is not None
        session.add(MessageStatusUpdate(
            message_id=message_id, status=message.status, detail=f"{channel}: {exc}; retry {attempt} in {wait:.1f}s",
        ))
        return wait


# --- dead-letter queue ----------------------------------------------------------------------
def list_dead_letters(
    session: Session, *, channel: str | None = None, error: str | None = None,
    replayed: bool | None = None, limit: int = 50, offset: int = 0, where: Any = None,
) -> tuple[list[DeadLetter], int]:
    """Dead letters newest first; ``where`` narrows them (to one client's)."""
    stmt = select(DeadLetter) if where is None else select(DeadLetter).where(where)
    if channel:
        stmt = stmt.where(DeadLetter.channel == channel)
    if error:
        stmt = stmt.where((DeadLetter.error_kind == error) | DeadLetter.error.contains(error))
    if replayed is not None:
        stmt = stmt.where(DeadLetter.replayed_at.is_not(None) if replayed else DeadLetter.replayed_at.is_(None))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = list(session.scalars(stmt.order_by(DeadLetter.id.desc()).limit(limit).offset(offset)))
    return rows, total


def replay_dead_letter(session: Session, dead_letter_id: int) -> DeadLetter:
    """Re-enqueue a dead letter's channel through the outbox, in the caller's transaction.

    The event carries ``replay`` (the dead letter's id): its router claims a dedup key of
    its own, so the first router's key needs no delete, and a failed delete or a relay
    faster than one cannot drop the replay as a duplicate. The database claim
    (``router_task_id``, reset here) still lets exactly one router through.
    """
    dl = session.get(DeadLetter, dead_letter_id, with_for_update=True)
    if dl is None:
        raise LookupError(f"dead letter {dead_letter_id} does not exist")
    if dl.replayed_at is not None:
        raise NotReplayable(f"dead letter {dead_letter_id} was already replayed at {dl.replayed_at.isoformat()}")
    message = session.get(Message, dl.message_id)
    if message is None:
        raise NotReplayable(f"message {dl.message_id} no longer exists")
    dl.replayed_at = utcnow()
    delivery = session.scalars(
        select(MessageDelivery).where(MessageDelivery.message_id == message.id, MessageDelivery.channel == dl.channel)
    ).one()
    delivery.status, delivery.attempts, delivery.lease_until = "pending", 0, None
    message.router_task_id = None
    message.status = "queued"
    session.add(MessageStatusUpdate(message_id=message.id, status="queued", detail=f"replayed from dead letter {dl.id}"))
    add_event(
        session, aggregate_type="message", aggregate_id=message.id, event_type="message.replayed",
        task_name=ROUTE_TASK, payload={"message_id": message.id, "replay": dl.id},
    )
    return dl
