"""Voice scoring: the tasks (one call recording or transcript each) and the remote workers
that may pull them over HTTP.

A task moves ``pending`` → ``claimed`` → ``processing`` → ``completed`` | ``failed``.
Every move is a conditional UPDATE on (status, version), so the Celery path and the
HTTP pull path can never both hold one task; ``claimed_by`` names the holder
(``celery:<hostname>`` or ``remote:<worker id>``) and ``lease_until`` bounds the claim.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, ClientOwned, utcnow


class VoiceJobStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class VoiceTarget(StrEnum):
    CELERY = "celery"
    REMOTE = "remote"


class VoiceJob(ClientOwned, Base):
    __tablename__ = "voice_tasks"
    __table_args__ = (
        Index("ix_voice_tasks_pull", "status", "target", "created_at"),
        Index("ix_voice_tasks_lease", "status", "lease_until"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    audio_key: Mapped[str | None] = mapped_column(String(1024), default=None)
    audio_url: Mapped[str | None] = mapped_column(Text, default=None)
    transcript: Mapped[str | None] = mapped_column(Text, default=None)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    target: Mapped[str] = mapped_column(String(16), default=VoiceTarget.CELERY)
    status: Mapped[str] = mapped_column(String(16), default=VoiceJobStatus.PENDING)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    claimed_by: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0)
    api_key_id: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class RemoteWorker(Base):
    """A machine allowed to pull voice tasks; only a hash of its token is stored."""

    __tablename__ = "remote_workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    instance: Mapped[str | None] = mapped_column(String(200), default=None)
    info: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    tasks_completed: Mapped[int] = mapped_column(Integer, default=0)
    tasks_failed: Mapped[int] = mapped_column(Integer, default=0)
