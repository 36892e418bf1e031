"""Tasks of the `ocr` queue (routed by module in celeryconfig)."""

from __future__ import annotations

from typing import Any

from app.celery_app import celery_app
from app.tasks.base import ping_payload


@celery_app.task(bind=True, name="app.tasks.ocr.ping")
def ping(self) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Probe: answers with the queue and worker that consumed it."""
    return ping_payload(self)
