"""OCR uploads: one row per uploaded scorecard, from upload to parsed preview.

``uploaded`` → ``queued`` (``POST /api/uploads/<id>/complete``, with its outbox event)
→ ``processing`` (claimed by a worker with a fresh ``claim_token``) → ``ready`` with the
OCR text and the parsed preview | ``failed`` with a readable ``error``. Progress
(``pages_done`` of ``pages_total``) is written after every page, so the API shows it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, ClientOwned, utcnow


class UploadStatus(StrEnum):
    UPLOADED = "uploaded"
    QUEUED = "queued"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class Upload(ClientOwned, Base):
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))
    # Detected from the bytes (libmagic), never taken from the name or the client.
    content_type: Mapped[str | None] = mapped_column(String(100), default=None)
    size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    storage_key: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), default=UploadStatus.UPLOADED, index=True)
    pages_total: Mapped[int | None] = mapped_column(Integer, default=None)
    pages_done: Mapped[int] = mapped_column(Integer, default=0)
    text: Mapped[str | None] = mapped_column(Text, default=None)
    #: Mean Tesseract word confidence (0–100) of each page, in page order.
    page_confidences: Mapped[list[float] | None] = mapped_column(JSON, default=None)
    parsed_preview: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # Each processing attempt takes a new token by a conditional UPDATE; progress and the
    # result are written only while the token is still ours, so a redelivered task that
    # starts over makes a stale attempt's writes no-ops.
    claim_token: Mapped[str | None] = mapped_column(String(32), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    ocr_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    #: When the retention purge deleted the stored original (``storage_key`` names nothing since).
    original_purged_at: Mapped[datetime | None] = mapped_column(default=None)
