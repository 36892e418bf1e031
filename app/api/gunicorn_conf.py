"""gunicorn settings: JSON log lines like the rest of the application.

Used as ``gunicorn -c python:app.api.gunicorn_conf app.api.wsgi:application``; bind,
workers and timeouts stay on the command line (units and ``dev`` set them).
"""

from __future__ import annotations

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
