"""Scheduled job services against the real PostgreSQL and Redis: locks, trials, campaigns, reminders."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.models.jobs import JobRun
from app.models.outbox import OutboxEvent
from app.models.schedules import CampaignRecipient, Lead, Tenant
from app.services import jobs
from app.services import schedules as svc

UTC = UTC


def test_slow_run_is_never_overlapped_and_the_skip_is_counted(pg_database, redis_client, unique) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope
    from app.locks import redis_client as lock_redis
    from app.locks import reset_redis_client

    reset_redis_client()
    job = f"slow-{unique}"
    started = threading.Event()

    def slow(run) -> None:  # type: ignore[no-untyped-def]
        started.set()
        time.sleep(2.5)  # far longer than the 0.6 s lock TTL: only the heartbeat keeps it
        run.counts["processed"] = 1

    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", jobs.run_locked(session_scope, job, slow,
                                                                                        ttl=0.6)))
    first.start()
    started.wait(5)
    for i in range(3):  # three later "slots" while the first run is still going
        time.sleep(0.6)
        results[f"next{i}"] = jobs.run_locked(session_scope, job, lambda run: None, ttl=0.6)
    first.join(10)
    assert results["first"].skipped is False and results["first"].counts == {"processed": 1}
    assert [results[f"next{i}"].skipped for i in range(3)] == [True, True, True]
    with session_scope() as session:
        outcomes = dict(session.execute(select(JobRun.outcome, func.count()).where(JobRun.job == job)
                                        .group_by(JobRun.outcome)).all())
        skip = session.scalars(select(JobRun.detail).where(JobRun.job == job, JobRun.outcome == "skipped")).first()
    assert outcomes == {"ok": 1, "skipped": 3}
    assert "held" in skip
    assert lock_redis().get(f"lock:{job}") is None  # released at the end


def test_trials_are_suspended_once_with_one_outbox_event_each(db_session) -> None:  # type: ignore[no-untyped-def]
    now = datetime(2030, 1, 10, tzinfo=UTC)
    past = [svc.create_tenant(db_session, name=f"t{i}", plan="trial", trial_ends_at=now - timedelta(hours=i + 1),
                              timezone="UTC", business_hours={}) for i in range(3)]
    future = svc.create_tenant(db_session, name="f", plan="trial", trial_ends_at=now + timedelta(hours=1),
                               timezone="UTC", business_hours={})
    paid = svc.create_tenant(db_session, name="p", plan="paid", trial_ends_at=None, timezone="UTC",
                             business_hours={})
    db_session.commit()
    first = svc.expire_trials(db_session, now)
    db_session.commit()
    second = svc.expire_trials(db_session, now)
    db_session.commit()
    ids = {t.id for t in past}
    assert ids <= set(first) and not ids & set(second)
    for tenant in past + [future, paid]:
        db_session.refresh(tenant)
    assert [t.status for t in past] == ["suspended"] * 3
    assert future.status == "active" and paid.status == "active"
    events = db_session.execute(select(OutboxEvent.aggregate_id, OutboxEvent.event_type, OutboxEvent.task_name)
                                .where(OutboxEvent.aggregate_type == "tenant")).all()
    per_tenant = [e for e in events if int(e.aggregate_id) in ids]
    assert sorted(int(e.aggregate_id) for e in per_tenant) == sorted(ids)
    assert {(e.event_type, e.task_name) for e in per_tenant} == {("tenant.suspended", svc.TENANT_SUSPENDED_TASK)}


def test_campaign_input(db_session) -> None:  # type: ignore[no-untyped-def]
    tenant = svc.create_tenant(db_session, name="c", plan="paid", trial_ends_at=None, timezone="UTC",
                               business_hours={})
    kw = dict(tenant_id=tenant.id, channel="email", subject="s", template="t", scheduled_at=datetime.now(UTC))
    with pytest.raises(svc.ScheduleInputError, match="at least one recipient"):
        svc.create_campaign(db_session, recipients=[], **kw)
    with pytest.raises(svc.ScheduleInputError, match="no recipient is a valid address"):
        svc.create_campaign(db_session, recipients=["nope", "a@@b"], **kw)
    campaign = svc.create_campaign(db_session, recipients=["a@example.com", "not-an-email", "A@EXAMPLE.com"], **kw)
    rows = db_session.execute(select(CampaignRecipient.address, CampaignRecipient.status, CampaignRecipient.detail)
                              .where(CampaignRecipient.campaign_id == campaign.id)
                              .order_by(CampaignRecipient.id)).all()
    assert [(r.address, r.status) for r in rows] == [("a@example.com", "pending"), ("not-an-email", "skipped")]
    assert "invalid email address" in rows[1].detail
    assert campaign.total == 2 and campaign.skipped == 1


def test_reminder_sent_once_and_moved_forward(pg_database) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope

    now = datetime(2030, 2, 1, 12, tzinfo=UTC)
    due = now - timedelta(minutes=5)
    with session_scope() as session:
        tenant = svc.create_tenant(session, name="r", plan="paid", trial_ends_at=None, timezone="UTC",
                                   business_hours={})
        lead = svc.create_lead(session, tenant_id=tenant.id, name="Ann", email="ann@example.com", phone=None,
                               next_reminder_at=due)
        lead_id = lead.id
    with session_scope() as session:
        assert (lead_id, due.isoformat()) in svc.due_reminders(session, now)
    sent: list[str] = []
    period = timedelta(hours=24)
    results = [svc.send_reminder(session_scope, lead_id, due, now, period, lambda to, s, b: sent.append(to))
               for _ in range(2)]
    assert results == ["sent", "already_done"] and sent == ["ann@example.com"]
    with session_scope() as session:
        lead = session.get(Lead, lead_id)
        assert lead.next_reminder_at == now + period and lead.reminders_sent == 1
        assert (lead_id, due.isoformat()) not in svc.due_reminders(session, now)
    with session_scope() as session:
        assert session.get(Tenant, tenant.id) is not None
