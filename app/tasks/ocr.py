"""Tasks of the ``ocr`` queue (routed by module in celeryconfig): OCR one upload.

The task is thin: it hands ``app.services.ocr.process_upload`` its dependencies (session
scope, storage, limits, the private temp root) and turns an unreachable database or
object store into a retry with exponential backoff and jitter; after the last retry the
upload is failed with the reason. Celery's soft time limit (30 s before the hard one)
reaches the service as a deadline, which fails the upload cleanly.

Each Tesseract subprocess runs with ``OMP_THREAD_LIMIT`` (``OCR_OMP_THREAD_LIMIT``): its
OpenMP threads otherwise fight each other and the other pool processes (one thread is
about five times faster per page here). Only the subprocess gets it, not this process.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy.exc import InterfaceError, OperationalError

from app.celery_app import celery_app
from app.db import session_scope
from app.metrics import OCR_PAGES, OCR_UPLOADS
from app.services.ocr import OcrDeps, OcrLimits, default_tmp_root, fail_upload, process_upload, set_thread_limit
from app.settings import get_settings
from app.storage import StorageUnavailable, get_storage
from app.tasks.base import ping_payload

logger = logging.getLogger(__name__)

_settings = get_settings()
set_thread_limit(_settings.ocr_omp_thread_limit)

#: Worth another try: the database or the object store could not be reached.
TRANSIENT = (OperationalError, InterfaceError, StorageUnavailable, ConnectionError, TimeoutError)
MAX_RETRIES = 5


@celery_app.task(bind=True, name="app.tasks.ocr.ping")
def ping(self) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Probe: answers with the queue and worker that consumed it."""
    return ping_payload(self)


@celery_app.task(
    bind=True,
    name="app.tasks.ocr.process",
    max_retries=MAX_RETRIES,
    soft_time_limit=_settings.ocr_task_time_limit - 30,
    time_limit=_settings.ocr_task_time_limit,
)
def process(self, upload_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """OCR one upload and store its text and parsed preview (idempotent)."""
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
    except TRANSIENT as exc:
        if self.request.retries >= self.max_retries:
            reason = f"gave up after {self.request.retries} retries: {type(exc).__name__}: {exc}"[:500]
            try:
                fail_upload(session_scope, upload_id, reason)
            except TRANSIENT:
                logger.error("could not record the failure", extra={"upload_id": upload_id})
            raise
        countdown = get_exponential_backoff_interval(factor=2, retries=self.request.retries, maximum=120,
                                                     full_jitter=True)
        logger.warning("transient error; retrying", extra={"upload_id": upload_id, "error": str(exc)[:200],
                                                           "countdown": countdown})
        raise self.retry(exc=exc, countdown=countdown) from None
    OCR_UPLOADS.labels(result=outcome.result).inc()
    if outcome.result == "ready":
        OCR_PAGES.inc(outcome.pages)
    return {"upload_id": upload_id, "result": outcome.result, "status": outcome.status, "pages": outcome.pages,
            "error": outcome.error}
