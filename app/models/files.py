"""Chunked file uploads: the ``File`` being assembled and the ``FileChunk`` parts it is made of.

A file moves ``UPLOADING`` → ``MERGING`` → ``COMPLETED`` | ``FAILED``. Chunks live in
storage under ``files/<id>/chunks/<index>`` until the merge has produced and verified
``files/<id>/data``; only then are they (and their rows) deleted.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, ClientOwned, utcnow
from app.models.outbox import BigId


class FileStatus(StrEnum):
    UPLOADING = "UPLOADING"
    MERGING = "MERGING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


UPLOADING, MERGING, COMPLETED, FAILED = FileStatus


class File(ClientOwned, Base):
    __tablename__ = "files"
    __table_args__ = (
        # The garbage collector's scan: uploads of a status idle since before a cutoff.
        Index("ix_files_status_activity", "status", "last_activity_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The client key that created the upload; only it can see or change the file.
    api_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), index=True, default=None
    )
    filename: Mapped[str] = mapped_column(String(255))  # sanitized
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)  # declared by the client
    chunk_size: Mapped[int] = mapped_column(BigInteger)
    total_chunks: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=FileStatus.UPLOADING)
    object_key: Mapped[str | None] = mapped_column(String(1024), default=None)
    final_size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # S3's ETag algorithm: MD5 hex of one part, or MD5 of the parts' MD5s + "-<parts>".
    checksum: Mapped[str | None] = mapped_column(String(64), default=None)
    # SHA-256 of the whole file, where the merge reads it anyway (local backend).
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    failure_reason: Mapped[str | None] = mapped_column(Text, default=None)

    # --- merge bookkeeping -----------------------------------------------------
    merge_attempts: Mapped[int] = mapped_column(Integer, default=0)
    merge_token: Mapped[str | None] = mapped_column(String(64), default=None)  # the current claim
    merge_lease_until: Mapped[datetime | None] = mapped_column(default=None)
    upload_id: Mapped[str | None] = mapped_column(String(1024), default=None)  # S3 multipart upload of the claim
    merge_parts_done: Mapped[int] = mapped_column(Integer, default=0)
    merge_bytes_received: Mapped[int | None] = mapped_column(BigInteger, default=None)

    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow)  # creation or latest chunk
    chunks_purged_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)


class FileChunk(Base):
    __tablename__ = "file_chunks"
    __table_args__ = (UniqueConstraint("file_id", "chunk_index"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column("chunk_index", Integer)
    key: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    checksum: Mapped[str] = mapped_column(String(32))  # MD5 hex: the ETag S3 gives a single PUT
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)  # when it passed through the API
    uploaded_at: Mapped[datetime] = mapped_column(default=utcnow)
