"""The baseline WSGI application: one Flask endpoint that returns a constant, served by
the same gunicorn settings as the project's API (``bench.api``)."""

from __future__ import annotations

from flask import Flask

application = Flask(__name__)


@application.post("/bare")
def bare():  # type: ignore[no-untyped-def]
    """Accepts like a submit endpoint would (202 and a small JSON body), doing nothing."""
    return {"id": "0", "status": "pending", "status_url": "/bare/0"}, 202
