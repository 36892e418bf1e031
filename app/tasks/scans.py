"""Tasks of the ``scans`` queue (routed by module in celeryconfig): run one URL scan, and
the periodic recovery sweep.

Both are thin: they build the dependencies (session scope, a Docker client per thread,
the sandbox config from settings) and call ``app.services.scans``. An unreachable
database is retried with exponential backoff and jitter; an unreachable Docker daemon is
handled by the service (the job goes back to the queue through the outbox with a delay).
Celery's soft time limit, well above the container timeout, is only the backstop (and
only the prefork pool enforces it): every Docker and database call has its own timeout.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import docker
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

from app.celery_app import celery_app
from app.db import TRANSIENT_DB as TRANSIENT, session_scope
from app.services.jobs import job_run
from app.services.sandbox import SandboxConfig, docker_client
from app.services.scans import ScanDeps, run_scan, sweep, worker_name
from app.settings import get_settings
from app.tasks.base import ping_payload

logger = logging.getLogger(__name__)

_settings = get_settings()
MAX_RETRIES = 5
#: The container timeout plus room for Docker calls and the database: the backstop only.
SOFT_TIME_LIMIT = int(_settings.scan_timeout + 4 * _settings.docker_timeout + 30)

_local = threading.local()


def thread_docker() -> docker.DockerClient:
    """One Docker client per worker thread (or process), made on first use."""
    client = getattr(_local, "docker", None)
    if client is None:
        client = _local.docker = docker_client(get_settings())
    return client


@celery_app.task(bind=True, name="app.tasks.scans.ping")
def ping(self) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Probe: answers with the queue and worker that consumed it."""
    return ping_payload(self)


@celery_app.task(bind=True, name="app.tasks.scans.run", max_retries=MAX_RETRIES,
                 soft_time_limit=SOFT_TIME_LIMIT, time_limit=SOFT_TIME_LIMIT + 30)
def run(self, scan_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Run one scan (idempotent: a job that is not QUEUED, or is claimed first by another
    worker, is skipped)."""
    settings = get_settings()
    deps = ScanDeps(
        scope=session_scope,
        docker=thread_docker,
        sandbox=SandboxConfig.from_settings(settings),
        worker=self.request.hostname or worker_name(),
        max_attempts=settings.scan_max_attempts,
        docker_max_attempts=settings.scan_docker_max_attempts,
        deadline_exceptions=(SoftTimeLimitExceeded,),
        transient_exceptions=TRANSIENT,
    )
    try:
        outcome = run_scan(deps, scan_id)
    except TRANSIENT as exc:
        countdown = get_exponential_backoff_interval(factor=2, retries=self.request.retries, maximum=120,
                                                     full_jitter=True)
        logger.warning("database unavailable; retrying", extra={"scan_id": scan_id, "error": str(exc)[:200],
                                                                "countdown": countdown})
        raise self.retry(exc=exc, countdown=countdown) from None
    if outcome.result in ("completed", "failed", "timed_out"):
        _count_finished(scan_id, outcome.state)
    return {"scan_id": scan_id, "result": outcome.result, "state": outcome.state, "error": outcome.error,
            "worker": deps.worker}


def _count_finished(scan_id: str, state: str | None) -> None:
    """``scans_total{state, verdict}``: the verdict is the stored result's risk (or none)."""
    from sqlalchemy import select

    from app.metrics import SCANS
    from app.models.scans import ScanResult

    try:
        with session_scope() as session:
            risk = session.scalar(select(ScanResult.risk).where(ScanResult.job_id == scan_id))
    except TRANSIENT:
        risk = None
    SCANS.labels(state=(state or "unknown").upper(), verdict=risk or "none").inc()


@celery_app.task(bind=True, name="app.tasks.scans.sweep")
def sweep_stale(self) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Beat: requeue (or fail) scans whose worker died; remove stray labelled containers."""
    settings = get_settings()
    with job_run(session_scope, "scan-sweep") as run_handle:
        result = sweep(session_scope, thread_docker, stale_seconds=settings.scan_stale_seconds,
                       max_attempts=settings.scan_max_attempts, worker=self.request.hostname or worker_name())
        run_handle.counts.update(requeued=len(result.requeued), failed=len(result.failed),
                                 containers_removed=len(result.containers_removed))
    return {"requeued": result.requeued, "failed": result.failed,
            "containers_removed": result.containers_removed, "docker_error": result.docker_error}
