"""Voice task lifecycle and worker tokens against the real PostgreSQL test database:
claims by conditional update, holders, retries, lease sweeps, JWT tokens and revocation."""

from __future__ import annotations

import threading
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import select

from app.db import get_sessionmaker, session_scope
from app.models.base import utcnow
from app.models.outbox import OutboxEvent
from app.models.voice import VoiceJob
from app.services.voice import jobs as voice_jobs
from app.services.voice import workers

KEY = b"k" * 32


def _new(target: str = "remote", transcript: str = "hello") -> str:
    task_id = voice_jobs.new_job_id()
    with session_scope() as session:
        voice_jobs.create_job(session, task_id=task_id, target=target, transcript=transcript)
    return task_id


def _get(task_id: str) -> VoiceJob:
    with session_scope() as session:
        task = session.get(VoiceJob, task_id)
        assert task is not None
        return task


def test_celery_task_gets_its_outbox_event_in_the_same_transaction(pg_database) -> None:  # type: ignore[no-untyped-def]
    celery_id, remote_id = _new("celery"), _new("remote")
    with session_scope() as session:
        events = session.scalars(select(OutboxEvent).where(OutboxEvent.aggregate_id.in_([celery_id, remote_id]))).all()
        assert [(e.aggregate_id, e.task_name, e.payload) for e in events] == [
            (celery_id, "app.tasks.voice.score", {"task_id": celery_id})]


def test_only_one_of_many_concurrent_claimants_wins(pg_database) -> None:  # type: ignore[no-untyped-def]
    task_id = _new()
    barrier = threading.Barrier(6)
    winners: list[str] = []

    def claimant(n: int) -> None:
        session = get_sessionmaker()()
        try:
            barrier.wait()
            if voice_jobs.claim(session, task_id, f"h{n}", 60) is not None:
                winners.append(f"h{n}")
            session.commit()
        finally:
            session.close()

    threads = [threading.Thread(target=claimant, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    task = _get(task_id)
    assert len(winners) == 1 and task.claimed_by == winners[0]
    assert task.status == "claimed" and task.attempts == 1


def test_only_the_holder_may_update_and_complete(pg_database) -> None:  # type: ignore[no-untyped-def]
    task_id = _new()
    with session_scope() as session:
        assert voice_jobs.claim(session, task_id, "a", 60) is not None
    with session_scope() as session, pytest.raises(voice_jobs.NotHolder):
        voice_jobs.complete(session, task_id, "b", {"scam_score": 0.1})
    with session_scope() as session:
        voice_jobs.start(session, task_id, "a", 60)
        voice_jobs.complete(session, task_id, "a", {"scam_score": 0.1})
    with session_scope() as session, pytest.raises(voice_jobs.NotHolder):
        voice_jobs.complete(session, task_id, "a", {"scam_score": 0.9})  # already completed
    task = _get(task_id)
    assert task.status == "completed" and task.result == {"scam_score": 0.1}


def test_retryable_failures_requeue_until_the_attempts_run_out(pg_database) -> None:  # type: ignore[no-untyped-def]
    task_id = _new("celery")
    for attempt in (1, 2, 3):
        with session_scope() as session:
            assert voice_jobs.claim(session, task_id, "w", 60) is not None
            task = voice_jobs.fail(session, task_id, "w", "download failed", retryable=True, max_attempts=3)
            assert task.attempts == attempt
    task = _get(task_id)
    assert task.status == "failed" and "gave up after 3 attempts" in (task.error or "")
    with session_scope() as session:  # the first event plus one re-dispatch per requeue
        assert len(session.scalars(select(OutboxEvent).where(OutboxEvent.aggregate_id == task_id)).all()) == 3


def test_a_permanent_failure_fails_at_once(pg_database) -> None:  # type: ignore[no-untyped-def]
    task_id = _new()
    with session_scope() as session:
        voice_jobs.claim(session, task_id, "w", 60)
        voice_jobs.fail(session, task_id, "w", "silent_audio: the clip is silent", retryable=False, max_attempts=3)
    task = _get(task_id)
    assert task.status == "failed" and task.error == "silent_audio: the clip is silent"


def test_sweep_returns_expired_leases_and_fails_the_last_attempt(pg_database) -> None:  # type: ignore[no-untyped-def]
    expired, live = _new(), _new()
    now = utcnow()
    with session_scope() as session:
        voice_jobs.claim(session, expired, "dead", 10, now=now - timedelta(seconds=60))
        voice_jobs.claim(session, live, "alive", 600, now=now)
    with session_scope() as session:
        result = voice_jobs.sweep_expired(session, max_attempts=2, now=now)
    assert result.returned >= 1
    assert _get(expired).status == "pending" and _get(expired).claimed_by is None
    assert _get(live).status == "claimed"
    with session_scope() as session:
        voice_jobs.claim(session, expired, "dead2", 10, now=now - timedelta(seconds=60))
    with session_scope() as session:
        voice_jobs.sweep_expired(session, max_attempts=2, now=now)
    task = _get(expired)
    assert task.status == "failed" and "lease expired 2 times" in (task.error or "")


def test_claim_next_takes_the_oldest_pending_task_of_the_allowed_targets(pg_database) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:  # drain whatever earlier tests left pending
        while voice_jobs.claim_next(session, "drain", ["remote", "celery"], 60):
            pass
    celery_id = _new("celery")
    first, second = _new("remote"), _new("remote")
    with session_scope() as session:
        got = [voice_jobs.claim_next(session, "w", ["remote"], 60) for _ in range(3)]
    assert [t.id if t else None for t in got] == [first, second, None]
    assert _get(celery_id).status == "pending"


def test_worker_tokens_are_jwts_whose_hash_is_stored_and_revocable(pg_database) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        worker, token = workers.create_worker(session, "worker-01", KEY, token_days=1)
        assert worker.token_hash == workers.token_hash(token) and token not in worker.token_hash
    claims = jwt.decode(token, workers.token_key(KEY), algorithms=["HS256"])
    assert claims["sub"] == worker.id and claims["typ"] == "voice-worker"
    with session_scope() as session:
        assert workers.authenticate(session, token, KEY).id == worker.id
    forged = jwt.encode(claims | {"sub": "rw_other"}, b"x" * 32, algorithm="HS256")
    expired = jwt.encode(claims | {"exp": 1}, workers.token_key(KEY), algorithm="HS256")
    for bad, why in ((forged, "not a valid"), (expired, "expired"), (token + "x", "not a valid")):
        with session_scope() as session, pytest.raises(workers.TokenRejected, match=why):
            workers.authenticate(session, bad, KEY)
    with session_scope() as session:
        workers.revoke_worker(session, worker.id)
    with session_scope() as session, pytest.raises(workers.TokenRejected, match="revoked"):
        workers.authenticate(session, token, KEY)


def test_audio_is_read_whole_up_to_one_byte_past_the_limit() -> None:
    import contextlib
    import io

    def opener(data: bytes):  # type: ignore[no-untyped-def]
        return lambda _key: contextlib.nullcontext(io.BytesIO(data))

    small, big = bytes(range(256)) * 1000, b"x" * (3 << 20)
    assert voice_jobs.read_audio("k", None, opener(small), timeout=1, max_bytes=1 << 20) == small
    assert len(voice_jobs.read_audio("k", None, opener(big), timeout=1, max_bytes=(1 << 20) + 5)) == (1 << 20) + 6
    assert voice_jobs.read_audio(None, None, opener(small), timeout=1, max_bytes=10) is None
