"""Tasks of the ``files`` queue: merge an upload's chunks into one object.

Thin over ``app.services.files.merge_file``: the service does the claim, the merge and
the verification; the task turns "claim held by another delivery" and transient storage
errors into Celery retries with backoff and jitter, and tells the service when the
retries are used up so the file ends ``FAILED`` with the reason instead of retrying forever.
An unreachable database is retried too: a merge that gave up on it would leave the file
``MERGING`` with nothing left to finish it.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from celery.utils.time import get_exponential_backoff_interval

from app.celery_app import celery_app
from app.db import TRANSIENT_DB, session_scope
from app.services.files import MergeBusy, TransientMergeError, merge_file
from app.settings import get_settings
from app.storage import get_storage
from app.tasks.base import ping_payload

logger = logging.getLogger(__name__)

#: Waits for a claim held by another delivery; each is at most one lease long.
MAX_BUSY_RETRIES = 50
#: Retries after database errors (backoff of up to a minute each: several minutes in all).
DB_MAX_RETRIES = 12


@celery_app.task(bind=True, name="app.tasks.files.ping")
def ping(self) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Probe: answers with the queue and worker that consumed it."""
    return ping_payload(self)


@celery_app.task(bind=True, name="app.tasks.files.merge", max_retries=MAX_BUSY_RETRIES + 50)
def merge(self, file_id: str, failures: int = 0, db_retries: int = 0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Merge the chunks of ``file_id`` (status ``MERGING``); idempotent.

    ``failures`` counts transient storage failures so far, ``db_retries`` retries after
    database errors (both carried across retries).
    """
    settings = get_settings()
    limit = settings.files_merge_max_retries
    try:
        outcome = merge_file(
            session_scope,
            get_storage(settings),
            file_id,
            lease_seconds=settings.files_merge_lease_seconds,
            final_attempt=failures >= limit,
            attempt_note=f" ({failures + 1} attempts)",
        )
    except MergeBusy as exc:
        if self.request.retries >= MAX_BUSY_RETRIES:
            # Whoever holds the claim finishes the merge (its own message is acked late).
            logger.warning("merge claim still held; giving up this delivery", extra={"file_id": file_id})
            return {"file_id": file_id, "result": "busy"}
        raise self.retry(countdown=exc.retry_in + random.uniform(0.1, 1.0))
    except TransientMergeError as exc:
        countdown = get_exponential_backoff_interval(
            factor=settings.files_merge_retry_backoff, retries=failures, maximum=300, full_jitter=False
        ) * random.uniform(0.5, 1.0)
        logger.warning("merge hit a transient storage error; retrying",
                       extra={"file_id": file_id, "error": str(exc)[:300], "countdown": round(countdown, 1)})
        raise self.retry(kwargs={"file_id": file_id, "failures": failures + 1, "db_retries": db_retries},
                         countdown=countdown)
    except TRANSIENT_DB as exc:
        if db_retries >= DB_MAX_RETRIES:
            raise
        # A claim this attempt took is released by its lease running out (MergeBusy meanwhile).
        countdown = get_exponential_backoff_interval(factor=1, retries=db_retries, maximum=60, full_jitter=True)
        logger.warning("database unavailable; retrying", extra={"file_id": file_id, "error": str(exc)[:200]})
        raise self.retry(kwargs={"file_id": file_id, "failures": failures, "db_retries": db_retries + 1},
                         countdown=max(0.5, countdown)) from None
    return outcome.as_dict()
