"""Tasks of the ``gc`` queue: the daily collection of abandoned chunked uploads and the
daily retention purge of stored originals.

Beat sends ``collect_uploads`` at 02:00 UTC and ``purge_expired`` at 03:00 UTC. Each is a
beat job (``periodic``): single-runner under its Redis lock (a run that finds the lock
held records a ``skipped`` run and leaves), its counts in the job's last-run record
(``upload-gc``, ``retention-gc``) and the upload collection's in the
``uploads_cleaned_total`` metric. ``now`` (ISO 8601) moves the clock, for operators and tests.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from app.celery_app import celery_app
from app.db import session_scope
from app.metrics import UPLOADS_CLEANED
from app.services import jobs
from app.services.gc import RetentionPolicy, collect_abandoned_uploads, purge_expired_objects
from app.services.jobs import RunHandle
from app.settings import get_settings
from app.storage import get_storage
from app.tasks.base import periodic

JOB = jobs.UPLOAD_GC
RETENTION_JOB = jobs.RETENTION_GC
LOCK_TTL = 300.0  # extended by run_locked's heartbeat while a run lasts


@celery_app.task(name="app.tasks.gc.collect_uploads")
@periodic(JOB, ttl=LOCK_TTL)
def collect_uploads(run: RunHandle, at: datetime) -> None:
    """Collect abandoned uploads (chunks deleted, the upload FAILED, stale multipart uploads aborted)."""
    settings = get_settings()
    result = collect_abandoned_uploads(session_scope, get_storage(settings), now=at,
                                       retention=timedelta(hours=settings.files_retention_hours),
                                       batch_size=settings.files_gc_batch_size)
    run.counts.update(result.as_dict())
    UPLOADS_CLEANED.inc(run.counts.get("uploads_cleaned", 0))


@celery_app.task(name="app.tasks.gc.purge_expired")
@periodic(RETENTION_JOB, ttl=LOCK_TTL)
def purge_expired(run: RunHandle, at: datetime) -> None:
    """Delete stored originals past their retention (``RETENTION_*``)."""
    settings = get_settings()
    result = purge_expired_objects(session_scope, get_storage(settings), now=at,
                                   policy=RetentionPolicy.from_settings(settings),
                                   batch_size=settings.files_gc_batch_size)
    run.counts.update(result.as_dict())
