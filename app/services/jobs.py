"""Record each run of a periodic job: start, duration, outcome and counts.

``with job_run(scope, "upload-gc") as run: run.counts["cleaned"] = n`` writes a row at the
start (so a run that dies is visible as ``running``) and completes it at the end with
``ok`` or ``failed`` and the error; ``record_skip`` writes a ``skipped`` row.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.metrics import JOB_RUNS
from app.models.base import utcnow
from app.models.jobs import JobRun

Scope = Callable[[], AbstractContextManager[Session]]


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
            row = session.get(JobRun, handle.id)
            if row is not None:
                row.finished_at = utcnow()
                row.duration_seconds = time.perf_counter() - start
                row.outcome = outcome
                row.counts = dict(handle.counts)
                row.detail = detail
        JOB_RUNS.labels(job=job, outcome=outcome).inc()


def record_skip(session: Session, job: str, reason: str) -> JobRun:
    """A run that did not happen (e.g. the lock was held), with why."""
    now = utcnow()
    row = JobRun(job=job, started_at=now, finished_at=now, duration_seconds=0.0, outcome="skipped",
                 detail=reason, worker=socket.gethostname())
    session.add(row)
    JOB_RUNS.labels(job=job, outcome="skipped").inc()
    return row


def last_run(session: Session, job: str) -> JobRun | None:
    return session.scalars(select(JobRun).where(JobRun.job == job).order_by(JobRun.id.desc()).limit(1)).first()
