"""A bare Celery application for the overhead baseline: the project's worker settings
(``celeryconfig``: broker, serializer, late acks, prefetch, events, result backend) and
nothing else — none of the project's signals (metrics, tracing, logging set-up) and no
task base class."""

from __future__ import annotations

from celery import Celery

app = Celery("bare")
app.config_from_object("celeryconfig")


@app.task(name="bench.overhead.noop")
def noop() -> dict[str, bool]:
    """Does nothing; returns a small result like the project's probe does."""
    return {"ok": True}
