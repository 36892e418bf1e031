"""Tasks of the `schedules` queue (routed by module in celeryconfig): the beat jobs and their fan-out.

Each beat task runs its service under the job's named lock (``run_locked``) and enqueues
one task per campaign batch, lead or call instead of doing the work itself. The beat
tasks take an optional ``now`` (ISO 8601 with offset) so an operator or a test can run a
job "as of" another time.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from collections.abc import Iterable
from typing import Any

import requests
from celery.canvas import Signature

from app.celery_app import celery_app
from app.db import session_scope
from app.metrics import SCHEDULE_ITEMS
from app.models.base import utcnow
from app.services import schedules as svc
from app.services.email import SmtpSender, TransientEmailError
from app.services.jobs import RunHandle
from app.services.telephony import TelephonyClient
from app.settings import get_settings
from app.tasks.base import ping_payload

logger = logging.getLogger(__name__)

_http: requests.Session | None = None


def _session() -> requests.Session:
    # One connection pool per worker process.
    global _http
    if _http is None:
        _http = requests.Session()
    return _http


def _at(now: str | None) -> datetime:
    at = datetime.fromisoformat(now) if now else utcnow()
    if at.tzinfo is None:
        raise ValueError("now must carry a UTC offset")
    return at


def publish_all(signatures: Iterable[Signature]) -> int:
    """Publish many task messages on one producer (one broker connection, no per-message
    pool checkout): the fan-out of a beat job is as fast as the broker takes messages."""
    count = 0
    with celery_app.producer_or_acquire() as producer:
        for sig in signatures:
            sig.apply_async(producer=producer)
            count += 1
    return count


def _run(job: str, body) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    outcome = svc.run_locked(session_scope, job, body, ttl=get_settings().schedule_lock_ttl)
    return {"skipped": outcome.skipped, **outcome.counts}


@celery_app.task(bind=True, name="app.tasks.schedules.ping")
def ping(self) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Probe: answers with the queue and worker that consumed it."""
    return ping_payload(self)


# --- campaigns ---------------------------------------------------------------------------


@celery_app.task(name="app.tasks.schedules.dispatch_campaigns")
def dispatch_campaigns(now: str | None = None) -> dict[str, Any]:
    """Beat: start due campaigns and enqueue their batches, spaced by countdowns."""
    settings = get_settings()
    at = _at(now)

    def body(run: RunHandle) -> None:
        with session_scope() as session:
            plans = svc.start_due_campaigns(session, at, settings.campaign_batch_size, settings.campaign_batch_delay)
            grace = timedelta(seconds=max(600.0, settings.campaign_batch_delay * 10))
            stalled = svc.stalled_batches(session, at, grace)
        # Enqueued only after the commit, so every batch task finds its rows.
        publish_all(send_campaign_batch.signature((plan.campaign_id, plan.batch), countdown=plan.countdown)
                    for plan in plans + stalled)
        run.counts.update(campaigns=len({p.campaign_id for p in plans}), batches=len(plans),
                          resent_batches=len(stalled), processed=len(plans))

    return _run(svc.JOB_CAMPAIGNS, body)


@celery_app.task(
    bind=True, name="app.tasks.schedules.send_campaign_batch",
    autoretry_for=(svc.TransientSendError,), retry_backoff=5, retry_backoff_max=300, retry_jitter=True,
    max_retries=8,
)
def send_campaign_batch(self, campaign_id: int, batch: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Send one batch of a campaign; recipients already sent are never sent again."""
    settings = get_settings()
    with SmtpSender(settings) as sender:
        result = svc.send_campaign_batch(session_scope, campaign_id, batch, sender.send)
    return result.as_dict()


# --- lead reminders ----------------------------------------------------------------------


@celery_app.task(name="app.tasks.schedules.lead_reminders")
def lead_reminders(now: str | None = None) -> dict[str, Any]:
    """Beat: enqueue one reminder task per lead whose reminder time has passed."""
    at = _at(now)

    def body(run: RunHandle) -> None:
        with session_scope() as session:
            due = svc.due_reminders(session, at)
        publish_all(send_lead_reminder.si(lead_id, due_at, at.isoformat()) for lead_id, due_at in due)
        run.counts.update(due=len(due), processed=len(due))

    return _run(svc.JOB_REMINDERS, body)


@celery_app.task(
    name="app.tasks.schedules.send_lead_reminder",
    autoretry_for=(TransientEmailError,), retry_backoff=10, retry_backoff_max=600, retry_jitter=True, max_retries=5,
)
def send_lead_reminder(lead_id: int, due: str, now: str) -> str:
    """Email one lead its reminder (once per due time) and move its next reminder forward."""
    settings = get_settings()
    period = timedelta(hours=settings.lead_reminder_period_hours)
    with SmtpSender(settings) as sender:
        result = svc.send_reminder(session_scope, lead_id, _at(due), _at(now), period, sender.send)
    SCHEDULE_ITEMS.labels(job=svc.JOB_REMINDERS, result=result).inc()
    return result


# --- calls -----------------------------------------------------------------------------------


@celery_app.task(name="app.tasks.schedules.schedule_calls")
def schedule_calls(now: str | None = None) -> dict[str, Any]:
    """Beat: expire stale calls, enqueue a dial per due call whose tenant is inside business hours."""
    settings = get_settings()
    at = _at(now)

    def body(run: RunHandle) -> None:
        with session_scope() as session:
            plan = svc.plan_calls(session, at, timedelta(hours=settings.call_max_age_hours))
        publish_all(dial.si(call_id) for call_id in plan.dial)
        for item in plan.skipped:
            logger.warning("call skipped", extra=item)
        run.counts.update(dialled=len(plan.dial), waiting=plan.waiting, expired=plan.expired,
                          skipped=plan.skipped, processed=len(plan.dial) + plan.expired)
        SCHEDULE_ITEMS.labels(job=svc.JOB_CALLS, result="expired").inc(plan.expired)

    return _run(svc.JOB_CALLS, body)


@celery_app.task(name="app.tasks.schedules.dial")
def dial(call_id: int) -> str:
    """Dial one call through the telephony adapter (idempotent per attempt)."""
    settings = get_settings()
    client = TelephonyClient.from_settings(settings, _session())
    result = svc.dial_call(session_scope, call_id, client.dial, settings.call_max_attempts)
    SCHEDULE_ITEMS.labels(job=svc.JOB_CALLS, result=result).inc()
    return result


@celery_app.task(name="app.tasks.schedules.cleanup_calls")
def cleanup_calls(now: str | None = None) -> dict[str, Any]:
    """Beat (daily): delete terminal calls older than the retention, in batches."""
    settings = get_settings()
    at = _at(now)

    def body(run: RunHandle) -> None:
        deleted = svc.cleanup_calls(session_scope, at, timedelta(days=settings.call_retention_days),
                                    settings.call_cleanup_batch_size)
        run.counts.update(deleted=deleted, processed=deleted)
        SCHEDULE_ITEMS.labels(job=svc.JOB_CLEANUP, result="deleted").inc(deleted)

    return _run(svc.JOB_CLEANUP, body)


# --- trials ----------------------------------------------------------------------------------


@celery_app.task(name="app.tasks.schedules.expire_trials")
def expire_trials(now: str | None = None) -> dict[str, Any]:
    """Beat: suspend trial tenants past their end; each gets a ``tenant.suspended`` outbox event."""
    at = _at(now)

    def body(run: RunHandle) -> None:
        with session_scope() as session:
            ids = svc.expire_trials(session, at)
        run.counts.update(suspended=len(ids), processed=len(ids))
        SCHEDULE_ITEMS.labels(job=svc.JOB_TRIALS, result="suspended").inc(len(ids))

    return _run(svc.JOB_TRIALS, body)


@celery_app.task(name="app.tasks.schedules.tenant_suspended")
def tenant_suspended(tenant_id: int, **_event: Any) -> dict[str, int]:
    """Outbox consumer of ``tenant.suspended``: the tenant's queued calls and scheduled campaigns stop."""
    with session_scope() as session:
        return svc.hold_suspended_tenant_work(session, tenant_id, utcnow())
