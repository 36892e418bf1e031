"""Tasks of the `voice` queue (routed by module in celeryconfig): score one clip, sweep leases.

Thin over ``app.services.voice.batches``, which claims, scores and records (one job, or a
batch of them when a backlog forms: ``app.tasks.batching``). A claim that meets an
unreachable database is retried by the database policy (``DB_UNAVAILABLE``).

The ONNX model and the speech recognition model are loaded once per pool process in
``worker_process_init`` (only in workers that consume the `voice` queue, so a worker
of other queues does not carry them), never per task. Pools without processes (solo,
threads) load them on first use, once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

from app.celery_app import celery_app
from app.db import session_scope
from app.services import jobs
from app.services.jobs import RunHandle
from app.services.voice import batches
from app.services.voice import jobs as voice_jobs
from app.services.voice.batches import ScoreDeps
from app.services.voice.model import ScoringDeps, deps_from_settings
from app.settings import get_settings
from app.storage import get_storage
from app.tasks.base import DB_UNAVAILABLE, HandBackRetry, periodic
from app.tasks.batching import ALONE, DONE, BatchedTask, BatchItem

logger = logging.getLogger(__name__)

_deps: ScoringDeps | None = None
_deps_lock = threading.Lock()
_consumes_voice = True


@signals.celeryd_init.connect
def _note_queues(options: dict[str, Any] | None = None, **_kwargs: object) -> None:
    # Runs in the worker's main process before the pool forks: remember whether this
    # worker serves `voice` at all (no -Q means every queue).
    global _consumes_voice
    queues = (options or {}).get("queues")
    if queues:
        names = queues.split(",") if isinstance(queues, str) else list(queues)
        _consumes_voice = "voice" in {n.strip() for n in names}


@signals.worker_process_init.connect
def _load_models(**_kwargs: object) -> None:
    if _consumes_voice:
        scoring_deps()


def scoring_deps() -> ScoringDeps:
    """This process's models, loaded on first call."""
    global _deps
    if _deps is None:
        with _deps_lock:
            if _deps is None:
                _deps = deps_from_settings(get_settings())
    return _deps


def _score_deps(hostname: str | None) -> ScoreDeps:
    settings = get_settings()
    return ScoreDeps(scope=session_scope, storage=get_storage(settings), settings=settings, models=scoring_deps,
                     holder=f"celery:{hostname}", deadline_exceptions=(SoftTimeLimitExceeded,))


class ScoreTask(BatchedTask, HandBackRetry):
    """``score``, which a voice worker with a backlog runs several clips at a time (app.tasks.batching)."""

    @property
    def batch_max(self) -> int:  # type: ignore[override]
        return get_settings().voice_batch_max

    def batchable(self, request: Any) -> bool:
        # A retried request (its kwargs carry the retry count) goes alone.
        kwargs = request.kwargs or {}
        return (super().batchable(request) and set(kwargs) == {"task_id"} and isinstance(kwargs["task_id"], str)
                and not request.request_dict.get("retries"))

    def run_batch(self, items: Sequence[BatchItem]) -> list[tuple[str, Any]]:
        return score_batch(items)


# track_started off: the row's ``processing`` status already says the task started, and
# the STARTED state would cost a result-backend write per clip.
@celery_app.task(bind=True, base=ScoreTask, name="app.tasks.voice.score", track_started=False)
def score(self: HandBackRetry, task_id: str, db_retries: int = 0) -> dict[str, Any]:
    """Claim the job (committed before scoring), score it, record the result or the reason it failed.

    A redelivered or duplicate message finds the job no longer ``pending`` and does
    nothing, so each job is scored once, whichever path claimed it. ``db_retries``:
    retries of the claim after database errors so far.
    """
    try:
        return batches.score_one(_score_deps(self.request.hostname), task_id)
    except DB_UNAVAILABLE.transient as exc:
        # Nothing is claimed yet and the job is still ``pending``: without a retry no
        # message would ever score it (the lease sweep only takes back held jobs).
        raise self.retry_for(DB_UNAVAILABLE, exc) from None


def score_batch(items: Sequence[BatchItem]) -> list[tuple[str, Any]]:
    """Several ``score`` requests in one pool call (``batches.score_batch``). If the claim
    itself fails (database unavailable), every request goes back to the single-request
    path, whose retries take over."""
    try:
        outcomes = batches.score_batch(_score_deps(items[0].hostname), [item.kwargs["task_id"] for item in items])
    except DB_UNAVAILABLE.transient as exc:
        logger.warning("database unavailable; scoring one by one", extra={"error": str(exc)[:200]})
        return [(ALONE, None)] * len(items)
    return [(DONE, outcome) for outcome in outcomes]


@celery_app.task(name="app.tasks.voice.sweep_leases")
@periodic(jobs.VOICE_LEASE_SWEEP)
def sweep_leases(run: RunHandle, at: datetime) -> None:
    """Beat: return voice jobs whose lease expired to ``pending`` (or fail them after the last attempt)."""
    with session_scope() as session:
        result = voice_jobs.sweep_expired(session, get_settings().voice_max_attempts, now=at)
    run.counts.update(returned=result.returned, failed=result.failed)
