"""The one Celery application, its start-up checks and its worker-process signals."""

from __future__ import annotations

import logging

from celery import Celery, signals
from celery.app.routes import Router

from app.settings import QUEUES

logger = logging.getLogger(__name__)

#: Task modules; each is routed to its family's queue by celeryconfig.
TASK_MODULES = [
    "app.tasks.system",
    "app.tasks.ocr",
    "app.tasks.scans",
    "app.tasks.voice",
    "app.tasks.outbox",
    "app.tasks.messages",
    "app.tasks.files",
    "app.tasks.gc",
    "app.tasks.schedules",
]


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
    app = Celery("app")
    app.config_from_object("celeryconfig")
    app.conf.include = TASK_MODULES
    check_routes(app)
    return app


celery_app = create_celery()


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
