"""Scoring voice jobs held by this worker: one at a time, or a batch of them in one call.

What the ``voice`` queue's task does, without Celery: claim (committed before scoring, so
each job is scored once, whichever path claimed it), read the audio, score, record the
result or the reason it could not be scored.

``score_one`` claims one job; ``score_batch`` claims several in one statement, then
scores them one by one. A batch's results are committed together, at its end or as soon
as the oldest one has waited ``RESULTS_WAIT`` seconds (so slow clips, with speech
recognition, are each visible as soon as they are scored), and the leases of the jobs
still waiting are renewed as the batch goes on. A clip that runs out of the batch's time
is failed as retryable, and the clips after it are given back the same way, unscored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from app.outbound import parse_allow
from app.services.voice import jobs as voice_jobs
from app.services.voice.jobs import AudioFetchError, AudioURLBlocked, NotHolder
from app.services.voice.model import AudioError, ScoringDeps, score_clip
from app.settings import Settings
from app.storage import Storage, StorageKeyNotFound

logger = logging.getLogger(__name__)

TIMED_OUT = "timed_out: scoring exceeded the task's time limit"
BATCH_TIMED_OUT = "timed_out: not scored before the time limit of the batch it was in"

#: What makes a clip unscorable (``_unscorable`` says why, and whether to try again).
UNSCORABLE = (AudioError, StorageKeyNotFound, AudioURLBlocked, AudioFetchError, ValueError)

#: Longest a scored result of a batch waits to be committed with the next ones, seconds.
RESULTS_WAIT = 0.25


@dataclass
class ScoreDeps:
    """What scoring needs, handed in by the task."""

    scope: Callable[[], AbstractContextManager[Session]]
    storage: Storage
    settings: Settings
    #: This process's models (loaded once per process, on first call).
    models: Callable[[], ScoringDeps]
    #: Who holds the jobs claimed here (``celery:<worker hostname>``).
    holder: str
    #: Exceptions the task's own time limit raises inside us (Celery's soft limit).
    deadline_exceptions: tuple[type[BaseException], ...] = ()


def score_one(deps: ScoreDeps, job_id: str) -> dict[str, Any]:
    """Claim one job, score it, record the outcome. A database error while claiming
    propagates (nothing is claimed yet: the caller retries)."""
    with deps.scope() as session:
        # Claimed straight into ``processing``: one statement, committed before scoring.
        claimed = voice_jobs.claim_many(session, [job_id], deps.holder, deps.settings.voice_lease_seconds)
        if job_id not in claimed:
            return _not_claimed(job_id, voice_jobs.statuses(session, [job_id]))
    result, outcome = _score_held(deps, job_id, claimed[job_id])
    if result is None:
        return outcome
    return _record_results(deps, [(job_id, result)])[0]


def score_batch(deps: ScoreDeps, job_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Several jobs in one call: one claim for all, then each as ``score_one`` does; one
    outcome per id, in order, each saying how many shared the call (``batch``). A database
    error while claiming propagates (nothing is claimed yet)."""
    ids = list(job_ids)
    with deps.scope() as session:
        claimed = voice_jobs.claim_many(session, list(dict.fromkeys(ids)), deps.holder,
                                        deps.settings.voice_lease_seconds)
        current = voice_jobs.statuses(session, [i for i in ids if i not in claimed])
    run = _BatchRun(deps, claimed, current | dict.fromkeys(claimed, "processing"))
    for n, job_id in enumerate(ids):
        run.score(n, job_id)
    run.commit()
    return [run.outcomes[n] | {"batch": len(ids)} for n in range(len(ids))]


@dataclass
class _BatchRun:
    """One batch as it goes: the jobs still to score, the results not committed yet."""

    deps: ScoreDeps
    claimed: dict[str, voice_jobs.Claimed]
    current: dict[str, str]
    outcomes: dict[int, dict[str, Any]] = field(default_factory=dict)
    scored: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    first_scored: float = 0.0
    renewed: float = field(default_factory=time.monotonic)
    out_of_time: bool = False

    def __post_init__(self) -> None:
        self.waiting = list(self.claimed)

    def score(self, n: int, job_id: str) -> None:
        if job_id not in self.waiting:  # not claimed, or a duplicate id already scored
            self.outcomes[n] = _not_claimed(job_id, self.current)
            return
        self.waiting.remove(job_id)
        if self.out_of_time:
            self.outcomes[n] = _record_failure(self.deps, job_id, BATCH_TIMED_OUT, retryable=True)
            return
        self.renew_leases(job_id)
        result, outcome = _score_held(self.deps, job_id, self.claimed[job_id])
        if result is None:
            self.out_of_time = outcome.get("reason") == TIMED_OUT
            self.outcomes[n] = outcome
            return
        if not self.scored:
            self.first_scored = time.monotonic()
        self.scored.append((n, job_id, result))
        if time.monotonic() - self.first_scored >= RESULTS_WAIT:
            self.commit()

    def renew_leases(self, job_id: str) -> None:
        """Push out the leases of the jobs still held once a third of a lease has passed."""
        lease = self.deps.settings.voice_lease_seconds
        if time.monotonic() - self.renewed <= lease / 3:
            return
        with self.deps.scope() as session:
            voice_jobs.renew_leases(session, [job_id, *self.waiting, *(j for _, j, _ in self.scored)],
                                    self.deps.holder, lease)
        self.renewed = time.monotonic()

    def commit(self) -> None:
        recorded = _record_results(self.deps, [(j, r) for _, j, r in self.scored])
        for (n, _, _), outcome in zip(self.scored, recorded, strict=True):
            self.outcomes[n] = outcome
        self.scored.clear()


def _not_claimed(job_id: str, current: dict[str, str]) -> dict[str, Any]:
    if job_id not in current:
        logger.warning("voice task does not exist", extra={"task_id": job_id})
        return {"task_id": job_id, "result": "missing"}
    return {"task_id": job_id, "result": "not_claimed", "status": current[job_id]}


def _score_held(deps: ScoreDeps, job_id: str,
                job: voice_jobs.Claimed) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Score a job this worker holds: ``(result, {})``, or ``(None, outcome)`` with the
    reason it could not be scored already recorded."""
    settings = deps.settings
    try:
        data = voice_jobs.read_audio(
            job.audio_key, job.audio_url, deps.storage.open,
            timeout=settings.voice_fetch_timeout, max_bytes=settings.voice_max_audio_bytes,
            allow=parse_allow(settings.voice_fetch_allow),
        )
        result = score_clip(deps.models(), data, job.transcript)
    except deps.deadline_exceptions:
        return None, _record_failure(deps, job_id, TIMED_OUT, retryable=True)
    except UNSCORABLE as exc:
        reason, retryable = _unscorable(job_id, exc)
        return None, _record_failure(deps, job_id, reason, retryable=retryable)
    result["scored_by"] = deps.holder
    return result, {}


def _unscorable(job_id: str, exc: Exception) -> tuple[str, bool]:
    """Why a clip could not be scored, as the client sees it, and whether another attempt may help."""
    if isinstance(exc, AudioError):
        return str(exc), False
    if isinstance(exc, StorageKeyNotFound):
        return f"audio_missing: {exc}", False
    if isinstance(exc, AudioURLBlocked):
        # The reason the client sees names the rule only; the address goes to the log.
        logger.warning("voice audio_url refused", extra={"task_id": job_id, "detail": str(exc)})
        return "blocked_address", False
    if isinstance(exc, AudioFetchError):
        # Connection refused, an internal port's HTTP 404, a timeout...: detail that would
        # tell the client about the network behind the worker, so it stays in the log.
        logger.warning("voice audio_url not fetched", extra={"task_id": job_id, "detail": str(exc)})
        return "audio_fetch_failed", True
    return f"nothing_to_score: {exc}", False  # a ValueError: neither audio nor text to score


def _record_results(deps: ScoreDeps, results: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Record scored results in one transaction; the outcome of each (``lease_lost`` when
    the lease ran out and the job was taken back: whoever holds it now scores it)."""
    from app.metrics import VOICE_RISK

    if not results:
        return []
    with deps.scope() as session:
        lost = voice_jobs.record_results(session, deps.holder, results)
    outcomes = []
    for job_id, result in results:
        if job_id in lost:
            logger.warning("voice result discarded: lease lost", extra={"task_id": job_id, "status": lost[job_id]})
            outcomes.append({"task_id": job_id, "result": "lease_lost"})
            continue
        logger.info("voice task completed", extra={"task_id": job_id, "risk_level": result["risk_level"],
                                                   "scam_score": result["scam_score"]})
        VOICE_RISK.labels(risk_level=result["risk_level"]).inc()
        outcomes.append({"task_id": job_id, "result": "completed", "risk_level": result["risk_level"]})
    return outcomes


def _record_failure(deps: ScoreDeps, job_id: str, reason: str, retryable: bool) -> dict[str, Any]:
    with deps.scope() as session:
        try:
            job = voice_jobs.fail(session, job_id, deps.holder, reason, retryable=retryable,
                                  max_attempts=deps.settings.voice_max_attempts)
            status = job.status
        except NotHolder as exc:
            status = exc.status
    logger.warning("voice task not scored", extra={"task_id": job_id, "reason": reason, "status": status})
    return {"task_id": job_id, "result": "failed", "status": status, "reason": reason}
