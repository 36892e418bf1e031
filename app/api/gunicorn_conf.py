"""gunicorn settings: JSON log lines like the rest of the application, and Prometheus
multiprocess bookkeeping.

Used as ``gunicorn -c python:app.api.gunicorn_conf app.api.wsgi:application``; bind,
workers and timeouts stay on the command line (units and ``dev`` set them).

This module is imported by the gunicorn master before it forks its workers, so importing
``app.metrics`` here gives the master's private multiprocess directory to every worker
(``/metrics`` served by any of them adds up all of them); a worker that exits is marked
dead so its live gauges go.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import multiprocess

import app.metrics  # noqa: F401  (first: chooses the multiprocess directory in the master)


def child_exit(_server: Any, worker: Any) -> None:
    """gunicorn hook: a worker process left; drop its live gauges."""
    multiprocess.mark_process_dead(worker.pid)

_json = {
    "()": "pythonjsonlogger.json.JsonFormatter",
    "fmt": "%(levelname)s %(name)s %(message)s",
    "rename_fields": {"levelname": "level", "name": "logger"},
    "timestamp": True,
}

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": _json},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}
# Access lines: "<method> <path> <status> <bytes> <duration>us" inside the JSON message.
access_log_format = "%(m)s %(U)s %(s)s %(B)s %(D)sus"
