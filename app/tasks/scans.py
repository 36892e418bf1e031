"""Tasks of the ``scans`` queue (routed by module in celeryconfig): run one URL scan, and
the periodic recovery sweep.

Both are thin: they build the dependencies (session scope, a Docker client per thread,
the sandbox config from settings) and call ``app.services.scans``. An unreachable
database is retried by the database policy (``DB_UNAVAILABLE``); an unreachable Docker
daemon is handled by the service (the job goes back to the queue through the outbox with
a delay). The sweep is a beat job (``periodic``: its lock and its ``job_runs`` record).
Celery's soft time limit, well above the container timeout, is only the backstop (and
only the prefork pool enforces it): every Docker and database call has its own timeout.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

import docker
from celery.exceptions import SoftTimeLimitExceeded

from app.celery_app import celery_app
from app.db import session_scope
from app.metrics import SCANS
from app.services import jobs, scans
from app.services.jobs import RunHandle
from app.services.sandbox import SandboxConfig, docker_client
from app.services.scans import ScanDeps, run_scan, worker_name
from app.settings import get_settings
from app.tasks.base import DB_UNAVAILABLE, HandBackRetry, periodic

logger = logging.getLogger(__name__)

_settings = get_settings()
#: The container timeout plus room for Docker calls and the database: the backstop only.
SOFT_TIME_LIMIT = int(_settings.scan_timeout + 4 * _settings.docker_timeout + 30)

_local = threading.local()


def thread_docker() -> docker.DockerClient:
    """One Docker client per worker thread (or process), made on first use."""
    client = getattr(_local, "docker", None)
    if client is None:
        client = _local.docker = docker_client(get_settings())
    return client


@celery_app.task(bind=True, name="app.tasks.scans.run", soft_time_limit=SOFT_TIME_LIMIT,
                 time_limit=SOFT_TIME_LIMIT + 30)
def run(self: HandBackRetry, scan_id: str, db_retries: int = 0) -> dict[str, Any]:
    """Run one scan (idempotent: a job that is not QUEUED, or is claimed first by another
    worker, is skipped); ``db_retries``: retries after database errors so far."""
    settings = get_settings()
    deps = ScanDeps(
        scope=session_scope,
        docker=thread_docker,
        sandbox=SandboxConfig.from_settings(settings),
        worker=self.request.hostname or worker_name(),
        max_attempts=settings.scan_max_attempts,
        docker_max_attempts=settings.scan_docker_max_attempts,
        deadline_exceptions=(SoftTimeLimitExceeded,),
        transient_exceptions=DB_UNAVAILABLE.transient,
    )
    try:
        outcome = run_scan(deps, scan_id)
    except DB_UNAVAILABLE.transient as exc:
        raise self.retry_for(DB_UNAVAILABLE, exc) from None
    if outcome.finished:
        # scans_total{state, verdict}: the verdict is the stored result's risk (or none).
        SCANS.labels(state=(outcome.state or "unknown").upper(), verdict=outcome.risk or "none").inc()
    return {"scan_id": scan_id, "result": outcome.result, "state": outcome.state, "error": outcome.error,
            "worker": deps.worker}


@celery_app.task(name="app.tasks.scans.sweep")
@periodic(jobs.SCAN_SWEEP)
def sweep(run: RunHandle, at: datetime) -> dict[str, Any]:
    """Beat: requeue (or fail) scans whose worker died; remove stray labelled containers."""
    settings = get_settings()
    result = scans.sweep(session_scope, thread_docker, stale_seconds=settings.scan_stale_seconds,
                         max_attempts=settings.scan_max_attempts, worker=worker_name(), now=at)
    run.counts.update(requeued=len(result.requeued), failed=len(result.failed),
                      containers_removed=len(result.containers_removed))
    return {"requeued": result.requeued, "failed": result.failed,
            "containers_removed": result.containers_removed, "docker_error": result.docker_error}
