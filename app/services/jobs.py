"""The periodic jobs beat sends: their names, the frame every run goes through, its record.

Every beat job has one name (a constant below), used as its beat entry
(``celeryconfig.beat_schedule``), its Redis lock and its ``job_runs`` record; ``BEAT_JOBS``
names the task beat sends for each, and the task function carries that task name's last
part. Each run goes through ``run_locked``: it takes the job's named lock, keeps
extending it while the job runs (so a slow run is never overlapped by the next slot),
records the run in ``job_runs``, and records a ``skipped`` run when the lock is held.

``with job_run(scope, UPLOAD_GC) as run: run.counts["cleaned"] = n`` writes a row at the
start (so a run that dies is visible as ``running``) and completes it at the end with
``ok`` or ``failed`` and the error; ``record_skip`` writes a ``skipped`` row.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.locks import LockHandle, named_lock
from app.models.base import utcnow
from app.models.jobs import JobRun

# app.metrics is imported where it is used: celeryconfig reads the job names from here, and
# importing the metrics picks the process's multiprocess directory.

logger = logging.getLogger(__name__)

Scope = Callable[[], AbstractContextManager[Session]]

# --- the beat jobs: one name each (beat entry, lock, job_runs record) -------------------
OUTBOX_RELAY = "outbox-relay"
UPLOAD_GC = "upload-gc"
RETENTION_GC = "retention-gc"
SCAN_SWEEP = "scan-sweep"
VOICE_LEASE_SWEEP = "voice-lease-sweep"
CAMPAIGNS = "campaign-scheduler"
REMINDERS = "lead-reminder-scheduler"
CALLS = "call-scheduler"
TRIALS = "trial-expiration"
CALL_CLEANUP = "call-cleanup"

#: Each beat job and the task beat sends for it.
BEAT_JOBS: dict[str, str] = {
    OUTBOX_RELAY: "app.tasks.outbox.relay",
    UPLOAD_GC: "app.tasks.gc.collect_uploads",
    RETENTION_GC: "app.tasks.gc.purge_expired",
    SCAN_SWEEP: "app.tasks.scans.sweep",
    VOICE_LEASE_SWEEP: "app.tasks.voice.sweep_leases",
    CAMPAIGNS: "app.tasks.schedules.dispatch_campaigns",
    REMINDERS: "app.tasks.schedules.lead_reminders",
    CALLS: "app.tasks.schedules.schedule_calls",
    TRIALS: "app.tasks.schedules.expire_trials",
    CALL_CLEANUP: "app.tasks.schedules.cleanup_calls",
}


def parse_now(now: str | None) -> datetime:
    """The instant a job runs "as of": an ISO 8601 time with its UTC offset (an operator's
    or a test's ``now``), or the current time when none is given."""
    if not now:
        return utcnow()
    try:
        at = datetime.fromisoformat(now)
    except (TypeError, ValueError):
        raise ValueError(f"now must be an ISO 8601 time with a UTC offset, not {now!r}") from None
    if at.tzinfo is None:
        raise ValueError(f"now must carry a UTC offset: {now!r}")
    return at


@dataclass
class RunHandle:
    id: int
    job: str
    counts: dict[str, Any] = field(default_factory=dict)


@contextmanager
def job_run(scope: Scope, job: str) -> Iterator[RunHandle]:
    """Record a run of ``job`` around the block; exceptions are recorded and re-raised."""
    with scope() as session:
        row = JobRun(job=job, worker=socket.gethostname())
        session.add(row)
        session.flush()
        handle = RunHandle(row.id, job)
    start = time.perf_counter()
    outcome, detail = "ok", None
    try:
        yield handle
    except BaseException as exc:
        outcome, detail = "failed", f"{type(exc).__name__}: {exc}"[:2000]
        raise
    finally:
        with scope() as session:
            done = session.get(JobRun, handle.id)
            if done is not None:
                done.finished_at = utcnow()
                done.duration_seconds = time.perf_counter() - start
                done.outcome = outcome
                done.counts = dict(handle.counts)
                done.detail = detail
        from app.metrics import JOB_RUNS

        JOB_RUNS.labels(job=job, outcome=outcome).inc()


def record_skip(session: Session, job: str, reason: str) -> JobRun:
    """A run that did not happen (e.g. the lock was held), with why."""
    now = utcnow()
    row = JobRun(job=job, started_at=now, finished_at=now, duration_seconds=0.0, outcome="skipped",
                 detail=reason, worker=socket.gethostname())
    session.add(row)
    from app.metrics import JOB_RUNS

    JOB_RUNS.labels(job=job, outcome="skipped").inc()
    return row


def last_run(session: Session, job: str) -> JobRun | None:
    return session.scalars(select(JobRun).where(JobRun.job == job).order_by(JobRun.id.desc()).limit(1)).first()


# --- the frame of every beat job -----------------------------------------------------------


@dataclass
class JobOutcome:
    """What ``run_locked`` reports: skipped (lock held) or the run's counts."""

    skipped: bool
    counts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, **self.counts}


def run_locked(scope: Scope, job: str, body: Callable[[RunHandle], None], *, ttl: float = 60.0,
               lock_client: Any = None) -> JobOutcome:
    """Run ``body`` under the job's lock, recorded in ``job_runs``; skip (and record why) if held.

    A heartbeat thread extends the lock every ``ttl / 3`` seconds while the body runs, so
    however long a run takes, the next slot finds the lock held and skips instead of
    overlapping; a dead worker's lock still expires ``ttl`` seconds after its last beat.
    """
    with named_lock(job, ttl=ttl, client=lock_client) as lock:
        if not lock.acquired:
            logger.warning("job skipped: lock held", extra={"job": job})
            with scope() as session:
                record_skip(session, job, f"lock {job!r} is held by a run still in progress")
            return JobOutcome(skipped=True)
        with _heartbeat(lock, job, ttl):
            try:
                with job_run(scope, job) as run:
                    body(run)
            finally:
                from app.metrics import JOB_LAST_RUN

                JOB_LAST_RUN.labels(job=job).set_to_current_time()
    return JobOutcome(skipped=False, counts=dict(run.counts))


@contextmanager
def _heartbeat(lock: LockHandle, job: str, ttl: float) -> Iterator[None]:
    """Extend ``lock`` every ``ttl / 3`` seconds from a thread while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ttl / 3):
            if not lock.extend(ttl):
                logger.error("job lock lost while running", extra={"job": job})
                return

    thread = threading.Thread(target=beat, name=f"lock-{job}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
