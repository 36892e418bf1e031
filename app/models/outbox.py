"""Transactional outbox: one row per piece of work to publish, written in the caller's
transaction, published to the broker by the relay (``app.tasks.outbox``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow

# BIGINT on PostgreSQL, INTEGER (rowid alias) on SQLite so autoincrement works there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class OutboxEvent(Base):
    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    aggregate_type: Mapped[str] = mapped_column(String(64))
    aggregate_id: Mapped[str] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(128))
    task_name: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(default=None)
    #: When a worker first started the event's task. A published event nobody took is
    #: published again (the broker can drop a message; see ``redeliver_unconsumed``).
    consumed_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    dead: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        # The relay's scan: unpublished, live events in id order.
        Index(
            "ix_outbox_events_pending",
            "next_attempt_at",
            "id",
            postgresql_where=text("published_at IS NULL AND NOT dead"),
            sqlite_where=text("published_at IS NULL AND dead = 0"),
        ),
        Index("ix_outbox_events_aggregate", "aggregate_type", "aggregate_id"),
        # The redelivery scan: published events no worker has taken yet.
        Index(
            "ix_outbox_events_unconsumed",
            "published_at",
            "id",
            postgresql_where=text("published_at IS NOT NULL AND consumed_at IS NULL"),
            sqlite_where=text("published_at IS NOT NULL AND consumed_at IS NULL"),
        ),
    )
