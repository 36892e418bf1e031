"""Celery-based task application: every background job is a task on a named queue.

``celery -A app`` finds the Celery application as ``app.celery``; it is built lazily so
that ``import app.settings`` stays light.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "celery":
        from app.celery_app import celery_app

        return celery_app
    raise AttributeError(name)
