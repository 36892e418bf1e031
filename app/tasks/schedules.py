"""Tasks of the `schedules` queue (routed by module in celeryconfig): the beat jobs and their fan-out.

Each beat task is a beat job (``app.tasks.base.periodic``: its named lock, its
``job_runs`` record) that enqueues one task per campaign batch, lead or call instead of
doing the work itself. The beat tasks take an optional ``now`` (ISO 8601 with offset) so
an operator or a test can run a job "as of" another time. A send that meets a transient
error retries by its ``RetryPolicy``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from celery.canvas import Signature

from app.celery_app import celery_app
from app.db import session_scope
from app.metrics import SCHEDULE_ITEMS
from app.models.base import utcnow
from app.services import jobs
from app.services import schedules as svc
from app.services.email import SmtpSender, TransientEmailError
from app.services.jobs import RunHandle, parse_now
from app.services.telephony import TelephonyClient
from app.settings import get_settings
from app.tasks.base import HandBackRetry, RetryPolicy, http_session, periodic

logger = logging.getLogger(__name__)


#: Retries of a campaign batch whose mail server failed in a way that may pass.
BATCH_RETRY = RetryPolicy(transient=(svc.TransientSendError,), max_retries=8, base=5.0, cap=300.0)
#: Retries of a lead reminder whose mail server failed in a way that may pass.
REMINDER_RETRY = RetryPolicy(transient=(TransientEmailError,), max_retries=5, base=10.0, cap=600.0)


def _lock_ttl() -> float:
    return get_settings().schedule_lock_ttl


def publish_all(signatures: Iterable[Signature]) -> int:
    """Publish many task messages on one producer (one broker connection, no per-message
    pool checkout): the fan-out of a beat job is as fast as the broker takes messages."""
    count = 0
    with celery_app.producer_or_acquire() as producer:
        for sig in signatures:
            sig.apply_async(producer=producer)
            count += 1
    return count


# --- campaigns ---------------------------------------------------------------------------


@celery_app.task(name="app.tasks.schedules.dispatch_campaigns")
@periodic(jobs.CAMPAIGNS, ttl=_lock_ttl)
def dispatch_campaigns(run: RunHandle, at: datetime) -> None:
    """Beat: start due campaigns and enqueue their batches, spaced by countdowns."""
    settings = get_settings()
    with session_scope() as session:
        plans = svc.start_due_campaigns(session, at, settings.campaign_batch_size, settings.campaign_batch_delay)
        grace = timedelta(seconds=max(600.0, settings.campaign_batch_delay * 10))
        stalled = svc.stalled_batches(session, at, grace)
    # Enqueued only after the commit, so every batch task finds its rows.
    publish_all(send_campaign_batch.signature((plan.campaign_id, plan.batch), countdown=plan.countdown)
                for plan in plans + stalled)
    run.counts.update(campaigns=len({p.campaign_id for p in plans}), batches=len(plans),
                      resent_batches=len(stalled), processed=len(plans))


@celery_app.task(bind=True, name="app.tasks.schedules.send_campaign_batch")
def send_campaign_batch(self: HandBackRetry, campaign_id: int, batch: int, retries: int = 0) -> dict[str, int]:
    """Send one batch of a campaign; recipients already sent are never sent again."""
    settings = get_settings()
    try:
        with SmtpSender(settings) as sender:
            result = svc.send_campaign_batch(session_scope, campaign_id, batch, sender.send)
    except BATCH_RETRY.transient as exc:
        raise self.retry_for(BATCH_RETRY, exc) from None
    return result.as_dict()


# --- lead reminders ----------------------------------------------------------------------


@celery_app.task(name="app.tasks.schedules.lead_reminders")
@periodic(jobs.REMINDERS, ttl=_lock_ttl)
def lead_reminders(run: RunHandle, at: datetime) -> None:
    """Beat: enqueue one reminder task per lead whose reminder time has passed."""
    with session_scope() as session:
        due = svc.due_reminders(session, at)
    publish_all(send_lead_reminder.si(lead_id, due_at, at.isoformat()) for lead_id, due_at in due)
    run.counts.update(due=len(due), processed=len(due))


@celery_app.task(bind=True, name="app.tasks.schedules.send_lead_reminder")
def send_lead_reminder(self: HandBackRetry, lead_id: int, due: str, now: str, retries: int = 0) -> str:
    """Email one lead its reminder (once per due time) and move its next reminder forward."""
    settings = get_settings()
    period = timedelta(hours=settings.lead_reminder_period_hours)
    try:
        with SmtpSender(settings) as sender:
            result = svc.send_reminder(session_scope, lead_id, parse_now(due), parse_now(now), period, sender.send)
    except REMINDER_RETRY.transient as exc:
        raise self.retry_for(REMINDER_RETRY, exc) from None
    SCHEDULE_ITEMS.labels(job=jobs.REMINDERS, result=result).inc()
    return result


# --- calls -----------------------------------------------------------------------------------


@celery_app.task(name="app.tasks.schedules.schedule_calls")
@periodic(jobs.CALLS, ttl=_lock_ttl)
def schedule_calls(run: RunHandle, at: datetime) -> None:
    """Beat: expire stale calls, enqueue a dial per due call whose tenant is inside business hours."""
    settings = get_settings()
    with session_scope() as session:
        plan = svc.plan_calls(session, at, timedelta(hours=settings.call_max_age_hours))
    publish_all(dial.si(call_id) for call_id in plan.dial)
    for item in plan.skipped:
        logger.warning("call skipped", extra=item)
    run.counts.update(dialled=len(plan.dial), waiting=plan.waiting, expired=plan.expired,
                      skipped=plan.skipped, processed=len(plan.dial) + plan.expired)
    SCHEDULE_ITEMS.labels(job=jobs.CALLS, result="expired").inc(plan.expired)


@celery_app.task(name="app.tasks.schedules.dial")
def dial(call_id: int) -> str:
    """Dial one call through the telephony adapter (idempotent per attempt)."""
    settings = get_settings()
    client = TelephonyClient.from_settings(settings, http_session())
    result = svc.dial_call(session_scope, call_id, client.dial, settings.call_max_attempts)
    SCHEDULE_ITEMS.labels(job=jobs.CALLS, result=result).inc()
    return result


@celery_app.task(name="app.tasks.schedules.cleanup_calls")
@periodic(jobs.CALL_CLEANUP, ttl=_lock_ttl)
def cleanup_calls(run: RunHandle, at: datetime) -> None:
    """Beat (daily): delete terminal calls older than the retention, in batches."""
    settings = get_settings()
    deleted = svc.cleanup_calls(session_scope, at, timedelta(days=settings.call_retention_days),
                                settings.call_cleanup_batch_size)
    run.counts.update(deleted=deleted, processed=deleted)
    SCHEDULE_ITEMS.labels(job=jobs.CALL_CLEANUP, result="deleted").inc(deleted)


# --- trials ----------------------------------------------------------------------------------


@celery_app.task(name="app.tasks.schedules.expire_trials")
@periodic(jobs.TRIALS, ttl=_lock_ttl)
def expire_trials(run: RunHandle, at: datetime) -> None:
    """Beat: suspend trial tenants past their end; each gets a ``tenant.suspended`` outbox event."""
    with session_scope() as session:
        ids = svc.expire_trials(session, at)
    run.counts.update(suspended=len(ids), processed=len(ids))
    SCHEDULE_ITEMS.labels(job=jobs.TRIALS, result="suspended").inc(len(ids))


@celery_app.task(name="app.tasks.schedules.tenant_suspended")
def tenant_suspended(tenant_id: int, **_event: Any) -> dict[str, int]:
    """Outbox consumer of ``tenant.suspended``: the tenant's queued calls and scheduled campaigns stop."""
    with session_scope() as session:
        return svc.hold_suspended_tenant_work(session, tenant_id, utcnow())
