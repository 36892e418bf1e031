"""The Celery configuration: every queue declared, every route valid, reliability defaults."""

from __future__ import annotations

from datetime import UTC

import pytest
from kombu import Queue

import celeryconfig
from app.celery_app import RouteError, check_routes, create_celery, queue_for
from app.settings import QUEUES


def test_every_queue_declared_and_routed() -> None:
    app = create_celery()
    assert {q.name for q in app.conf.task_queues} == set(QUEUES)
    for family in ("ocr", "scans", "voice", "outbox", "messages", "files", "gc", "schedules"):
        assert queue_for(app, f"app.tasks.{family}.anything") == family
    assert queue_for(app, "app.tasks.system.ping") == "default"
    assert queue_for(app, "somewhere.else") == "default"


def test_reliability_defaults() -> None:
    assert celeryconfig.task_acks_late is True
    assert celeryconfig.task_reject_on_worker_lost is True
    assert celeryconfig.worker_prefetch_multiplier == 1
    assert celeryconfig.task_create_missing_queues is False
    assert celeryconfig.accept_content == ["json"] and celeryconfig.task_serializer == "json"
    assert celeryconfig.broker_transport_options["visibility_timeout"] > celeryconfig.task_time_limit
    assert celeryconfig.task_soft_time_limit < celeryconfig.task_time_limit
    assert celeryconfig.result_expires > 0 and celeryconfig.worker_max_tasks_per_child > 0
    assert celeryconfig.broker_connection_retry_on_startup is True


def test_route_to_a_misspelt_queue_fails_at_start_up() -> None:
    app = create_celery()
    app.conf.task_routes = {**celeryconfig.task_routes, "app.tasks.ocr.*": {"queue": "orc"}}
    with pytest.raises(RouteError, match="orc"):
        check_routes(app)


def test_undeclared_queue_fails_at_start_up() -> None:
    app = create_celery()
    app.conf.task_queues = tuple(q for q in app.conf.task_queues if q.name != "gc") + (Queue("gcc"),)
    with pytest.raises(RouteError, match="gc"):
        check_routes(app)


# --- one registry: families, queues, modules, routes -----------------------------------------


def test_queues_modules_and_routes_derive_from_the_families() -> None:
    from app.celery_app import TASK_MODULES
    from app.settings import FAMILIES

    assert tuple(FAMILIES) == QUEUES
    assert [f"app.tasks.{m}" for m in FAMILIES.values()] == TASK_MODULES
    assert {f"app.tasks.{m}": q for q, m in FAMILIES.items()} == celeryconfig.FAMILY_QUEUES


def test_every_task_is_routed_to_its_familys_queue_and_there_is_one_probe() -> None:
    from app.celery_app import celery_app
    from app.settings import FAMILIES

    celery_app.loader.import_default_modules()
    names = [n for n in celery_app.tasks if n.startswith("app.tasks.")]
    assert {n.split(".")[2] for n in names} == set(FAMILIES.values())  # every family has tasks
    queue_of = {module: queue for queue, module in FAMILIES.items()}
    for name in names:
        assert queue_for(celery_app, name) == queue_of[name.split(".")[2]], name
    assert [n for n in names if n.endswith(".ping")] == ["app.tasks.system.ping"]


# --- beat: one name per job ----------------------------------------------------------------


def test_beat_entries_are_the_jobs_and_each_task_is_named_as_beat_names_it() -> None:
    from app.celery_app import celery_app
    from app.services import jobs

    celery_app.loader.import_default_modules()
    assert set(celeryconfig.beat_schedule) == set(jobs.BEAT_JOBS)
    for job, entry in celeryconfig.beat_schedule.items():
        task = entry["task"]
        assert task == jobs.BEAT_JOBS[job]
        assert celery_app.tasks[task].run.__name__ == task.rsplit(".", 1)[1], task
        expires, schedule = entry["options"]["expires"], entry["schedule"]
        assert 0 < expires <= (schedule if isinstance(schedule, (int, float)) else 24 * 3600), job


def test_a_beat_job_runs_as_of_an_iso_time_with_an_offset_only() -> None:
    from datetime import datetime

    from app.services.jobs import parse_now

    assert parse_now("2030-01-02T03:04:05+00:00") == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_now(None).tzinfo is not None
    with pytest.raises(ValueError, match="UTC offset"):
        parse_now("2030-01-02T03:04:05")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_now("yesterday")


# --- one retry policy ----------------------------------------------------------------------


def test_retry_policy_waits_grow_to_the_cap_with_jitter() -> None:
    from app.tasks.base import RetryPolicy

    full = RetryPolicy(transient=(OSError,), max_retries=3, base=2.0, cap=10.0, floor=0.5)
    equal = RetryPolicy(transient=(OSError,), max_retries=None, base=2.0, cap=10.0, jitter="equal")
    for n, ceiling in enumerate([2.0, 4.0, 8.0, 10.0, 10.0]):
        waits = [full.delay(n) for _ in range(200)]
        assert all(0.5 <= w <= ceiling for w in waits)
        halves = [equal.delay(n) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in halves)
    assert equal.delay(10_000) <= 10.0
    assert [full.used_up(n) for n in range(5)] == [False, False, False, True, True]
    assert not equal.used_up(10_000)
    with pytest.raises(ValueError):
        RetryPolicy(transient=(), max_retries=1, jitter="none")  # type: ignore[arg-type]


def test_every_retrying_task_takes_its_policys_count_as_a_kwarg() -> None:
    """The count travels in the task's kwargs (so a hand-back to the outbox keeps it): each
    task that retries by a policy must accept that kwarg."""
    import inspect

    from app.tasks import files, messages, ocr, scans, schedules, voice
    from app.tasks.base import DB_UNAVAILABLE

    cases = [(ocr.process, ocr.OCR_RETRY), (scans.run, DB_UNAVAILABLE), (messages.route, DB_UNAVAILABLE),
             (voice.score, DB_UNAVAILABLE), (files.merge, DB_UNAVAILABLE), (files.merge, files.MERGE_BUSY),
             (files.merge, files.storage_retry()), (schedules.send_campaign_batch, schedules.BATCH_RETRY),
             (schedules.send_lead_reminder, schedules.REMINDER_RETRY)]
    for task, policy in cases:
        assert policy.counter in inspect.signature(task.run).parameters, (task.name, policy.counter)
