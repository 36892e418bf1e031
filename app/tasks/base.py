"""Shared task pieces: the base class whose retries survive a broker outage, and the
per-queue ``ping`` probe every family module exposes."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject

logger = logging.getLogger(__name__)


class HandBackRetry(Task):  # type: ignore[misc]
    """The project's task class (``task_cls``): a retry the broker cannot take is not lost.

    ``Task.retry`` publishes the retry as a new message; when that publish fails (the
    broker is down at that moment, after Celery's own publish retries), Celery raises
    ``Reject(requeue=False)`` and the message is dropped, with the job unfinished and
    nothing left to run it. A task published from the outbox (task id ``outbox-<event
    id>``) is handed back to its event instead: due again after the countdown, with the
    retry's arguments, published again with the same task id once the broker answers
    (``app.services.outbox.hand_back``); this delivery then ends as ignored. Celery's
    retry count starts again from 0 with the new publish; the families count their
    attempts in the database. Any other task keeps Celery's behaviour.
    """

    def retry(self, args: Any = None, kwargs: Any = None, exc: Any = None, throw: bool = True,  # noqa: PLR0913
              eta: Any = None, countdown: float | None = None, max_retries: int | None = None,
              **options: Any) -> Any:
        try:
            return super().retry(args=args, kwargs=kwargs, exc=exc, throw=throw, eta=eta, countdown=countdown,
                                 max_retries=max_retries, **options)
        except Reject as rejected:
            from app.services.outbox import event_id_for

            event_id = event_id_for(self.request.id)
            if self.request.is_eager or event_id is None or args:
                raise
            if countdown is None:
                countdown = self.default_retry_delay if eta is None else 0.0
            retry_kwargs = dict(self.request.kwargs or {}) if kwargs is None else dict(kwargs)
            self._hand_back(event_id, float(countdown or 0.0), retry_kwargs, rejected)
            raise Ignore() from None

    def _hand_back(self, event_id: int, countdown: float, kwargs: dict[str, Any], rejected: Reject) -> None:
        from app.db import session_scope
        from app.services.outbox import hand_back

        with session_scope() as session:
            if not hand_back(session, event_id, countdown, kwargs):
                raise rejected
        logger.warning("the broker did not take the retry; handed back to the outbox",
                       extra={"task": self.name, "task_id": self.request.id, "event_id": event_id,
                              "countdown": round(countdown, 1), "error": str(rejected.reason)[:200]})


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
