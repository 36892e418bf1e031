"""Tasks of the `voice` queue (routed by module in celeryconfig): score one clip, sweep leases.

The ONNX model and the speech recognition model are loaded once per pool process in
``worker_process_init`` (only in workers that consume the `voice` queue, so a worker
of other queues does not carry them), never per task. Pools without processes (solo,
threads) load them on first use, once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

from app.celery_app import celery_app
from app.db import TRANSIENT_DB, session_scope
from app.services.voice import jobs as voice_jobs
from app.services.voice.model import AudioError, ScoringDeps, deps_from_settings, score_clip
from app.outbound import parse_allow
from app.services.voice.jobs import AudioFetchError, AudioURLBlocked, NotHolder
from app.settings import Settings, get_settings
from app.storage import Storage, StorageKeyNotFound, get_storage
from app.tasks.base import HandBackRetry, ping_payload
from app.tasks.batching import ALONE, DONE, BatchedTask, BatchItem

logger = logging.getLogger(__name__)

_deps: ScoringDeps | None = None
_deps_lock = threading.Lock()
_consumes_voice = True

TIMED_OUT = "timed_out: scoring exceeded the task's time limit"

#: Longest a scored result of a batch waits to be committed with the next ones, seconds.
RESULTS_WAIT = 0.25

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


class ScoreTask(BatchedTask, HandBackRetry):
    """``score``, which a voice worker with a backlog runs several clips at a time (app.tasks.batching)."""

    @property
    def batch_max(self) -> int:  # type: ignore[override]
        return get_settings().voice_batch_max

    def batchable(self, request: Any) -> bool:
        kwargs = request.kwargs or {}
        return (super().batchable(request) and set(kwargs) == {"task_id"} and isinstance(kwargs["task_id"], str)
                and not request.request_dict.get("retries"))

    def run_batch(self, items: Sequence[BatchItem]) -> list[tuple[str, Any]]:
        return score_batch(items)


# track_started off: the row's ``processing`` status already says the task started, and
# the STARTED state would cost a result-backend write per clip.
@celery_app.task(bind=True, base=ScoreTask, name="app.tasks.voice.score", max_retries=0, track_started=False)
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
            claimed = voice_jobs.claim_many(session, [task_id], holder, settings.voice_lease_seconds)
            if task_id not in claimed:
                return _not_claimed(task_id, voice_jobs.statuses(session, [task_id]))
    except TRANSIENT_DB as exc:
        # Nothing is claimed yet and the task is still ``pending``: without a retry no
        # message would ever score it (the lease sweep only takes back held tasks).
        countdown = get_exponential_backoff_interval(factor=1, retries=self.request.retries, maximum=60,
                                                     full_jitter=True)
        logger.warning("database unavailable; retrying", extra={"task_id": task_id, "error": str(exc)[:200]})
        raise self.retry(exc=exc, countdown=max(0.5, countdown), max_retries=DB_MAX_RETRIES) from None
    result, outcome = _score_held(task_id, claimed[task_id], holder, settings, get_storage(settings))
    if result is None:
        return outcome
    return _record_results(holder, [(task_id, result)])[0]


def score_batch(items: Sequence[BatchItem]) -> list[tuple[str, Any]]:
    """Several ``score`` requests in one pool call: one claim for all, then each clip as ``score`` does.

    Results are committed together, at the end of the batch or as soon as the oldest
    one has waited RESULTS_WAIT seconds (so slow clips, with speech recognition, are
    each visible as soon as they are scored). The leases of the clips still waiting are
    renewed as the batch goes on. If the claim itself fails (database unavailable), every
    request goes back to the single-request path, whose retries take over.
    """
    settings = get_settings()
    holder = f"celery:{items[0].hostname}"
    ids = [item.kwargs["task_id"] for item in items]
    try:
        with session_scope() as session:
            claimed = voice_jobs.claim_many(session, list(dict.fromkeys(ids)), holder, settings.voice_lease_seconds)
            current = voice_jobs.statuses(session, [i for i in ids if i not in claimed])
    except TRANSIENT_DB as exc:
        logger.warning("database unavailable; scoring one by one", extra={"error": str(exc)[:200]})
        return [(ALONE, None)] * len(items)
    storage = get_storage(settings)
    outcomes: dict[int, dict[str, Any]] = {}
    scored: list[tuple[int, str, dict[str, Any]]] = []  # results not committed yet
    first_scored = 0.0
    waiting = list(claimed)
    renewed = time.monotonic()
    out_of_time = False

    def commit_scored() -> None:
        for (n, _, _), outcome in zip(scored, _record_results(holder, [(t, r) for _, t, r in scored]), strict=True):
            outcomes[n] = outcome
        scored.clear()

    for n, task_id in enumerate(ids):
        if task_id not in waiting:
            outcomes[n] = _not_claimed(task_id, current | dict.fromkeys(claimed, "processing"))
            continue
        waiting.remove(task_id)
        if out_of_time:
            outcomes[n] = _record_failure(task_id, holder, settings, "timed_out: not scored before the time limit "
                                          "of the batch it was in", retryable=True)
            continue
        if time.monotonic() - renewed > settings.voice_lease_seconds / 3:
            with session_scope() as session:
                voice_jobs.renew_leases(session, [task_id, *waiting, *(t for _, t, _ in scored)], holder,
                                         settings.voice_lease_seconds)
            renewed = time.monotonic()
        result, outcome = _score_held(task_id, claimed[task_id], holder, settings, storage)
        if result is None:
            # A clip that ran out of the batch's time is recorded as failed (retryable);
            # the clips after it are given back the same way, unscored.
            out_of_time = outcome.get("reason") == TIMED_OUT
            outcomes[n] = outcome
            continue
        if not scored:
            first_scored = time.monotonic()
        scored.append((n, task_id, result))
        if time.monotonic() - first_scored >= RESULTS_WAIT:
            commit_scored()
    commit_scored()
    # Each request's result says how many clips shared its pool call.
    return [(DONE, outcomes[n] | {"batch": len(ids)}) for n in range(len(ids))]


def _not_claimed(task_id: str, current: dict[str, str]) -> dict[str, Any]:
    if task_id not in current:
        logger.warning("voice task does not exist", extra={"task_id": task_id})
        return {"task_id": task_id, "result": "missing"}
    return {"task_id": task_id, "result": "not_claimed", "status": current[task_id]}


def _score_held(task_id: str, task: voice_jobs.Claimed, holder: str, settings: Settings,
                storage: Storage) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Score a task this worker holds: ``(result, {})``, or ``(None, outcome)`` with the
    reason it could not be scored already recorded."""
    try:
        data = voice_jobs.read_audio(
            task.audio_key, task.audio_url, storage.open,
            timeout=settings.voice_fetch_timeout, max_bytes=settings.voice_max_audio_bytes,
            allow=parse_allow(settings.voice_fetch_allow),
        )
        result = score_clip(scoring_deps(), data, task.transcript)
    except AudioError as exc:
        return None, _record_failure(task_id, holder, settings, str(exc), retryable=False)
    except StorageKeyNotFound as exc:
        return None, _record_failure(task_id, holder, settings, f"audio_missing: {exc}", retryable=False)
    except AudioURLBlocked as exc:
        # The reason the client sees names the rule only; the address goes to the log.
        logger.warning("voice audio_url refused", extra={"task_id": task_id, "detail": str(exc)})
        return None, _record_failure(task_id, holder, settings, "blocked_address", retryable=False)
    except AudioFetchError as exc:
        # Connection refused, an internal port's HTTP 404, a timeout...: detail that would
        # tell the client about the network behind the worker, so it stays in the log.
        logger.warning("voice audio_url not fetched", extra={"task_id": task_id, "detail": str(exc)})
        return None, _record_failure(task_id, holder, settings, "audio_fetch_failed", retryable=True)
    except ValueError as exc:
        return None, _record_failure(task_id, holder, settings, f"nothing_to_score: {exc}", retryable=False)
    except SoftTimeLimitExceeded:
        return None, _record_failure(task_id, holder, settings, TIMED_OUT, retryable=True)
    result["scored_by"] = holder
    return result, {}


def _record_results(holder: str, results: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Record scored results in one transaction; the outcome of each (``lease_lost`` when
    the lease ran out and the task was taken back: whoever holds it now scores it)."""
    from app.metrics import VOICE_RISK

    if not results:
        return []
    with session_scope() as session:
        lost = voice_jobs.record_results(session, holder, results)
    outcomes = []
    for task_id, result in results:
        if task_id in lost:
            logger.warning("voice result discarded: lease lost", extra={"task_id": task_id, "status": lost[task_id]})
            outcomes.append({"task_id": task_id, "result": "lease_lost"})
            continue
        logger.info("voice task completed", extra={"task_id": task_id, "risk_level": result["risk_level"],
                                                   "scam_score": result["scam_score"]})
        VOICE_RISK.labels(risk_level=result["risk_level"]).inc()
        outcomes.append({"task_id": task_id, "result": "completed", "risk_level": result["risk_level"]})
    return outcomes


def _record_failure(task_id: str, holder: str, settings: Settings, reason: str, retryable: bool) -> dict[str, Any]:
    with session_scope() as session:
        try:
            t = voice_jobs.fail(session, task_id, holder, reason, retryable=retryable,
                                 max_attempts=settings.voice_max_attempts)
            status = t.status
        except NotHolder as exc:
            status = exc.status
    logger.warning("voice task not scored", extra={"task_id": task_id, "reason": reason, "status": status})
    return {"task_id": task_id, "result": "failed", "status": status, "reason": reason}


@celery_app.task(name="app.tasks.voice.sweep_leases")
def sweep_leases() -> dict[str, int]:
    """Beat: return voice tasks whose lease expired to ``pending`` (or fail them after the last attempt)."""
    settings = get_settings()
    with session_scope() as session:
        result = voice_jobs.sweep_expired(session, settings.voice_max_attempts)
    return {"returned": result.returned, "failed": result.failed}
