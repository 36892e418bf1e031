"""Tasks of the ``default`` queue: probes and the diagnostics the reliability tests use."""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from app.celery_app import celery_app
from app.settings import get_settings
from app.tasks.base import ping_payload


@celery_app.task(bind=True, name="app.tasks.system.ping")
def ping(self) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Probe: answers with the queue and worker that consumed it."""
    return ping_payload(self)


@celery_app.task(bind=True, name="app.tasks.system.slow_marker")
def slow_marker(self, key: str, seconds: float) -> dict[str, Any]:  # type: ignore[no-untyped-def]
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
