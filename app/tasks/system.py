"""Tasks of the ``default`` queue: the probe and the diagnostics the reliability tests use.

``ping`` is the one probe of every queue: routed to ``default``, and sent to any other
queue with ``queue=<name>`` (``send_task("app.tasks.system.ping", queue="ocr")``); it
answers with the queue it was delivered from and the worker that consumed it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import redis
from celery import Task

from app.celery_app import celery_app
from app.settings import get_settings

logger = logging.getLogger(__name__)


@celery_app.task(bind=True, name="app.tasks.system.ping")
def ping(self: Task) -> dict[str, Any]:
    """Probe: who consumed this task, and from which queue (proves routing end to end)."""
    delivery = self.request.delivery_info or {}
    logger.info("ping answered", extra={"pid": os.getpid()})
    return {
        "task": self.name,
        "queue": delivery.get("routing_key"),
        "hostname": self.request.hostname or socket.gethostname(),
        "pid": os.getpid(),
    }


@celery_app.task(bind=True, name="app.tasks.system.slow_marker")
def slow_marker(self: Task, key: str, seconds: float) -> dict[str, Any]:
    """Record each start (with the pid) and the completion under ``key`` in Redis.

    Used to show that a task whose process dies mid-run is delivered again and
    completes: the start list grows by one per delivery, ``done`` is set once.
    """
    client = redis.Redis.from_url(get_settings().redis_url)
    client.rpush(f"{key}:starts", os.getpid())
    client.expire(f"{key}:starts", 3600)
    time.sleep(seconds)
    client.set(f"{key}:done", os.getpid(), ex=3600)
    return {"pid": os.getpid(), "redelivered": bool((self.request.delivery_info or {}).get("redelivered"))}
