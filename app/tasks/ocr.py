"""Tasks of the ``ocr`` queue (routed by module in celeryconfig): OCR one upload.

The task is thin: it hands ``app.services.ocr.process_upload`` its dependencies (session
scope, storage, limits, the private temp root) and turns an unreachable database or
object store into a retry by its ``RetryPolicy`` (``OCR_RETRY``: the database policy's
budget of several minutes, the count carried in the task's ``retries`` kwarg, so a
retry handed back to the outbox resumes it); after the last retry the upload is failed
with the reason, and if even that cannot be recorded yet, the task retries until it can
(an upload must never be left ``processing`` with nothing to finish it). Each delivery
that reaches the database also counts an attempt on the upload (``OCR_MAX_ATTEMPTS``).
Celery's soft time limit (30 s before the hard one) reaches the service as a deadline,
which fails the upload cleanly.

Each Tesseract subprocess runs with ``OMP_THREAD_LIMIT`` (``OCR_OMP_THREAD_LIMIT``): its
OpenMP threads otherwise fight each other and the other pool processes (one thread is
about five times faster per page here). Only the subprocess gets it, not this process.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError

from app.celery_app import celery_app
from app.db import session_scope
from app.metrics import OCR_PAGES, OCR_UPLOADS
from app.services.ocr import OcrDeps, OcrLimits, default_tmp_root, fail_upload, process_upload, set_thread_limit
from app.settings import get_settings
from app.storage import StorageUnavailable, get_storage
from app.tasks.base import DB_UNAVAILABLE, HandBackRetry

logger = logging.getLogger(__name__)

_settings = get_settings()
set_thread_limit(_settings.ocr_omp_thread_limit)

#: Worth another try: the database or the object store could not be reached.
TRANSIENT = (OperationalError, InterfaceError, StorageUnavailable, ConnectionError, TimeoutError)
#: The database policy's budget, for the database and the object store alike.
OCR_RETRY = replace(DB_UNAVAILABLE, transient=TRANSIENT, counter="retries")


@celery_app.task(
    bind=True,
    name="app.tasks.ocr.process",
    soft_time_limit=_settings.ocr_task_time_limit - 30,
    time_limit=_settings.ocr_task_time_limit,
)
def process(self: HandBackRetry, upload_id: str, retries: int = 0) -> dict[str, Any]:
    """OCR one upload and store its text and parsed preview (idempotent); ``retries``:
    retries after transient errors so far (``OCR_RETRY``)."""
    settings = get_settings()
    deps = OcrDeps(
        scope=session_scope,
        storage=get_storage(settings),
        limits=OcrLimits.from_settings(settings),
        tmp_root=default_tmp_root(settings.ocr_tmp_dir),
        deadline_exceptions=(SoftTimeLimitExceeded,),
        deadline_seconds=settings.ocr_task_time_limit - 30,
        transient_exceptions=TRANSIENT,
    )
    try:
        outcome = process_upload(deps, upload_id)
    except OCR_RETRY.transient as exc:
        reason = f"gave up after {retries} retries: {type(exc).__name__}: {exc}"[:500]
        raise self.retry_for(OCR_RETRY, exc, give_up=lambda: fail_upload(session_scope, upload_id, reason)) from None
    OCR_UPLOADS.labels(result=outcome.result).inc()
    if outcome.result == "ready":
        OCR_PAGES.inc(outcome.pages)
    return {"upload_id": upload_id, "result": outcome.result, "status": outcome.status, "pages": outcome.pages,
            "error": outcome.error}
