"""The scan state machine, submission, the recovery sweep and one scan run, against the
real test PostgreSQL database (and real Docker where a container runs)."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from app.db import get_sessionmaker, session_scope
from app.models.base import utcnow
from app.models.jobs import JobRun
from app.models.outbox import OutboxEvent
from app.models.scans import STATES, ScanAudit, ScanJob
from app.services.sandbox import SandboxConfig
from app.services.sandbox import docker_client as make_docker_client
from app.services.scans import (
    RECOVERY_TRANSITIONS,
    TRANSITIONS,
    IllegalTransition,
    InvalidScanUrl,
    ScanDeps,
    check_transition,
    run_scan,
    submit_scan,
    sweep,
    transition,
    validate_url,
)
from app.settings import get_settings
from tests.scans_support import (  # noqa: F401  (fixtures)
    clean_scan_tables,
    docker_client,
    fetcher_image,
    no_scan_containers_left_behind,
)

pytestmark = pytest.mark.usefixtures("clean_scan_tables")


def _job(state: str = "QUEUED", version: int = 1, attempts: int = 0, age: float = 0.0,
         url: str = "http://127.0.0.1/") -> str:
    job_id = uuid.uuid4().hex
    with session_scope() as session:
        session.add(ScanJob(id=job_id, url=url, state=state, version=version, attempts=attempts,
                            updated_at=utcnow() - timedelta(seconds=age)))
    return job_id


def _audit(job_id: str) -> list[tuple[str | None, str, int, str]]:
    with session_scope() as session:
        rows = session.scalars(select(ScanAudit).where(ScanAudit.job_id == job_id).order_by(ScanAudit.id))
        return [(a.from_state, a.to_state, a.version, a.worker) for a in rows]


def _events(job_id: str) -> list[OutboxEvent]:
    with session_scope() as session:
        stmt = (select(OutboxEvent).where(OutboxEvent.aggregate_type == "scan", OutboxEvent.aggregate_id == job_id)
                .order_by(OutboxEvent.id))  # in the order written: a heap scan's order is not
        return list(session.scalars(stmt))


# --- transitions ----------------------------------------------------------------------------


def test_only_the_documented_transitions_are_legal() -> None:
    legal = {("QUEUED", "FETCHING"), ("FETCHING", "ANALYZING"), ("ANALYZING", "COMPLETED"),
             ("FETCHING", "TIMED_OUT"), ("ANALYZING", "TIMED_OUT"),
             ("QUEUED", "FAILED"), ("FETCHING", "FAILED"), ("ANALYZING", "FAILED")}
    assert legal == TRANSITIONS
    assert {("FETCHING", "QUEUED"), ("ANALYZING", "QUEUED")} == RECOVERY_TRANSITIONS
    for a in STATES:
        for b in STATES:
            if (a, b) in legal:
                check_transition(a, b)
            else:
                with pytest.raises(IllegalTransition):
                    check_transition(a, b)
            if (a, b) in RECOVERY_TRANSITIONS:
                check_transition(a, b, recovery=True)


def test_transition_bumps_the_version_and_audits_in_one_transaction(pg_database) -> None:  # type: ignore[no-untyped-def]
    job_id = _job()
    with session_scope() as session:
        assert transition(session, job_id, from_state="QUEUED", to_state="FETCHING", version=1, worker="w1",
                          detail="go") == 2
    with session_scope() as session:
        job = session.get(ScanJob, job_id)
        assert (job.state, job.version, job.finished_at) == ("FETCHING", 2, None)
    assert _audit(job_id) == [("QUEUED", "FETCHING", 2, "w1")]
    # Rolled back: neither the state nor the audit row stays.
    with pytest.raises(RuntimeError), session_scope() as session:
        transition(session, job_id, from_state="FETCHING", to_state="ANALYZING", version=2, worker="w1")
        raise RuntimeError("crash before commit")
    with session_scope() as session:
        assert session.get(ScanJob, job_id).state == "FETCHING"
    assert len(_audit(job_id)) == 1
    # A terminal state stamps finished_at.
    with session_scope() as session:
        transition(session, job_id, from_state="FETCHING", to_state="FAILED", version=2, worker="w1",
                   values={"error": "x"})
    with session_scope() as session:
        job = session.get(ScanJob, job_id)
        assert job.finished_at is not None and job.error == "x" and job.version == 3


def test_stale_version_or_state_updates_nothing(pg_database) -> None:  # type: ignore[no-untyped-def]
    job_id = _job(version=5)
    with session_scope() as session:
        assert transition(session, job_id, from_state="QUEUED", to_state="FETCHING", version=4, worker="w") is None
        assert transition(session, job_id, from_state="FETCHING", to_state="ANALYZING", version=5, worker="w") is None
    assert _audit(job_id) == []
    with pytest.raises(IllegalTransition), session_scope() as session:
        transition(session, job_id, from_state="QUEUED", to_state="COMPLETED", version=5, worker="w")


def test_two_claims_racing_on_one_version_one_wins(pg_database) -> None:  # type: ignore[no-untyped-def]
    """Both read version 1, both UPDATE at once: PostgreSQL serialises them on the row,
    the second re-checks the WHERE clause and updates nothing."""
    job_id = _job()
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def claim(worker: str) -> None:
        session = get_sessionmaker()()
        try:
            version = session.get(ScanJob, job_id).version
            barrier.wait(timeout=10)
            results[worker] = transition(session, job_id, from_state="QUEUED", to_state="FETCHING",
                                         version=version, worker=worker)
            # The first to get the row lock holds it a moment, so the other's UPDATE is
            # waiting on it and must re-check the WHERE clause after this commit.
            time.sleep(0.3)
            session.commit()
        finally:
            session.close()

    threads = [threading.Thread(target=claim, args=(w,)) for w in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results.values(), key=lambda v: v is None) == [2, None]
    winner = next(w for w, v in results.items() if v == 2)
    assert _audit(job_id) == [("QUEUED", "FETCHING", 2, winner)]


# --- submission -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://example.com", "https://example.com:8443/a?b=c#d", "HTTP://EXAMPLE.COM/",
                                 "http://[2001:db8::1]/", "https://bücher.example/", "  http://example.com/  "])
def test_valid_urls(url: str) -> None:
    assert validate_url(url) == url.strip()


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://example.com/file", "scheme ftp: is not allowed"),
    ("file:///etc/passwd", "scheme file: is not allowed"),
    ("javascript:alert(1)", "scheme javascript: is not allowed"),
    ("example.com/path", "scheme (none) is not allowed"),
    ("http:///path-only", "no host"),
    ("http://", "no host"),
    ("http://user:pw@example.com/", "user information"),
    ("http://user@example.com/", "user information"),
    ("http://example.com:99999/", "port"),
    ("http://exa mple.com/", "whitespace or control characters"),
    ("http://example.com/\x00", "whitespace or control characters"),
    ("http://example.com/" + "a" * 2040, "at most 2048"),
    ("", "empty"),
])
def test_invalid_urls_name_the_reason(url: str, reason: str) -> None:
    with pytest.raises(InvalidScanUrl) as info:
        validate_url(url)
    assert reason in info.value.reason


def test_submit_writes_job_audit_and_outbox_event(pg_database) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        job_id = submit_scan(session, "https://scan-target.invalid/x").id
    with session_scope() as session:
        job = session.get(ScanJob, job_id)
        assert (job.state, job.version, job.attempts, job.url) == ("QUEUED", 1, 0, "https://scan-target.invalid/x")
    assert _audit(job_id) == [(None, "QUEUED", 1, "api")]
    [event] = _events(job_id)
    assert event.task_name == "app.tasks.scans.run" and event.payload["scan_id"] == job_id


# --- the recovery sweep ---------------------------------------------------------------------


def test_sweep_requeues_stale_jobs_and_fails_exhausted_ones(pg_database) -> None:  # type: ignore[no-untyped-def]
    stale_fetch = _job("FETCHING", version=2, attempts=1, age=600)
    stale_analyze = _job("ANALYZING", version=3, attempts=2, age=600)
    exhausted = _job("FETCHING", version=2, attempts=3, age=600)
    fresh = _job("FETCHING", version=2, attempts=1, age=5)
    done = _job("COMPLETED", version=4, attempts=1, age=600)
    result = sweep(session_scope, None, stale_seconds=300, max_attempts=3, worker="sweeper")
    assert set(result.requeued) >= {stale_fetch, stale_analyze} and exhausted in result.failed
    assert fresh not in result.requeued + result.failed and done not in result.requeued + result.failed
    with session_scope() as session:
        states = {j: session.get(ScanJob, j).state for j in (stale_fetch, stale_analyze, exhausted, fresh, done)}
        assert "giving up" in session.get(ScanJob, exhausted).error
    assert states == {stale_fetch: "QUEUED", stale_analyze: "QUEUED", exhausted: "FAILED", fresh: "FETCHING",
                      done: "COMPLETED"}
    assert _audit(stale_fetch) == [("FETCHING", "QUEUED", 3, "sweeper")]
    assert _audit(stale_analyze) == [("ANALYZING", "QUEUED", 4, "sweeper")]
    assert [e.task_name for e in _events(stale_fetch)] == ["app.tasks.scans.run"]
    assert _events(exhausted) == [] and _events(fresh) == []
    # A second sweep finds nothing more to do for these jobs.
    again = sweep(session_scope, None, stale_seconds=300, max_attempts=3, worker="sweeper")
    assert not set(again.requeued + again.failed) & {stale_fetch, stale_analyze, exhausted}


def test_sweep_task_records_its_run(pg_database) -> None:  # type: ignore[no-untyped-def]
    from app.tasks.scans import sweep as sweep_task

    job_id = _job("FETCHING", version=2, attempts=1, age=get_settings().scan_stale_seconds + 60)
    out = sweep_task()
    assert job_id in out["requeued"]
    with session_scope() as session:
        run = session.scalars(select(JobRun).where(JobRun.job == "scan-sweep").order_by(JobRun.id.desc())).first()
        assert run.outcome == "ok" and run.counts["requeued"] >= 1


# --- one scan run -----------------------------------------------------------------------------


def _deps(image: str, **settings_overrides: Any) -> ScanDeps:
    settings = get_settings().model_copy(update={"scan_network": "none", **settings_overrides})
    cfg = SandboxConfig.from_settings(settings)
    if "scan_fetcher_image" not in settings_overrides:
        cfg = dataclasses.replace(cfg, image=image)
    return ScanDeps(scope=session_scope, docker=lambda: make_docker_client(settings), sandbox=cfg, worker="unit",
                    max_attempts=3, docker_max_attempts=settings.scan_docker_max_attempts)


@pytest.mark.usefixtures("no_scan_containers_left_behind")
def test_run_scan_records_a_refused_fetch_and_skips_a_claimed_job(pg_database, fetcher_image) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        job_id = submit_scan(session, "http://127.0.0.1:9/admin").id
    outcome = run_scan(_deps(fetcher_image), job_id)
    assert outcome.result == "failed" and "blocked address 127.0.0.1 (loopback)" in outcome.error
    assert [(a, b) for a, b, _, _ in _audit(job_id)] == [(None, "QUEUED"), ("QUEUED", "FETCHING"),
                                                        ("FETCHING", "FAILED")]
    # Run again (a duplicate delivery): nothing happens.
    assert run_scan(_deps(fetcher_image), job_id).result == "skipped"
    assert len(_audit(job_id)) == 3
    assert run_scan(_deps(fetcher_image), "no-such-scan").result == "missing"


@pytest.mark.usefixtures("no_scan_containers_left_behind")
def test_missing_image_fails_with_the_fix(pg_database, docker_client) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        job_id = submit_scan(session, "http://scan-target.invalid/").id
    outcome = run_scan(_deps("", scan_fetcher_image="app-fetcher:does-not-exist"), job_id)
    assert outcome.result == "failed" and "scripts/build-fetcher" in outcome.error


def test_docker_unavailable_requeues_with_a_delay_then_fails(pg_database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A Docker address where nothing listens: the real client's real error.
    deps = _deps("app-fetcher:any", docker_url=f"unix://{tmp_path}/no-docker.sock", docker_timeout=2)
    with session_scope() as session:
        job_id = submit_scan(session, "http://scan-target.invalid/").id
    # Times are taken before each run, so a slow machine cannot eat into the backoff's margin.
    before = utcnow()
    outcome = run_scan(deps, job_id)
    assert outcome.result == "requeued" and "Docker" in outcome.error
    events = _events(job_id)
    assert len(events) == 2 and events[-1].event_type == "scan.requeued"
    assert events[-1].next_attempt_at >= before + timedelta(seconds=5)  # not before the backoff
    with session_scope() as session:
        job = session.get(ScanJob, job_id)
        assert (job.state, job.attempts) == ("QUEUED", 1)
        # Past SCAN_MAX_ATTEMPTS a Docker outage still requeues: the daemon's outage has
        # its own, longer budget (SCAN_DOCKER_MAX_ATTEMPTS).
        session.execute(update(ScanJob).where(ScanJob.id == job_id).values(attempts=3))
    before = utcnow()
    outcome = run_scan(deps, job_id)
    assert outcome.result == "requeued"
    assert _events(job_id)[-1].next_attempt_at >= before + timedelta(seconds=40)  # 5 × 2³ s
    with session_scope() as session:
        # The last one: no more requeues.
        session.execute(update(ScanJob).where(ScanJob.id == job_id).values(attempts=7))
    outcome = run_scan(deps, job_id)
    assert outcome.result == "failed" and "after 8 attempts" in outcome.error
    assert [(a, b) for a, b, _, _ in _audit(job_id)] == [
        (None, "QUEUED"), ("QUEUED", "FETCHING"), ("FETCHING", "QUEUED"), ("QUEUED", "FETCHING"),
        ("FETCHING", "QUEUED"), ("QUEUED", "FETCHING"), ("FETCHING", "FAILED")]


def test_unexpected_errors_fail_the_scan_with_a_reason(pg_database) -> None:  # type: ignore[no-untyped-def]
    def broken_docker() -> Any:
        raise KeyError("a bug")

    deps = ScanDeps(scope=session_scope, docker=broken_docker, sandbox=SandboxConfig(image="x"), worker="unit")
    job_id = _job()
    outcome = run_scan(deps, job_id)
    assert outcome.result == "failed" and "KeyError" in outcome.error
    with session_scope() as session:
        assert session.get(ScanJob, job_id).state == "FAILED"



def test_stale_limit_must_exceed_the_container_timeout() -> None:
    from app.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as info:
        load_settings(scan_timeout=300, scan_stale_seconds=305)
    assert "SCAN_STALE_SECONDS" in str(info.value.code)
    assert load_settings(scan_timeout=30, scan_stale_seconds=60).scan_stale_seconds == 60
