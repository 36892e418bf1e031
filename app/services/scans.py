"""URL scans: the state machine with optimistic locking, submission, one scan run, and the
recovery sweep.

States and transitions (docs/scans.md has the diagram)::

    QUEUED → FETCHING → ANALYZING → COMPLETED
    FETCHING | ANALYZING → TIMED_OUT
    QUEUED | FETCHING | ANALYZING → FAILED
    FETCHING | ANALYZING → QUEUED      recovery only: the worker was lost, or Docker was down

Every transition is one ``UPDATE scan_jobs SET state, version = version + 1 ... WHERE id
= ? AND state = ? AND version = ?`` plus one audit row, in the caller's transaction. No
row updated means another worker (or the sweep) owns the job: the caller stops quietly.
A transition the machine does not allow raises ``IllegalTransition`` before any SQL.

The worker side (``run_scan``) receives its dependencies in ``ScanDeps`` (session scope,
Docker client, sandbox config) and never builds them.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import docker
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from app.db import rows_changed
from app.models.base import utcnow
from app.models.scans import ScanAudit, ScanJob, ScanResult
from app.services.outbox import add_event
from app.services.sandbox import (
    SandboxConfig,
    SandboxConfigError,
    SandboxOutcome,
    SandboxUnavailable,
    remove_stale_containers,
    run_fetch,
)
from app.services.verdict import evaluate

logger = logging.getLogger(__name__)

QUEUED, FETCHING, ANALYZING, COMPLETED, FAILED, TIMED_OUT = (
    "QUEUED", "FETCHING", "ANALYZING", "COMPLETED", "FAILED", "TIMED_OUT")
TERMINAL = frozenset({COMPLETED, FAILED, TIMED_OUT})
ACTIVE = (FETCHING, ANALYZING)
TRANSITIONS = frozenset({
    (QUEUED, FETCHING), (FETCHING, ANALYZING), (ANALYZING, COMPLETED),
    (FETCHING, TIMED_OUT), (ANALYZING, TIMED_OUT),
    (QUEUED, FAILED), (FETCHING, FAILED), (ANALYZING, FAILED),
})
#: Taken only by recovery: a job whose worker is gone goes back to the queue.
RECOVERY_TRANSITIONS = frozenset({(FETCHING, QUEUED), (ANALYZING, QUEUED)})

RUN_TASK = "app.tasks.scans.run"
MAX_URL_LENGTH = 2048
#: Seconds before a scan that found Docker unavailable is tried again (doubles per attempt).
REQUEUE_BACKOFF = 5.0
REQUEUE_BACKOFF_MAX = 120.0

Scope = Callable[[], AbstractContextManager[Session]]


class IllegalTransition(ValueError):
    """The state machine does not allow this change."""


class InvalidScanUrl(ValueError):
    """A URL the scanner refuses to take; ``reason`` says why, for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def worker_name() -> str:
    """The name audit rows record for changes made outside a Celery worker."""
    return socket.gethostname()


# --- the state machine -------------------------------------------------------------------------


def check_transition(from_state: str, to_state: str, *, recovery: bool = False) -> None:
    """Raise ``IllegalTransition`` unless ``from_state → to_state`` is allowed."""
    allowed = TRANSITIONS | (RECOVERY_TRANSITIONS if recovery else frozenset())
    if (from_state, to_state) not in allowed:
        raise IllegalTransition(f"illegal scan transition {from_state} → {to_state}")


def transition(session: Session, job_id: str, *, from_state: str, to_state: str, version: int, worker: str,
               detail: str | None = None, values: dict[str, Any] | None = None,
               recovery: bool = False) -> int | None:
    """Move a job from ``(from_state, version)`` to ``to_state`` and audit it.

    Returns the new version, or None when the job is no longer at that state and version
    (someone else moved it: the caller must stop without side effects). The caller
    commits; the update and the audit row are in its transaction.
    """
    check_transition(from_state, to_state, recovery=recovery)
    now = utcnow()
    new_version = version + 1
    changes: dict[str, Any] = {"state": to_state, "version": new_version, "updated_at": now, **(values or {})}
    if to_state in TERMINAL:
        changes.setdefault("finished_at", now)
    updated = rows_changed(
        session,
        update(ScanJob)
        .where(ScanJob.id == job_id, ScanJob.state == from_state, ScanJob.version == version)
        .values(**changes),
        synchronize=False,
    )
    if updated != 1:
        logger.info("scan transition lost: another worker owns the job", extra={
            "scan_id": job_id, "from": from_state, "to": to_state, "version": version})
        return None
    session.add(ScanAudit(job_id=job_id, from_state=from_state, to_state=to_state, version=new_version,
                          worker=worker, detail=detail[:4000] if detail else None, created_at=now))
    session.flush()
    logger.info("scan transition", extra={"scan_id": job_id, "from": from_state, "to": to_state,
                                          "version": new_version})
    return new_version


# --- API side ----------------------------------------------------------------------------------


def validate_url(url: str) -> str:
    """The URL to scan, or ``InvalidScanUrl``: http/https, ≤ 2048 characters, a host, no
    user information, no whitespace or control characters, a valid port.

    Whether the host's addresses may be fetched is decided by the fetcher at fetch time,
    on every hop (a name can change its addresses between now and then).
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidScanUrl("the URL is empty")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidScanUrl(f"the URL is {len(url)} characters long; at most {MAX_URL_LENGTH} are accepted")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise InvalidScanUrl("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidScanUrl(f"the URL cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidScanUrl(f"scheme {scheme + ':' if scheme else '(none)'} is not allowed; only http and https URLs "
                             "are scanned")
    if "@" in parts.netloc:
        raise InvalidScanUrl("the URL contains user information (user:password@); remove it")
    host = parts.hostname
    if not host:
        raise InvalidScanUrl("the URL has no host")
    try:
        port = parts.port
    except ValueError:
        raise InvalidScanUrl("the URL's port is not a number between 0 and 65535") from None
    if port == 0:
        raise InvalidScanUrl("the URL's port is 0")
    if not host.isascii():
        try:
            host.encode("idna")
        except UnicodeError:
            raise InvalidScanUrl(f"the host {host!r} is not a valid internationalised domain name") from None
    return url


def submit_scan(session: Session, url: str, worker: str = "api", client_id: int | None = None) -> ScanJob:
    """Create a QUEUED job of ``client_id``, its first audit row and its outbox event (caller commits)."""
    url = validate_url(url)
    job = ScanJob(id=uuid.uuid4().hex, url=url, state=QUEUED, version=1, attempts=0, client_id=client_id)
    session.add(job)
    session.flush()
    session.add(ScanAudit(job_id=job.id, from_state=None, to_state=QUEUED, version=1, worker=worker,
                          detail="submitted"))
    add_event(session, aggregate_type="scan", aggregate_id=job.id, event_type="scan.submitted",
              task_name=RUN_TASK, payload={"scan_id": job.id})
    return job


def list_scans(session: Session, *, state: str | None, limit: int, offset: int,
               where: ColumnElement[bool] | None = None) -> tuple[list[ScanJob], int]:
    """Jobs newest first, optionally in one state, and how many there are in all;
    ``where`` narrows them (to one client's)."""
    query = select(ScanJob)
    count = select(func.count()).select_from(ScanJob)
    if where is not None:
        query, count = query.where(where), count.where(where)
    if state:
        query = query.where(ScanJob.state == state)
        count = count.where(ScanJob.state == state)
    rows = list(session.scalars(query.order_by(ScanJob.created_at.desc(), ScanJob.id).limit(limit).offset(offset)))
    return rows, int(session.scalar(count) or 0)


# --- worker side: one scan ---------------------------------------------------------------------


@dataclass
class ScanDeps:
    """What ``run_scan`` needs, handed in by the task."""

    scope: Scope
    docker: Callable[[], docker.DockerClient]
    sandbox: SandboxConfig
    worker: str = field(default_factory=worker_name)
    max_attempts: int = 3
    #: Attempts while Docker does not answer: an outage of the daemon is not the scan's
    #: fault, so it gets a longer budget than a fetch that keeps being interrupted.
    docker_max_attempts: int = 8
    #: Exceptions the task's own time limit raises inside us (Celery's soft limit).
    deadline_exceptions: tuple[type[BaseException], ...] = ()
    #: Exceptions worth a retry of the task (the database unreachable): re-raised; the
    #: sweep recovers a job they leave in FETCHING or ANALYZING.
    transient_exceptions: tuple[type[BaseException], ...] = ()
    on_container: Callable[[str], None] | None = None


@dataclass
class ScanOutcome:
    """What one ``run_scan`` call did, for the task's result and the logs."""

    result: str  # completed | failed | timed_out | requeued | skipped | missing | superseded
    state: str | None = None
    error: str | None = None
    container_seconds: float | None = None
    #: The stored verdict's risk (a completed scan), for the ``scans_total`` metric.
    risk: str | None = None

    @property
    def finished(self) -> bool:
        """Whether this run ended the scan (completed, failed or timed out)."""
        return self.result in ("completed", "failed", "timed_out")


def run_scan(deps: ScanDeps, scan_id: str) -> ScanOutcome:
    """Claim a QUEUED job, fetch its URL in a container, analyse, store; idempotent.

    A job that is not QUEUED, or that another worker claims first, is skipped quietly.
    """
    claimed = _claim(deps, scan_id)
    if isinstance(claimed, ScanOutcome):
        return claimed
    url, version, attempts = claimed
    current = FETCHING
    try:
        try:
            sandbox = run_fetch(deps.docker(), deps.sandbox, url, scan_id, on_started=deps.on_container)
        except SandboxUnavailable as exc:
            return _requeue_or_fail(deps, scan_id, version, attempts, f"Docker unavailable: {exc}",
                                    max(deps.max_attempts, deps.docker_max_attempts))
        except SandboxConfigError as exc:
            return _finish(deps, scan_id, FETCHING, FAILED, version, str(exc))
        failure = _failure(sandbox)
        if failure is not None:
            to_state, reason = failure
            return _finish(deps, scan_id, FETCHING, to_state, version, reason, sandbox.seconds)
        document = sandbox.document or {}
        with deps.scope() as session:
            analyzing = transition(session, scan_id, from_state=FETCHING, to_state=ANALYZING, version=version,
                                   worker=deps.worker,
                                   detail=f"fetched {document.get('final_url')} (HTTP {document.get('status')}) "
                                          f"in {sandbox.seconds:.2f} s")
        if analyzing is None:
            return ScanOutcome("superseded")
        current, version = ANALYZING, analyzing
        return _complete(deps, scan_id, url, version, sandbox)
    except deps.deadline_exceptions:
        return _finish(deps, scan_id, current, TIMED_OUT, version, "the scan task ran out of time")
    except deps.transient_exceptions:
        raise
    except Exception as exc:  # a bug: fail with a reason, keep the traceback in the log
        logger.exception("scan failed unexpectedly", extra={"scan_id": scan_id})
        return _finish(deps, scan_id, current, FAILED, version,
                       f"the scan failed unexpectedly ({type(exc).__name__}: {exc})"[:1000])


def _claim(deps: ScanDeps, scan_id: str) -> tuple[str, int, int] | ScanOutcome:
    """QUEUED → FETCHING, counting the attempt: ``(url, version, attempts)``, or the outcome
    of a job that is missing, not QUEUED or claimed first by another worker."""
    with deps.scope() as session:
        job = session.get(ScanJob, scan_id)
        if job is None:
            return ScanOutcome("missing")
        url, state, version, attempts = job.url, job.state, job.version, job.attempts
        if state != QUEUED:
            logger.info("scan not queued; skipping", extra={"scan_id": scan_id, "state": state})
            return ScanOutcome("skipped", state)
        claimed = transition(session, scan_id, from_state=QUEUED, to_state=FETCHING, version=version,
                             worker=deps.worker, detail=f"attempt {attempts + 1}",
                             values={"attempts": ScanJob.attempts + 1, "started_at": utcnow(), "error": None})
    if claimed is None:
        return ScanOutcome("skipped", state)
    return url, claimed, attempts + 1


def _complete(deps: ScanDeps, scan_id: str, url: str, version: int, sandbox: SandboxOutcome) -> ScanOutcome:
    """ANALYZING → COMPLETED with the verdict stored as the job's result."""
    document = sandbox.document or {}
    verdict = evaluate(url, document)
    with deps.scope() as session:
        new_version = transition(session, scan_id, from_state=ANALYZING, to_state=COMPLETED, version=version,
                                 worker=deps.worker, detail=f"score {verdict.score} ({verdict.risk})")
        if new_version is None:
            return ScanOutcome("superseded")
        session.add(ScanResult(
            job_id=scan_id, final_url=document.get("final_url"), status_code=document.get("status"),
            content_type=(document.get("content_type") or None) and str(document["content_type"])[:255],
            sha256=document.get("sha256"), fetch=document, score=verdict.score, risk=verdict.risk,
            reasons=verdict.reasons_as_dicts(), container_seconds=round(sandbox.seconds, 3),
        ))
    logger.info("scan completed", extra={"scan_id": scan_id, "score": verdict.score, "risk": verdict.risk})
    return ScanOutcome("completed", COMPLETED, container_seconds=sandbox.seconds, risk=verdict.risk)


def _failure(sandbox: SandboxOutcome) -> tuple[str, str] | None:
    """The terminal state and reason for a container run that did not produce a fetch."""
    if sandbox.kind == "timeout":
        return TIMED_OUT, sandbox.message
    if sandbox.kind in ("oom", "exit", "invalid_output"):
        return FAILED, sandbox.message
    error = (sandbox.document or {}).get("error")
    if error:
        kind = error.get("kind") if isinstance(error, dict) else "error"
        message = error.get("message") if isinstance(error, dict) else str(error)
        if kind == "timeout":
            return TIMED_OUT, f"fetch timed out: {message}"
        return FAILED, f"fetch failed ({kind}): {message}"
    return None


def _finish(deps: ScanDeps, scan_id: str, from_state: str, to_state: str, version: int, reason: str,
            seconds: float | None = None) -> ScanOutcome:
    with deps.scope() as session:
        done = transition(session, scan_id, from_state=from_state, to_state=to_state, version=version,
                          worker=deps.worker, detail=reason, values={"error": reason[:4000]})
    if done is None:
        return ScanOutcome("superseded")
    logger.info("scan ended", extra={"scan_id": scan_id, "state": to_state, "reason": reason[:300]})
    return ScanOutcome(to_state.lower(), to_state, reason, seconds)


def _requeue_or_fail(deps: ScanDeps, scan_id: str, version: int, attempts: int, reason: str,
                     max_attempts: int) -> ScanOutcome:
    """Docker could not run the container: back to the queue with a delay, or FAILED
    once ``max_attempts`` are used up."""
    if attempts >= max_attempts:
        return _finish(deps, scan_id, FETCHING, FAILED, version, f"{reason} (after {attempts} attempts)")
    delay = min(REQUEUE_BACKOFF_MAX, REQUEUE_BACKOFF * 2 ** (attempts - 1))
    with deps.scope() as session:
        done = requeue(session, scan_id, from_state=FETCHING, version=version, worker=deps.worker,
                       detail=f"{reason}; retry in {delay:g} s", delay=delay)
    if not done:
        return ScanOutcome("superseded")
    return ScanOutcome("requeued", QUEUED, reason)


def requeue(session: Session, scan_id: str, *, from_state: str, version: int, worker: str, detail: str,
            delay: float = 0.0) -> bool:
    """Recovery: put the job back to QUEUED and publish its run again through the outbox."""
    if transition(session, scan_id, from_state=from_state, to_state=QUEUED, version=version, worker=worker,
                  detail=detail, recovery=True) is None:
        return False
    add_event(session, aggregate_type="scan", aggregate_id=scan_id, event_type="scan.requeued",
              task_name=RUN_TASK, payload={"scan_id": scan_id}, delay=delay)
    return True


# --- recovery sweep ----------------------------------------------------------------------------


@dataclass
class SweepResult:
    """The jobs one sweep requeued or failed and the containers it removed."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    containers_removed: list[str] = field(default_factory=list)
    docker_error: str | None = None


def sweep(scope: Scope, docker_client: Callable[[], docker.DockerClient] | None, *, stale_seconds: float,
          max_attempts: int, worker: str, now: datetime | None = None, batch: int = 100) -> SweepResult:
    """Recover scans whose worker died, and remove stray containers.

    A job in FETCHING or ANALYZING not updated for ``stale_seconds`` goes back to QUEUED
    (with a new outbox event) while it has attempts left, else to FAILED. Each job moves
    by its own conditional update, so a worker that is in fact alive and finishes first
    wins, and two sweeps never both act. Containers with the scan label created more
    than ``stale_seconds`` ago are removed.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stale_seconds)
    result = SweepResult()
    with scope() as session:
        stale = session.execute(
            select(ScanJob.id, ScanJob.state, ScanJob.version, ScanJob.attempts)
            .where(ScanJob.state.in_(ACTIVE), ScanJob.updated_at < cutoff)
            .order_by(ScanJob.updated_at).limit(batch)
        ).all()
    for job_id, state, version, attempts in stale:
        with scope() as session:
            if attempts >= max_attempts:
                reason = (f"the worker was lost during {state} and the scan has used its {attempts} attempts; "
                          "giving up")
                if transition(session, job_id, from_state=state, to_state=FAILED, version=version, worker=worker,
                              detail=reason, values={"error": reason}) is not None:
                    result.failed.append(job_id)
            elif requeue(session, job_id, from_state=state, version=version, worker=worker,
                         detail=f"no progress in {state} for over {stale_seconds:g} s: the worker was lost; "
                                f"queued again (attempt {attempts} of {max_attempts} used)"):
                result.requeued.append(job_id)
    if docker_client is not None:
        try:
            result.containers_removed = remove_stale_containers(docker_client(), stale_seconds)
        except Exception as exc:  # Docker down: the jobs above are recovered anyway; next sweep retries
            result.docker_error = f"{type(exc).__name__}: {exc}"[:500]
            logger.warning("sweep could not reach Docker", extra={"error": result.docker_error})
    if result.requeued or result.failed or result.containers_removed:
        logger.info("scan sweep", extra={"requeued": len(result.requeued), "failed": len(result.failed),
                                         "containers_removed": len(result.containers_removed)})
    return result
