"""URL scans: the job with its state and optimistic-locking version, its one result, and
the audit log of every state change.

``QUEUED`` → ``FETCHING`` → ``ANALYZING`` → ``COMPLETED``, or ``FAILED`` / ``TIMED_OUT``
(the machine itself is in ``app.services.scans``). Every change is one conditional
UPDATE on ``(id, state, version)`` that bumps ``version``, plus one ``ScanAudit`` row, in
one transaction.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, ClientOwned, utcnow
from app.models.outbox import BigId


class ScanState(StrEnum):
    QUEUED = "QUEUED"
    FETCHING = "FETCHING"
    ANALYZING = "ANALYZING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"


STATES = tuple(ScanState)


class ScanJob(ClientOwned, Base):
    """One URL to scan, its state and the optimistic-lock version."""

    __tablename__ = "scan_jobs"
    __table_args__ = (Index("ix_scan_jobs_state_created", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=ScanState.QUEUED)
    # Optimistic lock: every transition matches the version it read and bumps it.
    version: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    result: Mapped[ScanResult | None] = relationship(
        back_populates="job", lazy="selectin", uselist=False, cascade="all, delete-orphan", passive_deletes=True,
    )
    audit: Mapped[list[ScanAudit]] = relationship(
        order_by="ScanAudit.id", lazy="selectin", cascade="all, delete-orphan", passive_deletes=True,
    )


class ScanResult(Base):
    """What the fetcher saw (its whole JSON document) and the verdict drawn from it."""

    __tablename__ = "scan_results"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("scan_jobs.id", ondelete="CASCADE"), unique=True)
    final_url: Mapped[str | None] = mapped_column(Text, default=None)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    content_type: Mapped[str | None] = mapped_column(String(255), default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    fetch: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    score: Mapped[int] = mapped_column(Integer, default=0)
    risk: Mapped[str] = mapped_column(String(16), default="low")
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    container_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[ScanJob] = relationship(back_populates="result")


class ScanAudit(Base):
    """One state change: who (worker host), when, from what to what, and why."""

    __tablename__ = "scan_audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("scan_jobs.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16), default=None)
    to_state: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(255))
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
