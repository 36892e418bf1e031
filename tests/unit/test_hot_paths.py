"""The hot paths made faster keep their guarantees: voice claims and results for several
tasks in one statement each,
campaign batches assigned in one statement, API key use recorded at most once a minute,
and a message id submitted twice at the same moment answered as a duplicate (never a 500)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import delete, func, select, update

from app.db import session_scope
from app.models.auth import ApiKey
from app.models.base import utcnow
from app.models.messages import Message
from app.models.outbox import OutboxEvent
from app.models.schedules import Campaign, CampaignRecipient
from app.models.voice import VoiceJob
from app.services import schedules as svc
from app.services.auth import create_api_key, verify_api_key
from app.services.voice import jobs as voice_jobs


def test_voice_claim_of_several_in_one_statement_then_results_recorded_together(pg_database) -> None:  # type: ignore[no-untyped-def]
    ids = [voice_jobs.new_job_id() for _ in range(4)]
    with session_scope() as session:
        for task_id in ids:
            voice_jobs.create_job(session, task_id=task_id, target="remote", transcript="hello")
        session.execute(update(VoiceJob).where(VoiceJob.id == ids[3]).values(status="completed"))
    with session_scope() as session:
        claimed = voice_jobs.claim_many(session, [*ids, "nope"], "celery:w1", 60)
        assert sorted(claimed) == sorted(ids[:3]) and claimed[ids[0]].transcript == "hello"
        assert voice_jobs.statuses(session, [ids[3], "nope"]) == {ids[3]: "completed"}
    with session_scope() as session:  # a second claimant finds them taken
        assert voice_jobs.claim_many(session, ids, "celery:w2", 60) == {}
    with session_scope() as session:  # ids[2]'s lease ran out and someone else holds it now
        session.execute(update(VoiceJob).where(VoiceJob.id == ids[2]).values(claimed_by="remote:x"))
    with session_scope() as session:
        before = utcnow()
        assert voice_jobs.renew_leases(session, ids[:3], "celery:w1", 600) == 2
    with session_scope() as session:
        lost = voice_jobs.record_results(session, "celery:w1", [(t, {"scam_score": n / 10}) for n, t in enumerate(ids[:3])])
        assert lost == {ids[2]: "processing"}
    with session_scope() as session:
        rows = {t.id: t for t in session.scalars(select(VoiceJob).where(VoiceJob.id.in_(ids)))}
    for n, task_id in enumerate(ids[:2]):
        row = rows[task_id]
        assert row.status == "completed" and row.result == {"scam_score": n / 10} and row.lease_until is None
        assert row.claimed_by == "celery:w1" and row.attempts == 1 and row.version == 2
    assert rows[ids[2]].status == "processing" and rows[ids[2]].result is None
    assert rows[ids[2]].lease_until is not None and rows[ids[2]].lease_until < before + timedelta(seconds=120)


def test_campaign_batches_are_assigned_in_id_order_by_one_statement(pg_database) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        tenant = svc.create_tenant(session, name="t", plan="paid", trial_ends_at=None, timezone="UTC",
                                   business_hours={})
        campaign = svc.create_campaign(
            session, tenant_id=tenant.id, channel="email", subject="s", template="t",
            scheduled_at=utcnow() - timedelta(minutes=1),
            recipients=[f"r{i}@example.com" for i in range(23)] + ["not-an-email"])
        campaign_id = campaign.id
    with session_scope() as session:
        plans = svc.start_due_campaigns(session, utcnow(), batch_size=10, batch_delay=2.0)
    mine = [p for p in plans if p.campaign_id == campaign_id]
    assert [(p.batch, p.countdown) for p in mine] == [(0, 0.0), (1, 2.0), (2, 4.0)]
    with session_scope() as session:
        rows = session.execute(select(CampaignRecipient.id, CampaignRecipient.batch, CampaignRecipient.status)
                               .where(CampaignRecipient.campaign_id == campaign_id)
                               .order_by(CampaignRecipient.id)).all()
        pending = [r for r in rows if r.status == "pending"]
        assert [r.batch for r in pending] == [0] * 10 + [1] * 10 + [2] * 3
        assert all(r.batch is None for r in rows if r.status == "skipped")
        assert session.get(Campaign, campaign_id).batches == 3  # type: ignore[union-attr]


def test_api_key_use_is_recorded_at_most_once_a_minute(pg_database) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        key, token = create_api_key(session, "usage")
        key_id = key.id
    with session_scope() as session:
        assert verify_api_key(session, token) is not None
    with session_scope() as session:
        first = session.get(ApiKey, key_id).last_used_at  # type: ignore[union-attr]
    assert first is not None
    with session_scope() as session:
        verify_api_key(session, token)
    with session_scope() as session:
        assert session.get(ApiKey, key_id).last_used_at == first  # type: ignore[union-attr]
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=first - timedelta(minutes=2)))
    with session_scope() as session:
        verify_api_key(session, token)
    with session_scope() as session:
        assert session.get(ApiKey, key_id).last_used_at > first  # type: ignore[operator,union-attr]


def test_the_same_message_id_submitted_at_once_is_one_message_and_duplicates(api) -> None:  # type: ignore[no-untyped-def]
    app = api.client.application
    body = {"conversation_id": "c", "channel": "whatsapp", "recipient": "+15550001", "content": "hi"}
    for round_no in range(5):
        message_id = f"race-{round_no}-{utcnow().timestamp()}"
        barrier = threading.Barrier(6)
        answers: list[tuple[int, bool | None]] = []

        def post() -> None:
            client = app.test_client()
            barrier.wait()
            resp = client.post("/api/messages", json=body | {"id": message_id}, headers=api.headers)
            answers.append((resp.status_code, (resp.get_json() or {}).get("duplicate")))

        threads = [threading.Thread(target=post) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(answers) == [(202, False)] + [(202, True)] * 5, answers
        with session_scope() as session:
            assert session.scalar(select(func.count()).select_from(Message).where(Message.id == message_id)) == 1
            assert session.scalar(select(func.count()).select_from(OutboxEvent).where(
                OutboxEvent.aggregate_id == message_id)) == 1
            # No relay runs here: leave no pending event for a later test's relay to publish.
            session.execute(delete(OutboxEvent).where(OutboxEvent.aggregate_id == message_id))


def test_a_pooled_connection_is_pinged_only_after_sitting_idle_and_replaced_if_dead(pg_database) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine, text

    from app.db import make_engine
    from app.settings import get_settings

    engine = make_engine(get_settings().model_copy(update={"database_ping_after_idle": 0.3}))
    pings = []
    real_ping = engine.dialect.do_ping
    engine.dialect.do_ping = lambda conn: pings.append(1) or real_ping(conn)  # type: ignore[method-assign]
    admin = create_engine(get_settings().database_url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("select pg_backend_pid()")).scalar()
        with engine.connect() as conn:  # back moments ago: used as is
            assert conn.execute(text("select pg_backend_pid()")).scalar() == pid
        assert pings == []
        with admin.connect() as other:  # the server drops it while it sits in the pool
            other.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        time.sleep(0.5)
        with engine.connect() as conn:  # idle: pinged, found dead, replaced before use
            assert conn.execute(text("select 1")).scalar() == 1
            assert conn.execute(text("select pg_backend_pid()")).scalar() != pid
        assert len(pings) == 1
    finally:
        engine.dispose()
        admin.dispose()
