"""One logging set-up for the API, the workers and the CLI: JSON lines on stderr.

Every record carries timestamp, level, logger and message; inside a Celery task it also
carries ``task_id``, ``task_name`` and ``queue``, and inside a trace (an API request, a
task continuing it) ``trace_id`` and ``span_id``, so one grep follows a request into its
tasks. Extra fields passed with ``extra=`` are
kept as JSON keys, so ``logger.info("scan done", extra={"scan_id": 3})`` is searchable.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from app.settings import get_settings


class TaskContextFilter(logging.Filter):
    """Adds the current Celery task's id, name and queue to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celery import current_task

        task = current_task._get_current_object() if current_task else None
        if task is not None and getattr(task, "request", None) is not None and task.request.id:
            record.task_id = task.request.id
            record.task_name = task.name
            delivery = task.request.delivery_info or {}
            record.queue = delivery.get("routing_key") or delivery.get("queue")
        return True


class TraceContextFilter(logging.Filter):
    """Adds the current OpenTelemetry trace and span ids (hex) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        from app.tracing import current_ids

        ids = current_ids()
        if ids is not None:
            record.trace_id, record.span_id = ids
        return True


_configured = False


def configure_logging(level: str | None = None, json_lines: bool | None = None) -> None:
    """Install the root handler once per process."""
    global _configured
    settings = get_settings()
    level = level or settings.log_level
    json_lines = settings.log_json if json_lines is None else json_lines
    root = logging.getLogger()
    if _configured:
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TaskContextFilter())
    handler.addFilter(TraceContextFilter())
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "%(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp=True,  # ISO 8601, UTC, microseconds
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "urllib3", "boto3", "s3transfer", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    _configured = True
