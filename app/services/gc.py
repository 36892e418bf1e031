"""Garbage collection of abandoned chunked uploads (the daily job on the ``gc`` queue).

An upload with no activity (creation, a chunk, a complete, a failed merge) for longer
than the retention is abandoned:

- ``UPLOADING`` files become ``FAILED`` ("abandoned …"), then their chunk objects and
  chunk rows are deleted;
- ``FAILED`` files keep their chunks for a retry during the retention, then lose them
  the same way; ``COMPLETED`` files whose chunk clean-up was interrupted are finished;
- incomplete S3 multipart uploads initiated before the cutoff are aborted, except the
  one of a merge that holds a live claim; on the local backend, temp files a killed
  write left under ``files/`` are removed.

Files are handled in batches of ``batch_size``: each batch is marked in one transaction
(locked with SKIP LOCKED on PostgreSQL), committed, and only then are its chunks deleted,
so a client cannot add a chunk to an upload that is being collected. Every step is
idempotent: a second run finds nothing more to do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select

from app.models.files import COMPLETED, FAILED, MERGING, UPLOADING, File
from app.services.files import Scope, object_key, purge_chunks
from app.storage import TMP_PREFIX, LocalStorage, S3Storage, Storage

logger = logging.getLogger(__name__)


@dataclass
class GcResult:
    """Counts of one collection run (they go to the job's last-run record)."""

    abandoned: int = 0  # UPLOADING files marked FAILED
    expired_failed: int = 0  # FAILED files whose kept chunks expired
    finished_completed: int = 0  # COMPLETED files whose chunk clean-up had been interrupted
    uploads_cleaned: int = 0  # files whose chunks were deleted, all kinds
    chunk_objects_deleted: int = 0
    chunk_rows_deleted: int = 0
    multipart_aborted: int = 0
    temp_files_removed: int = 0
    errors: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def collect_abandoned_uploads(
    scope: Scope,
    storage: Storage,
    *,
    now: datetime,
    retention: timedelta,
    batch_size: int,
    on_batch: Callable[[], Any] | None = None,
) -> GcResult:
    """Collect what was abandoned before ``now - retention`` (see module docstring)."""
    cutoff = now - retention
    hours = retention.total_seconds() / 3600
    result = GcResult()
    failed_ids: set[str] = set()
    while True:
        with scope() as session:
            due = or_(
                and_(File.status.in_((UPLOADING, FAILED)), File.last_activity_at < cutoff),
                and_(File.status == COMPLETED, File.completed_at < cutoff),
            )
            stmt = (
                select(File)
                .where(File.chunks_purged_at.is_(None), due)
                .order_by(File.last_activity_at, File.id)
                .limit(batch_size)
            )
            if failed_ids:
                stmt = stmt.where(File.id.not_in(failed_ids))
            if session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            batch = list(session.scalars(stmt))
            kinds: dict[str, str] = {}
            for file in batch:
                if file.status == UPLOADING:
                    file.status = FAILED
                    file.failure_reason = (
                        f"abandoned: no upload activity for over {hours:g} h "
                        f"(last at {file.last_activity_at.isoformat()}); chunks deleted"
                    )
                    kinds[file.id] = "abandoned"
                elif file.status == FAILED:
                    kinds[file.id] = "expired_failed"  # the reason of its failure stays
                else:
                    kinds[file.id] = "finished_completed"
        # Committed: the files no longer accept chunks, so deleting them cannot race an upload.
        if not batch:
            break
        result.batches += 1
        for file_id, kind in kinds.items():
            try:
                objects, rows = purge_chunks(scope, storage, file_id)
            except Exception:
                logger.exception("could not delete the chunks of an abandoned upload", extra={"file_id": file_id})
                result.errors += 1
                failed_ids.add(file_id)
                continue
            setattr(result, kind, getattr(result, kind) + 1)
            result.uploads_cleaned += 1
            result.chunk_objects_deleted += objects
            result.chunk_rows_deleted += rows
        if on_batch is not None:
            on_batch()
        if len(batch) < batch_size:
            break

    live = _live_merge_keys(scope, now)
    if isinstance(storage, S3Storage):
        result.multipart_aborted = abort_stale_multipart_uploads(storage, cutoff, protect=live)
    elif isinstance(storage, LocalStorage):
        result.temp_files_removed = remove_stale_temp_files(storage, cutoff, protect=live)
    logger.info("upload garbage collection", extra=result.as_dict())
    return result


def _live_merge_keys(scope: Scope, now: datetime) -> set[str]:
    """Object keys of merges holding an unexpired claim: their uploads are in use."""
    with scope() as session:
        ids = session.scalars(
            select(File.id).where(File.status == MERGING, File.merge_lease_until.is_not(None),
                                  File.merge_lease_until >= now)
        ).all()
    return {object_key(i) for i in ids}


def abort_stale_multipart_uploads(storage: S3Storage, cutoff: datetime, protect: set[str]) -> int:
    """Abort incomplete multipart uploads of the bucket initiated before ``cutoff``."""
    client, aborted = storage.client, 0
    args: dict[str, Any] = {"Bucket": storage.bucket}
    while True:
        page = client.list_multipart_uploads(**args)
        for upload in page.get("Uploads", ()):
            if upload["Key"] in protect or upload["Initiated"] >= cutoff:
                continue
            try:
                client.abort_multipart_upload(Bucket=storage.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
            except client.exceptions.NoSuchUpload:
                pass  # completed or aborted meanwhile
        if not page.get("IsTruncated"):
            return aborted
        args.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))


def remove_stale_temp_files(storage: LocalStorage, cutoff: datetime, protect: set[str]) -> int:
    """Remove temp files of writes killed midway under ``files/`` (local backend)."""
    root = storage.path_for("files")
    if not root.is_dir():
        return 0
    protected_dirs = {storage.path_for(k).parent for k in protect}
    limit = cutoff.timestamp()
    removed = 0
    for dirpath, _dirs, names in os.walk(root):
        if Path(dirpath) in protected_dirs:
            continue
        for name in names:
            if not name.startswith(TMP_PREFIX):
                continue
            path = Path(dirpath) / name
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
    return removed
