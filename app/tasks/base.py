"""Shared task pieces: the per-queue ``ping`` probe every family module exposes."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Task

logger = logging.getLogger(__name__)


def ping_payload(task: Task) -> dict[str, Any]:
    """Who consumed this task, and from which queue: proves routing end to end."""
    delivery = task.request.delivery_info or {}
    logger.info("ping answered", extra={"pid": os.getpid()})
    return {
        "task": task.name,
        "queue": delivery.get("routing_key"),
        "hostname": task.request.hostname or socket.gethostname(),
        "pid": os.getpid(),
    }
