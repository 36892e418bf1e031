"""Garbage collection on the ``gc`` queue: abandoned chunked uploads, and the retention
purge of stored originals (``purge_expired_objects``, at the end of this module).

An upload with no activity (creation, a chunk, a complete, a failed merge) for longer
than the retention is abandoned:

- ``UPLOADING`` files become ``FAILED`` ("abandoned …"), then their chunk objects and
  chunk rows are deleted;
- ``FAILED`` files keep their chunks for a retry during the retention, then lose them
  the same way; ``COMPLETED`` files whose chunk clean-up was interrupted are finished;
- the storage's leftovers of interrupted writes from before the cutoff go
  (``Storage.abort_incomplete_uploads``: S3 multipart uploads anywhere in the bucket;
  ``Storage.sweep_temporary``: local temp files under ``files/``), except those of a
  merge that holds a live claim.

Files are handled in batches of ``batch_size``: each batch is marked in one transaction
(locked with SKIP LOCKED on PostgreSQL), committed, and only then are its chunks deleted,
so a client cannot add a chunk to an upload that is being collected. Every step is
idempotent: a second run finds nothing more to do.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from app.db import rows_changed
from app.models.base import utcnow
from app.models.files import COMPLETED, FAILED, MERGING, UPLOADING, File
from app.models.ocr import Upload
from app.models.voice import VoiceJob
from app.services.files import Scope, object_key, purge_chunks
from app.services.voice.jobs import audio_key_for
from app.storage import Storage

logger = logging.getLogger(__name__)


class _Counts:
    """A run's counters (a dataclass of ints); ``as_dict`` goes to the job's last-run record."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass
class GcResult(_Counts):
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


def collect_abandoned_uploads(
    scope: Scope,
    storage: Storage,
    *,
    now: datetime,
    retention: timedelta,
    batch_size: int,
) -> GcResult:
    """Collect what was abandoned before ``now - retention`` (see module docstring)."""
    cutoff = now - retention
    result = GcResult()
    failed_ids: set[str] = set()
    while True:
        kinds = _mark_batch(scope, cutoff, retention, batch_size, failed_ids)
        # Committed: the files no longer accept chunks, so deleting them cannot race an upload.
        if not kinds:
            break
        result.batches += 1
        _purge_batch(scope, storage, kinds, result, failed_ids)
        if len(kinds) < batch_size:
            break

    live = _live_merge_keys(scope, now)
    result.multipart_aborted = storage.abort_incomplete_uploads(cutoff, keep=live)
    result.temp_files_removed = storage.sweep_temporary(cutoff, keep=live, prefix="files/")
    logger.info("upload garbage collection", extra=result.as_dict())
    return result


def _mark_batch(scope: Scope, cutoff: datetime, retention: timedelta, batch_size: int,
                failed_ids: set[str]) -> dict[str, str]:
    """Lock the next batch of due files (SKIP LOCKED on PostgreSQL), fail the abandoned
    ones, and commit; each file's id and kind (a ``GcResult`` counter name)."""
    hours = retention.total_seconds() / 3600
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
        kinds: dict[str, str] = {}
        for file in session.scalars(stmt):
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
    return kinds


def _purge_batch(scope: Scope, storage: Storage, kinds: dict[str, str], result: GcResult,
                 failed_ids: set[str]) -> None:
    """Delete each file's chunks, counting into ``result``; a file that fails is logged,
    counted as an error and left out of the next batches."""
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


def _live_merge_keys(scope: Scope, now: datetime) -> set[str]:
    """Object keys of merges holding an unexpired claim: their uploads are in use."""
    with scope() as session:
        ids = session.scalars(
            select(File.id).where(File.status == MERGING, File.merge_lease_until.is_not(None),
                                  File.merge_lease_until >= now)
        ).all()
    return {object_key(i) for i in ids}


# --- retention of stored originals --------------------------------------------------------------

#: Where uploaded voice clips are stored (``app.services.voice.jobs.audio_key_for``); a
#: task naming an object elsewhere (a client's own ``storage_key``) is not ours to delete.
VOICE_AUDIO_PREFIX = "voice/"


@dataclass(frozen=True)
class RetentionPolicy:
    """How long stored objects are kept (``RETENTION_*`` settings)."""

    originals: timedelta  # after a job finished well (OCR ready, voice completed)
    failed: timedelta  # after a job failed
    incomplete: timedelta  # an OCR upload never completed

    @classmethod
    def from_settings(cls, settings: Any) -> RetentionPolicy:
        return cls(originals=timedelta(days=settings.retention_originals_days),
                   failed=timedelta(days=settings.retention_failed_days),
                   incomplete=timedelta(hours=settings.retention_incomplete_hours))


@dataclass
class RetentionResult(_Counts):
    """Counts of one retention purge (they go to the job's last-run record)."""

    ocr_incomplete_failed: int = 0  # uploads never completed: FAILED, file deleted
    ocr_originals_deleted: int = 0  # originals of ready uploads
    ocr_failed_deleted: int = 0  # originals of failed uploads
    voice_audio_deleted: int = 0  # clips of completed or failed voice tasks
    errors: int = 0


def purge_expired_objects(
    scope: Scope,
    storage: Storage,
    *,
    now: datetime,
    policy: RetentionPolicy,
    batch_size: int,
) -> RetentionResult:
    """Delete the stored objects whose retention ran out, and record it on their rows.

    - an OCR upload still ``uploaded`` (its ``complete`` never came) created before
      ``now - policy.incomplete`` is FAILED (conditionally: a ``complete`` that wins the
      race keeps it) and its object deleted, whether a multipart upload stored it or a
      presigned PUT did;
    - the original of a ``ready`` upload finished before ``now - policy.originals``, and
      of a ``failed`` one before ``now - policy.failed``, is deleted; the row keeps its
      text, preview or reason and gets ``original_purged_at``;
    - the clip of a completed (failed) voice task under ``voice/`` is deleted after the
      same periods and the task's ``audio_key`` cleared, so no URL is made for it again.

    Queued and processing uploads, pending or held voice tasks and anything younger
    than its period are kept. The object is deleted before the row is marked, so an
    interrupted run leaves work the next run repeats (deleting is idempotent). An
    object that cannot be deleted is counted in ``errors`` and left for the next run.
    """
    result = RetentionResult()
    _purge_incomplete_uploads(scope, storage, now - policy.incomplete, policy.incomplete, result, batch_size)
    for status, age, counter in (("ready", policy.originals, "ocr_originals_deleted"),
                                 ("failed", policy.failed, "ocr_failed_deleted")):
        _purge_finished_uploads(scope, storage, status, now - age, counter, result, batch_size)
    for status, age in (("completed", policy.originals), ("failed", policy.failed)):
        _purge_voice_audio(scope, storage, status, now - age, result, batch_size)
    logger.info("retention purge", extra=result.as_dict())
    return result


def _delete(storage: Storage, key: str, what: str, row_id: str, result: RetentionResult) -> bool:
    try:
        storage.delete(key)
        return True
    except Exception:
        logger.exception("could not delete an expired object", extra={"kind": what, "id": row_id, "key": key})
        result.errors += 1
        return False


def _purge_incomplete_uploads(scope: Scope, storage: Storage, cutoff: datetime, age: timedelta,
                              result: RetentionResult, batch_size: int) -> None:
    hours = age.total_seconds() / 3600
    while True:
        with scope() as session:
            stmt = (select(Upload.id, Upload.storage_key)
                    .where(Upload.status == "uploaded", Upload.created_at < cutoff)
                    .order_by(Upload.created_at, Upload.id).limit(batch_size))
            batch = session.execute(stmt).all()
            failed: list[tuple[str, str]] = []
            for upload_id, key in batch:
                now = utcnow()
                if rows_changed(
                    session,
                    update(Upload).where(Upload.id == upload_id, Upload.status == "uploaded")
                    .values(status="failed", finished_at=now, updated_at=now, claim_token=None,
                            error=f"abandoned: the upload was not completed within {hours:g} h; its file was deleted"),
                    synchronize=False,
                ):
                    failed.append((upload_id, key))
        # Committed: a late ``complete`` now answers "failed", so the object can go. A row
        # failed here whose object could not be deleted is left to the failed-upload purge.
        _purge_upload_objects(scope, storage, failed, "ocr_incomplete_failed", result)
        if len(batch) < batch_size:
            return


def _purge_finished_uploads(scope: Scope, storage: Storage, status: str, cutoff: datetime, counter: str,
                            result: RetentionResult, batch_size: int) -> None:
    skip: set[str] = set()
    while True:
        with scope() as session:
            batch = session.execute(
                select(Upload.id, Upload.storage_key)
                .where(Upload.status == status, Upload.original_purged_at.is_(None),
                       func.coalesce(Upload.finished_at, Upload.updated_at) < cutoff, Upload.id.not_in(skip))
                .order_by(Upload.finished_at, Upload.id).limit(batch_size)
            ).all()
        # Rows purged leave the selection; those that could not be are skipped until the next run.
        skip.update(_purge_upload_objects(scope, storage, [(i, k) for i, k in batch], counter, result))
        if len(batch) < batch_size:
            return


def _purge_upload_objects(scope: Scope, storage: Storage, uploads: list[tuple[str, str]], counter: str,
                          result: RetentionResult) -> set[str]:
    """Delete the uploads' objects and mark them purged; the ids that could not be deleted."""
    deleted = [upload_id for upload_id, key in uploads if _delete(storage, key, "ocr", upload_id, result)]
    if not deleted:
        return {upload_id for upload_id, _ in uploads}
    with scope() as session:
        session.execute(
            update(Upload).where(Upload.id.in_(deleted), Upload.original_purged_at.is_(None))
            .values(original_purged_at=utcnow()),
            execution_options={"synchronize_session": False},
        )
    setattr(result, counter, getattr(result, counter) + len(deleted))
    return {upload_id for upload_id, _ in uploads} - set(deleted)


def _purge_voice_audio(scope: Scope, storage: Storage, status: str, cutoff: datetime, result: RetentionResult,
                       batch_size: int) -> None:
    skip: set[str] = set()
    while True:
        with scope() as session:
            batch = session.execute(
                select(VoiceJob.id, VoiceJob.audio_key)
                .where(VoiceJob.status == status, VoiceJob.audio_key.like(f"{VOICE_AUDIO_PREFIX}%"),
                       func.coalesce(VoiceJob.finished_at, VoiceJob.updated_at) < cutoff,
                       VoiceJob.id.not_in(skip))
                .order_by(VoiceJob.finished_at, VoiceJob.id).limit(batch_size)
            ).all()
        for task_id, key in batch:
            # Only the clip stored for this very task (voice/<id>/audio), never another task's.
            if key != audio_key_for(task_id) or not _delete(storage, key, "voice", task_id, result):
                skip.add(task_id)
                continue
            with scope() as session:
                cleared = rows_changed(
                    session,
                    update(VoiceJob).where(VoiceJob.id == task_id, VoiceJob.audio_key == key,
                                            VoiceJob.status == status)
                    .values(audio_key=None),
                    synchronize=False,
                )
            result.voice_audio_deleted += cleared
            if not cleared:
                skip.add(task_id)
        if len(batch) < batch_size:
            return
