"""Scheduled jobs: tenants, leads, campaigns and their recipients, call requests.

The beat-driven jobs of the ``schedules`` queue read and advance these rows: campaigns
go ``scheduled`` → ``sending`` → ``sent`` | ``failed``; each recipient row is the
send-once guard of one address; calls go ``queued`` → ``dialing`` → ``done`` |
``failed`` | ``expired``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, ClientOwned, utcnow
from app.models.outbox import BigId

CAMPAIGN_CHANNELS = ("email", "whatsapp")


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class CampaignStatus(StrEnum):
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class RecipientStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


class CallStatus(StrEnum):
    QUEUED = "queued"
    DIALING = "dialing"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


CALL_TERMINAL = (CallStatus.DONE, CallStatus.FAILED, CallStatus.EXPIRED)


def new_public_id() -> str:
    """The id the API shows for a row: random, so no client can guess another's."""
    return uuid.uuid4().hex


class PublicId:
    """Mixin: an opaque id for URLs and request bodies; the integer key stays internal."""

    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)


class Tenant(PublicId, ClientOwned, Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(32), default="trial")  # trial | paid plans
    trial_ends_at: Mapped[datetime | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(16), default=TenantStatus.ACTIVE, index=True)
    suspended_at: Mapped[datetime | None] = mapped_column(default=None)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # {"mon": [["09:00", "18:00"]], ...}: wall-clock opening intervals per weekday.
    business_hours: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lead(PublicId, ClientOwned, Base):
    __tablename__ = "leads"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    phone: Mapped[str | None] = mapped_column(String(32), default=None)
    next_reminder_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    reminders_sent: Mapped[int] = mapped_column(Integer, default=0)
    last_reminder_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    tenant: Mapped[Tenant] = relationship(viewonly=True)


class Campaign(PublicId, ClientOwned, Base):
    __tablename__ = "campaigns"
    __table_args__ = (Index("ix_campaigns_status_scheduled", "status", "scheduled_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(300), default="")
    template: Mapped[str] = mapped_column(Text)
    scheduled_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.SCHEDULED)
    total: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    batches: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    tenant: Mapped[Tenant] = relationship(viewonly=True)


class CampaignRecipient(Base):
    """One address of a campaign; its status is the send-once guard."""

    __tablename__ = "campaign_recipients"
    __table_args__ = (
        UniqueConstraint("campaign_id", "address"),
        Index("ix_campaign_recipients_campaign_batch", "campaign_id", "batch"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16), default=RecipientStatus.PENDING)
    batch: Mapped[int | None] = mapped_column(Integer, default=None)
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)


class CallRequest(PublicId, ClientOwned, Base):
    __tablename__ = "call_requests"
    __table_args__ = (Index("ix_call_requests_status_scheduled", "status", "scheduled_for"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    scheduled_for: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default=CallStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    provider_call_id: Mapped[str | None] = mapped_column(String(200), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    tenant: Mapped[Tenant] = relationship(viewonly=True)
    lead: Mapped[Lead] = relationship(viewonly=True)
