"""The one Celery application, its start-up checks and its worker-process signals.

The worker-side outbox hooks (an event's task taken, a retry handed back) live in
``app.tasks.base``. Signals also feed the operations side: per-task metrics (received,
succeeded, failed, retried, runtime, by task name and queue; see ``app.metrics``), the
worker's metrics port, and OpenTelemetry tracing of task publishes and runs
(``app.tracing``).
"""

from __future__ import annotations

import logging
import os
import time

from celery import Celery, signals
from celery.app.routes import Router

from app.settings import FAMILIES, QUEUES

logger = logging.getLogger(__name__)

#: Task modules, one per family (``app.settings.FAMILIES``); each is routed to its
#: family's queue by celeryconfig.
TASK_MODULES = [f"app.tasks.{module}" for module in FAMILIES.values()]


class RouteError(RuntimeError):
    """A route names a queue that is not declared."""


def check_routes(app: Celery) -> None:
    """Fail loudly when a route or the default queue names an undeclared queue."""
    declared = {q.name for q in app.conf.task_queues}
    missing = set(QUEUES) - declared
    if missing:
        raise RouteError(f"queues not declared in celeryconfig: {sorted(missing)}")
    if app.conf.task_default_queue not in declared:
        raise RouteError(f"default queue {app.conf.task_default_queue!r} is not declared")
    routes = app.conf.task_routes or {}
    for pattern, route in dict(routes).items():
        queue = route.get("queue") if isinstance(route, dict) else None
        if queue not in declared:
            raise RouteError(f"route {pattern!r} names undeclared queue {queue!r}")


def queue_for(app: Celery, task_name: str) -> str:
    """The queue a task name is routed to (used by tests and the outbox relay)."""
    router: Router = app.amqp.router
    route = router.route({}, task_name)
    return route["queue"].name


def create_celery() -> Celery:
    # Every task retries through app.tasks.base.HandBackRetry: a retry the broker cannot
    # take goes back to the outbox instead of being dropped. That module also holds the
    # worker-side outbox hooks (the task_prerun signal that marks an event taken).
    app = Celery("app", task_cls="app.tasks.base:HandBackRetry")
    app.config_from_object("celeryconfig")
    app.conf.include = TASK_MODULES
    check_routes(app)
    return app


celery_app = create_celery()

import app.tasks.base  # noqa: E402,F401  (connects the worker-side outbox hooks)


@signals.worker_process_init.connect
def _init_worker_process(**_kwargs: object) -> None:
    # A forked pool process must not reuse the parent's pooled DB connections.
    from app.db import dispose_engine

    dispose_engine()


@signals.setup_logging.connect
def _setup_logging(**_kwargs: object) -> None:
    # Taking this signal stops Celery from installing its own handlers.
    from app.logging import configure_logging

    configure_logging()


# --- operations: metrics and tracing ---------------------------------------------------


@signals.worker_init.connect
def _init_worker_operations(**_kwargs: object) -> None:
    # In the worker's main process, before the pool forks: the metrics module picks its
    # private multiprocess directory here, so every pool process inherits (shares) it.
    from app import metrics  # noqa: F401
    from app.tracing import configure_tracing, instrument_celery

    configure_tracing("worker")
    instrument_celery()


@signals.worker_ready.connect
def _serve_worker_metrics(**_kwargs: object) -> None:
    from app.metrics import serve_worker_metrics
    from app.settings import get_settings

    settings = get_settings()
    if settings.worker_metrics_port:
        serve_worker_metrics(settings.worker_metrics_host, settings.worker_metrics_port)


@signals.worker_process_shutdown.connect
def _pool_process_exit(**_kwargs: object) -> None:
    # A pool process that leaves cleanly drops its live gauges; killed ones are reaped
    # at the next scrape (app.metrics.reap_dead_processes).
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid())


_started: dict[str, float] = {}


@signals.task_received.connect
def _count_received(request: object = None, **_kwargs: object) -> None:
    from app.metrics import TASKS_RECEIVED, task_labels

    TASKS_RECEIVED.labels(*task_labels(getattr(request, "name", None), getattr(request, "delivery_info", None))).inc()


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, **_kwargs: object) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _task_finished(task_id: str | None = None, task: object = None, **_kwargs: object) -> None:
    from app.metrics import TASK_RUNTIME, task_labels

    start = _started.pop(task_id or "", None)
    if start is not None and task is not None:
        labels = task_labels(getattr(task, "name", None), getattr(task.request, "delivery_info", None))  # type: ignore[attr-defined]
        TASK_RUNTIME.labels(*labels).observe(time.perf_counter() - start)


@signals.task_success.connect
def _count_success(sender: object = None, **_kwargs: object) -> None:
    from app.metrics import TASKS_SUCCEEDED, task_labels

    TASKS_SUCCEEDED.labels(*task_labels(getattr(sender, "name", None), getattr(sender.request, "delivery_info", None))).inc()  # type: ignore[attr-defined]


@signals.task_failure.connect
def _count_failure(sender: object = None, **_kwargs: object) -> None:
    from app.metrics import TASKS_FAILED, task_labels

    TASKS_FAILED.labels(*task_labels(getattr(sender, "name", None), getattr(sender.request, "delivery_info", None))).inc()  # type: ignore[attr-defined]


@signals.task_retry.connect
def _count_retry(sender: object = None, request: object = None, **_kwargs: object) -> None:
    from app.metrics import TASKS_RETRIED, task_labels

    TASKS_RETRIED.labels(*task_labels(getattr(sender, "name", None), getattr(request, "delivery_info", None))).inc()
