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
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Table, and_, func, insert, or_, select, update
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
from app.services.outbox import add_event, add_events

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
    def set(self, name: str, value: str, *, ex: int | None = None, nx: bool = False) -> Any: ...
    def get(self, name: str) -> Any: ...
    def delete(self, *names: str) -> Any: ...


def dedup_key(message_id: str, replay: int | None = None) -> str:
    """The Redis key that lets one router task through for the message (or for one replay of it)."""
    return f"dedup:message:{message_id}" if replay is None else f"dedup:message:{message_id}:replay:{replay}"


# --- accepting -------------------------------------------------------------------------
#: Internal ids of the messages the system sends start with this; no client id may.
SYSTEM_ID_PREFIX = "sys:"


@dataclass(frozen=True)
class NewMessage:
    """One message to accept. A client's message is named by ``client_ref``, its
    idempotency key, unique per client; ``message_id`` is the internal id of a message the
    system sends (campaigns; ``SYSTEM_ID_PREFIX``), which no client id can reach."""

    conversation_id: str
    channel: str
    recipient: str
    content: str
    client_ref: str | None = None
    message_id: str | None = None

    @property
    def key(self) -> str | None:
        """What names it for idempotency (None: nothing, every submission is new)."""
        return self.client_ref if self.client_ref is not None else self.message_id

    def same_as(self, row: Any) -> bool:
        return (row.conversation_id, row.channel, row.recipient, row.content) == (
            self.conversation_id, self.channel, self.recipient, self.content)


@dataclass(frozen=True)
class Submitted:
    """What became of one ``NewMessage``: accepted (``created``), a duplicate of the stored
    message of its id (``created`` False), or refused because a different message has
    that id (``conflict``, the reason; nothing was written for it)."""

    id: str | None
    client_ref: str | None
    created: bool
    status: str = MessageStatus.QUEUED
    conflict: str | None = None


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
) -> tuple[Submitted, bool]:
    """Accept one message (``submit_messages`` with one item): (what became of it, created).
    The same message again is a duplicate (created False, nothing added); a different
    message under the same id raises ``MessageConflict``."""
    item = NewMessage(conversation_id, channel, recipient, content, client_ref=client_ref, message_id=message_id)
    result = submit_messages(session, [item], client_id=client_id)[0]
    if result.conflict is not None:
        raise MessageConflict(result.conflict)
    return result, result.created


def submit_messages(session: Session, items: list[NewMessage], *, client_id: int | None) -> list[Submitted]:
    """Add messages, their deliveries, their status rows and their outbox events in the
    caller's transaction, in a few multi-row statements whatever their number; one
    ``Submitted`` per item, in order.

    Idempotency per client: an id this client already used answers the stored message (a
    duplicate, when the content is the same) or a conflict; another client's message of
    that id is never seen. Within the items, a repeated id is answered like a resend of
    its first occurrence. The first message to use an id keeps it as its internal id (what
    the channels see); another client's message of the same id gets a fresh one.

    Each row is inserted with ``ON CONFLICT DO NOTHING``, so the common case reads
    nothing first; the few that clash (a resend, an id in use, a racing request with the
    same id, which the database makes wait for the other's commit) are then looked up.
    """
    results: list[Submitted | None] = [None] * len(items)
    first: dict[str, int] = {}
    fresh = []
    for index, item in enumerate(items):
        if item.key is None or item.key not in first:
            fresh.append(index)
            if item.key is not None:
                first[item.key] = index
    if client_id is None:  # no unique (client, id) constraint guards NULL owners: look first
        _resolve_stored(session, items, [i for i in fresh if items[i].client_ref is not None], client_id, results)
    ids = _insert_new(session, items, [i for i in fresh if results[i] is None], client_id, results)
    _insert_rest(session, [(ids[i], items[i]) for i in sorted(ids)])
    for index, item in enumerate(items):
        if results[index] is None:
            assert item.key is not None
            results[index] = _resend(results[first[item.key]], items[first[item.key]], item)
    return [r for r in results if r is not None]


def _insert_new(session: Session, items: list[NewMessage], todo: list[int], client_id: int | None,
                results: list[Submitted | None]) -> dict[int, str]:
    """Insert the message rows of ``todo`` (indexes); those that clash are looked up and
    answered in ``results``, or, when their id belongs to another's message, inserted under
    a fresh internal id. The internal id of each inserted item, by index."""
    ids = {i: _first_choice_id(items[i]) for i in todo}
    done = _insert_messages(session, items, ids, client_id)
    for _attempt in (1, 2):
        clashed = [i for i in ids if i not in done and results[i] is None]
        if not clashed:
            break
        _resolve_stored(session, items, clashed, client_id, results)
        retry = {i: uuid.uuid4().hex for i in clashed if results[i] is None}
        ids.update(retry)
        done |= _insert_messages(session, items, retry, client_id)
    for index, item in enumerate(items):  # still unresolved: created by a race that then vanished
        if index in ids and index not in done and results[index] is None:
            raise RuntimeError(f"message {item.key!r} could be neither inserted nor found")
    for index in done:
        results[index] = Submitted(ids[index], items[index].client_ref, True)
    return {i: ids[i] for i in done}


def _first_choice_id(item: NewMessage) -> str:
    if item.message_id is not None:
        return item.message_id
    if item.client_ref is not None and not item.client_ref.startswith(SYSTEM_ID_PREFIX):
        return item.client_ref
    return uuid.uuid4().hex


def _insert_messages(session: Session, items: list[NewMessage], ids: dict[int, str],
                     client_id: int | None) -> set[int]:
    """One INSERT … ON CONFLICT DO NOTHING RETURNING id of the message rows; the indexes inserted."""
    if not ids:
        return set()
    now = utcnow()
    rows = [{"id": message_id, "client_id": client_id, "client_ref": items[i].client_ref,
             "conversation_id": items[i].conversation_id, "channel": items[i].channel,
             "recipient": items[i].recipient, "content": items[i].content, "status": MessageStatus.QUEUED,
             "attempts": 0, "created_at": now, "updated_at": now} for i, message_id in ids.items()]
    table = _table(Message)
    stmt = _insert_ignoring_conflicts(session, table).returning(table.c.id)
    inserted = set(session.execute(stmt, rows).scalars())
    return {i for i, message_id in ids.items() if message_id in inserted}


def _table(model: type[Any]) -> Table:
    """A model's table, for Core multi-row INSERTs (no ORM unit of work per row)."""
    return cast(Table, model.__table__)


def _insert_ignoring_conflicts(session: Session, table: Table) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def _resolve_stored(session: Session, items: list[NewMessage], indexes: list[int], client_id: int | None,
                    results: list[Submitted | None]) -> None:
    """Answer each item of ``indexes`` whose id names a stored message of this owner
    (a duplicate or a conflict, in ``results``); the others stay None. One read."""
    refs = [items[i].client_ref for i in indexes if items[i].client_ref is not None]
    system_ids = [items[i].message_id for i in indexes if items[i].client_ref is None and items[i].message_id]
    if not refs and not system_ids:
        return
    owner = Message.client_id.is_(None) if client_id is None else Message.client_id == client_id
    rows = session.execute(select(
        Message.id, Message.client_id, Message.client_ref, Message.status, Message.conversation_id,
        Message.channel, Message.recipient, Message.content,
    ).where(or_(and_(owner, Message.client_ref.in_(refs)), Message.id.in_(system_ids)))).all()
    by_ref = {r.client_ref: r for r in rows if r.client_ref is not None and r.client_id == client_id}
    by_id = {r.id: r for r in rows}
    for i in indexes:
        item = items[i]
        row = by_ref.get(item.client_ref) if item.client_ref is not None else by_id.get(item.message_id or "")
        if row is None:
            continue
        results[i] = Submitted(row.id, item.client_ref, False, row.status) if item.same_as(row) else Submitted(
            None, item.client_ref, False, conflict=f"message id {item.key!r} is already used by a different message")


def _resend(first: Submitted | None, first_item: NewMessage, item: NewMessage) -> Submitted:
    """An item repeating the id of an earlier item of the same submission."""
    assert first is not None
    if first.conflict is None and item.same_as(first_item):
        return Submitted(first.id, item.client_ref, False, first.status)
    return Submitted(None, item.client_ref, False,
                     conflict=first.conflict or f"message id {item.key!r} is already used by a different message")


def _insert_rest(session: Session, created: list[tuple[str, NewMessage]]) -> None:
    """The new messages' deliveries, first status rows and outbox events: one multi-row
    INSERT each (``RETURNING`` makes SQLAlchemy send one statement of many rows, not one
    statement per row)."""
    if not created:
        return
    now = utcnow()
    deliveries, history = _table(MessageDelivery), _table(MessageStatusUpdate)
    session.execute(insert(deliveries).returning(deliveries.c.id), [
        {"message_id": message_id, "channel": name, "status": DeliveryStatus.PENDING, "attempts": 0,
         "updated_at": now}
        for message_id, item in created for name in (CHANNELS if item.channel == "all" else (item.channel,))])
    session.execute(insert(history).returning(history.c.id), [
        {"message_id": message_id, "status": MessageStatus.QUEUED, "detail": "accepted", "created_at": now}
        for message_id, _ in created])
    add_events(session, aggregate_type="message", event_type="message.submitted", task_name=ROUTE_TASK,
               events=[(message_id, {"message_id": message_id}) for message_id, _ in created])


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
    channels: Mapping[str, Channel]
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
        claimed = _move(session, delivery, DeliveryStatus.PENDING, status=DeliveryStatus.SENDING,
                        attempts=delivery.attempts + 1, lease_until=now + timedelta(seconds=deps.lease_seconds))
    if not claimed:
        return None
    return _send(deps, message_id, outgoing, delivery.id, delivery.channel, delivery.attempts + 1)


def _move(session: Session, delivery: _Delivery, expect: DeliveryStatus, **values: Any) -> bool:
    """Move the delivery on from ``expect`` if nothing else has since it was read (same
    status, same attempts); whether this call did."""
    return rows_changed(session, update(MessageDelivery).where(
        MessageDelivery.id == delivery.id, MessageDelivery.status == expect,
        MessageDelivery.attempts == delivery.attempts,
    ).values(**values), synchronize=False) == 1


def _settle_lost(deps: RouteDeps, delivery: _Delivery) -> None:
    """A send whose worker died with the lease: its outcome is unknown, so it is failed and
    dead-lettered rather than sent twice."""
    with deps.scope() as session:
        lost = _move(session, delivery, DeliveryStatus.SENDING, status=DeliveryStatus.FAILED, lease_until=None,
                     last_error="worker lost during the send: outcome unknown, not resent")
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
