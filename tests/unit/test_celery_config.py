"""The Celery configuration: every queue declared, every route valid, reliability defaults."""

from __future__ import annotations

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
