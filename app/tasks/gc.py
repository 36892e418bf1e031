"""Tasks of the ``gc`` queue: the daily collection of abandoned chunked uploads and the
daily retention purge of stored originals.

Beat sends ``collect_uploads`` at 02:00 UTC and ``purge_expired`` at 03:00 UTC. A Redis
lock makes each single-runner; a run that finds the lock held records a ``skipped`` run
and leaves. Counts go to the job's last-run record (``upload-gc``, ``retention-gc``) and
the upload collection's to the ``uploads_cleaned_total`` metric.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from app.celery_app import celery_app
from app.db import session_scope
from app.metrics import UPLOADS_CLEANED
from app.models.base import utcnow
from app.services.gc import RetentionPolicy, collect_abandoned_uploads, purge_expired_objects
from app.services.schedules import run_locked
from app.settings import get_settings
from app.storage import get_storage
from app.tasks.base import ping_payload

JOB = "upload-gc"
RETENTION_JOB = "retention-gc"
LOCK_TTL = 300.0  # extended by run_locked's heartbeat while a run lasts


@celery_app.task(bind=True, name="app.tasks.gc.ping")
def ping(self) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Probe: answers with the queue and worker that consumed it."""
    return ping_payload(self)


def _clock(now: str | None) -> datetime:
    at = datetime.fromisoformat(now) if now else utcnow()
    if at.tzinfo is None:
        raise ValueError("now must carry a UTC offset")
    return at


def _run(job: str, work: Callable[[], Any]) -> dict[str, Any]:
    """``work()`` under the job's lock, its counts recorded in ``job_runs`` (``run_locked``,
    as every beat job does; a held lock records a skip)."""
    outcome = run_locked(session_scope, job, lambda run: run.counts.update(work().as_dict()), ttl=LOCK_TTL)
    return {"skipped": outcome.skipped, **outcome.counts}


@celery_app.task(bind=True, name="app.tasks.gc.collect_uploads")
def collect_uploads(self, now: str | None = None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Collect abandoned uploads; ``now`` (ISO 8601) moves the clock, for operators and tests."""
    settings, at = get_settings(), _clock(now)
    result = _run(JOB, lambda: collect_abandoned_uploads(
        session_scope, get_storage(settings), now=at, retention=timedelta(hours=settings.files_retention_hours),
        batch_size=settings.files_gc_batch_size))
    UPLOADS_CLEANED.inc(result.get("uploads_cleaned", 0))
    return result


@celery_app.task(bind=True, name="app.tasks.gc.purge_expired")
def purge_expired(self, now: str | None = None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Delete stored originals past their retention (``RETENTION_*``); ``now`` (ISO 8601)
    moves the clock, for operators and tests."""
    settings, at = get_settings(), _clock(now)
    return _run(RETENTION_JOB, lambda: purge_expired_objects(
        session_scope, get_storage(settings), now=at, policy=RetentionPolicy.from_settings(settings),
        batch_size=settings.files_gc_batch_size))
