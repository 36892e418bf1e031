"""Tasks of the ``files`` queue: merge an upload's chunks into one object.

Thin over ``app.services.files.merge_file``: the service does the claim, the merge and
the verification; the task turns what must come back later into retries, each kind by
its ``RetryPolicy`` with its count in the task's kwargs: a claim held by another
delivery (``MERGE_BUSY``), a transient storage error (``storage_retry()``: when its
retries are used up the service is told, so the file ends ``FAILED`` with the reason
instead of retrying forever) and an unreachable database (``DB_UNAVAILABLE``: a merge that
gave up on it would leave the file ``MERGING`` with nothing left to finish it).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from app.celery_app import celery_app
from app.db import session_scope
from app.services.files import MergeBusy, TransientMergeError, merge_file
from app.settings import get_settings
from app.storage import get_storage
from app.tasks.base import DB_UNAVAILABLE, HandBackRetry, RetryPolicy

logger = logging.getLogger(__name__)

#: Waits for a claim held by another delivery; each is at most one lease long.
MERGE_BUSY = RetryPolicy(transient=(MergeBusy,), max_retries=50, counter="busy_retries")


def storage_retry() -> RetryPolicy:
    """Retries after a transient storage error (``FILES_MERGE_MAX_RETRIES``, ``FILES_MERGE_RETRY_BACKOFF``)."""
    settings = get_settings()
    return RetryPolicy(transient=(TransientMergeError,), max_retries=settings.files_merge_max_retries,
                       counter="storage_retries", base=settings.files_merge_retry_backoff, cap=300.0, jitter="equal")


@celery_app.task(bind=True, name="app.tasks.files.merge")
def merge(self: HandBackRetry, file_id: str, storage_retries: int = 0, db_retries: int = 0,
          busy_retries: int = 0) -> dict[str, Any]:
    """Merge the chunks of ``file_id`` (status ``MERGING``); idempotent.

    The ``*_retries`` kwargs count the retries of each kind so far (carried across
    retries and hand-backs to the outbox).
    """
    settings = get_settings()
    storage = storage_retry()
    try:
        outcome = merge_file(
            session_scope,
            get_storage(settings),
            file_id,
            lease_seconds=settings.files_merge_lease_seconds,
            final_attempt=storage.used_up(storage_retries),
            attempt_note=f" ({storage_retries + 1} attempts)",
        )
    except MergeBusy as exc:
        if MERGE_BUSY.used_up(busy_retries):
            # Whoever holds the claim finishes the merge (its own message is acked late).
            logger.warning("merge claim still held; giving up this delivery", extra={"file_id": file_id})
            return {"file_id": file_id, "result": "busy"}
        raise self.retry_for(MERGE_BUSY, exc, countdown=exc.retry_in + random.uniform(0.1, 1.0)) from None
    except TransientMergeError as exc:
        raise self.retry_for(storage, exc) from None
    except DB_UNAVAILABLE.transient as exc:
        # A claim this attempt took is released by its lease running out (MergeBusy meanwhile).
        raise self.retry_for(DB_UNAVAILABLE, exc) from None
    return outcome.as_dict()
