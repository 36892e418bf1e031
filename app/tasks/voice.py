"""Tasks of the `voice` queue (routed by module in celeryconfig): score one clip, sweep leases.

The ONNX model and the speech recognition model are loaded once per pool process in
``worker_process_init`` (only in workers that consume the `voice` queue, so a worker
of other queues does not carry them), never per task. Pools without processes (solo,
threads) load them on first use, once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

from app.celery_app import celery_app
from app.db import TRANSIENT_DB, session_scope
from app.services import voice_tasks
from app.services.voice import AudioError, ScoringDeps, deps_from_settings, score_clip
from app.services.voice_tasks import AudioFetchError, NotHolder, TaskNotFound
from app.settings import get_settings
from app.storage import StorageKeyNotFound, get_storage
from app.tasks.base import ping_payload

logger = logging.getLogger(__name__)

_deps: ScoringDeps | None = None
_deps_lock = threading.Lock()
_consumes_voice = True

#: Retries of a claim after database errors (backoff of up to a minute each: several minutes in all).
DB_MAX_RETRIES = 12


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


@celery_app.task(bind=True, name="app.tasks.voice.ping")
def ping(self) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Probe: answers with the queue and worker that consumed it."""
    return ping_payload(self)


# track_started off: the row's ``processing`` status already says the task started, and
# the STARTED state would cost a result-backend write per clip.
@celery_app.task(bind=True, name="app.tasks.voice.score", max_retries=0, track_started=False)
def score(self, task_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Claim the task (committed before scoring), score it, record the result or the reason it failed.

    A redelivered or duplicate message finds the task no longer ``pending`` and does
    nothing, so each task is scored once, whichever path claimed it.
    """
    settings = get_settings()
    holder = f"celery:{self.request.hostname}"
    try:
        with session_scope() as session:
            # Claimed straight into ``processing``: one statement, committed before scoring.
            task = voice_tasks.claim(session, task_id, holder, settings.voice_lease_seconds, processing=True)
            if task is None:
                current = session.get(voice_tasks.VoiceTask, task_id)
                return {"task_id": task_id, "result": "not_claimed", "status": current.status if current else None}
            audio_key, audio_url, transcript = task.audio_key, task.audio_url, task.transcript
    except TaskNotFound:
        logger.warning("voice task does not exist", extra={"task_id": task_id})
        return {"task_id": task_id, "result": "missing"}
    except TRANSIENT_DB as exc:
        # Nothing is claimed yet and the task is still ``pending``: without a retry no
        # message would ever score it (the lease sweep only takes back held tasks).
        countdown = get_exponential_backoff_interval(factor=1, retries=self.request.retries, maximum=60,
                                                     full_jitter=True)
        logger.warning("database unavailable; retrying", extra={"task_id": task_id, "error": str(exc)[:200]})
        raise self.retry(exc=exc, countdown=max(0.5, countdown), max_retries=DB_MAX_RETRIES) from None

    def _fail(reason: str, retryable: bool) -> dict[str, Any]:
        with session_scope() as session:
            try:
                t = voice_tasks.fail(session, task_id, holder, reason, retryable=retryable,
                                     max_attempts=settings.voice_max_attempts)
                status = t.status
            except NotHolder as exc:
                status = exc.status
        logger.warning("voice task not scored", extra={"task_id": task_id, "reason": reason, "status": status})
        return {"task_id": task_id, "result": "failed", "status": status, "reason": reason}

    storage = get_storage(settings)
    try:
        data = voice_tasks.read_audio(
            audio_key, audio_url, storage.open,
            timeout=settings.voice_fetch_timeout, max_bytes=settings.voice_max_audio_bytes,
        )
        result = score_clip(scoring_deps(), data, transcript)
    except AudioError as exc:
        return _fail(str(exc), retryable=False)
    except StorageKeyNotFound as exc:
        return _fail(f"audio_missing: {exc}", retryable=False)
    except AudioFetchError as exc:
        return _fail(f"audio_unavailable: {exc}", retryable=True)
    except ValueError as exc:
        return _fail(f"nothing_to_score: {exc}", retryable=False)
    except SoftTimeLimitExceeded:
        return _fail("timed_out: scoring exceeded the task's time limit", retryable=True)
    result["scored_by"] = holder
    try:
        with session_scope() as session:
            voice_tasks.complete(session, task_id, holder, result)
    except NotHolder as exc:
        # The lease ran out and the task was taken back; whoever holds it now scores it.
        logger.warning("voice result discarded: lease lost", extra={"task_id": task_id, "status": exc.status})
        return {"task_id": task_id, "result": "lease_lost"}
    logger.info("voice task completed", extra={"task_id": task_id, "risk_level": result["risk_level"],
                                               "scam_score": result["scam_score"]})
    from app.metrics import VOICE_RISK

    VOICE_RISK.labels(risk_level=result["risk_level"]).inc()
    return {"task_id": task_id, "result": "completed", "risk_level": result["risk_level"]}


@celery_app.task(name="app.tasks.voice.sweep_leases")
def sweep_leases() -> dict[str, int]:
    """Beat: return voice tasks whose lease expired to ``pending`` (or fail them after the last attempt)."""
    settings = get_settings()
    with session_scope() as session:
        result = voice_tasks.sweep_expired(session, settings.voice_max_attempts)
    return {"returned": result.returned, "failed": result.failed}
