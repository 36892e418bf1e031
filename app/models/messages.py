"""Outgoing chat messages, their per-channel deliveries, status history and dead letters."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, ClientOwned, utcnow
from app.models.outbox import BigId

CHANNELS = ("whatsapp", "instagram")


class MessageStatus(StrEnum):
    """A message as a whole: ``queued`` until every delivery is settled."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"


class DeliveryStatus(StrEnum):
    """One channel's delivery of a message."""

    PENDING = "pending"
    SENDING = "sending"
    ACCEPTED = "accepted"
    FAILED = "failed"


class Message(ClientOwned, Base):
    __tablename__ = "messages"
    # Client-chosen ids are unique per client, not globally.
    __table_args__ = (UniqueConstraint("client_id", "client_ref"),)

    # Internal id, chosen by the server (a client's id never becomes it): what deliveries,
    # dead letters, outbox events and the dedup keys refer to.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The id the client chose (its idempotency key) or was given; None for messages the
    # system sends on a client's behalf (campaigns), which no client id can name.
    client_ref: Mapped[str | None] = mapped_column(String(64), default=None)
    conversation_id: Mapped[str] = mapped_column(String(128), index=True)
    channel: Mapped[str] = mapped_column(String(16))  # whatsapp | instagram | all
    recipient: Mapped[str] = mapped_column(String(128))
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # The router task that owns this message: the database half of the dedup check,
    # so a flushed Redis cannot let a second router send it.
    router_task_id: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    deliveries: Mapped[list[MessageDelivery]] = relationship(
        back_populates="message", order_by="MessageDelivery.channel", lazy="selectin",
        cascade="all, delete-orphan", passive_deletes=True,
    )
    history: Mapped[list[MessageStatusUpdate]] = relationship(
        order_by="MessageStatusUpdate.id", lazy="selectin", cascade="all, delete-orphan", passive_deletes=True,
    )

    @property
    def channels(self) -> tuple[str, ...]:
        return CHANNELS if self.channel == "all" else (self.channel,)

    @property
    def provider_message_ids(self) -> dict[str, str]:
        return {d.channel: d.provider_message_id for d in self.deliveries if d.provider_message_id}


class MessageDelivery(Base):
    """One channel's send of a message; its state is the exactly-once guard.

    ``pending`` → ``sending`` (claimed by a conditional UPDATE, committed before the HTTP
    call) → ``accepted`` | ``failed``. A redelivered task that finds ``sending`` after
    the lease ran out cannot know whether the provider got the request, so it never
    sends again: the delivery fails with that reason and lands in the dead-letter queue.
    """

    __tablename__ = "message_deliveries"
    __table_args__ = (UniqueConstraint("message_id", "channel"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    provider_message_id: Mapped[str | None] = mapped_column(String(200), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    message: Mapped[Message] = relationship(back_populates="deliveries")


class MessageStatusUpdate(Base):
    __tablename__ = "message_status_updates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeadLetter(ClientOwned, Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text)
    error_kind: Mapped[str] = mapped_column(String(32))  # permanent | exhausted | unknown_outcome
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    replayed_at: Mapped[datetime | None] = mapped_column(default=None)

    message: Mapped[Message] = relationship(viewonly=True)

    @property
    def message_ref(self) -> str:
        """The message's id as its client knows it (the internal id for system messages)."""
        return self.message.client_ref or self.message_id
