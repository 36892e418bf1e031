"""What every task shares: the retry policy, the task class whose retries survive a broker
outage, the worker-side outbox hooks, and the frame of every beat job.

- ``RetryPolicy``: the one way a task retries after a transient error (which errors, how
  many times, how long it waits). The count of retries so far travels in the task's own
  kwargs (``policy.counter``), so it survives a retry and a hand-back to the outbox alike.
- ``HandBackRetry`` (the application's ``task_cls``): a retry the broker cannot take goes
  back to the task's outbox event instead of being dropped.
- ``mark_outbox_taken``: a worker records that it took an outbox event's task.
- ``periodic``: a beat job's run under its lock, recorded in ``job_runs``
  (``app.services.jobs.run_locked``), "as of" an optional ``now``.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import requests
from celery import Task, signals
from celery.exceptions import Ignore, Reject

from app.db import TRANSIENT_DB
from app.services.jobs import RunHandle, parse_now, run_locked

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """When a task tries again after a transient error, and how soon.

    The n-th retry (n from 0) waits a random time under ``min(cap, base * 2**n)`` seconds:
    anywhere below it with ``jitter="full"``, in its upper half with ``jitter="equal"``;
    never less than ``floor``. After ``max_retries`` retries the error is the task's
    (``None``: no limit). The count of retries so far is the task's kwarg ``counter``,
    which every retry carries forward: Celery's own count (``request.retries``) starts
    again from 0 when a retry is handed back to the outbox, this one does not.
    """

    transient: tuple[type[BaseException], ...]
    max_retries: int | None
    counter: str = "retries"
    base: float = 1.0
    cap: float = 60.0
    floor: float = 0.0
    jitter: Literal["full", "equal"] = "full"

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.floor or self.floor < 0:
            raise ValueError(f"bad retry backoff: base {self.base}, floor {self.floor}, cap {self.cap}")
        if self.jitter not in ("full", "equal"):
            raise ValueError(f"jitter must be 'full' or 'equal', not {self.jitter!r}")

    def delay(self, retries: int) -> float:
        """Seconds to wait before the retry that follows ``retries`` earlier ones."""
        ceiling = min(self.cap, self.base * 2 ** min(retries, 62))
        low = 0.0 if self.jitter == "full" else ceiling / 2
        return max(self.floor, random.uniform(low, ceiling))

    def used_up(self, retries: int) -> bool:
        return self.max_retries is not None and retries >= self.max_retries


#: The database could not be reached (a restart, a failover): several minutes of retries.
DB_UNAVAILABLE = RetryPolicy(transient=TRANSIENT_DB, max_retries=12, counter="db_retries", base=1.0, cap=60.0,
                             floor=0.5)


class HandBackRetry(Task):
    """The project's task class (``task_cls``): a retry the broker cannot take is not lost.

    ``Task.retry`` publishes the retry as a new message; when that publish fails (the
    broker is down at that moment, after Celery's own publish retries), Celery raises
    ``Reject(requeue=False)`` and the message is dropped, with the job unfinished and
    nothing left to run it. A task published from the outbox (task id ``outbox-<event
    id>``) is handed back to its event instead: due again after the countdown, with the
    retry's arguments, published again with the same task id once the broker answers
    (``app.services.outbox.hand_back``); this delivery then ends as ignored. The retry's
    arguments carry the policy's count of retries (``RetryPolicy.counter``), so a task
    that was handed back resumes its count where it stopped. Any other task keeps
    Celery's behaviour.

    Celery's own retry limit is off (``max_retries = None``): the policies count.
    """

    max_retries = None

    def retry_for(self, policy: RetryPolicy, exc: BaseException, *, countdown: float | None = None,
                  give_up: Callable[[], Any] | None = None) -> BaseException:
        """What to raise after the transient error ``exc``: the retry, or ``exc`` itself once
        the policy's retries are used up (after ``give_up()``, which records the job's end).

        A ``give_up`` that meets a transient error itself (the database still away) is
        retried, however many retries that makes: the job's end must be recorded, or
        nothing would ever finish it.
        """
        done = self.retries_done(policy)
        if policy.used_up(done):
            if give_up is None:
                return exc
            try:
                give_up()
                return exc
            except policy.transient as again:
                logger.warning("could not record the end of the retries; retrying",
                               extra={"task": self.name, "task_id": self.request.id, "error": str(again)[:200]})
                countdown = policy.cap
        wait = policy.delay(done) if countdown is None else countdown
        logger.warning("transient error; retrying", extra={
            "task": self.name, "task_id": self.request.id, "error": f"{type(exc).__name__}: {exc}"[:200],
            "retry": done + 1, "countdown": round(wait, 2)})
        kwargs = {**(self.request.kwargs or {}), policy.counter: done + 1}
        return self.retry(exc=exc, kwargs=kwargs, countdown=wait)

    def retries_done(self, policy: RetryPolicy) -> int:
        """Retries after ``policy``'s errors so far (the count in this request's kwargs)."""
        return int((self.request.kwargs or {}).get(policy.counter) or 0)

    def retry(self, args: Any = None, kwargs: Any = None, exc: Any = None, throw: bool = True,
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
            _hand_back(self, event_id, float(countdown or 0.0), retry_kwargs, rejected)
            raise Ignore() from None


# --- the worker-side outbox hooks ------------------------------------------------------------


def _hand_back(task: Task, event_id: int, countdown: float, kwargs: dict[str, Any], rejected: Reject) -> None:
    """Make the task's outbox event due again with the retry's kwargs; else the rejection stands."""
    from app.db import session_scope
    from app.services.outbox import hand_back

    with session_scope() as session:
        if not hand_back(session, event_id, countdown, kwargs):
            raise rejected
    logger.warning("the broker did not take the retry; handed back to the outbox",
                   extra={"task": task.name, "task_id": task.request.id, "event_id": event_id,
                          "countdown": round(countdown, 1), "error": str(rejected.reason)[:200]})


@signals.task_prerun.connect
def _mark_outbox_consumed(task_id: str | None = None, **_kwargs: object) -> None:
    mark_outbox_taken([task_id] if task_id else [])


def mark_outbox_taken(task_ids: list[str]) -> None:
    """Record that a worker took these tasks (those published from the outbox; one statement).

    An event nobody took is published again by the relay
    (app.services.outbox.redeliver_unconsumed).
    """
    from app.services.outbox import event_id_for, mark_consumed

    event_ids = [e for e in map(event_id_for, task_ids) if e is not None]
    if not event_ids:
        return
    try:
        from app.db import session_scope

        with session_scope() as session:
            mark_consumed(session, event_ids)
    except Exception as exc:  # the task runs anyway; at worst the relay publishes it once more
        logger.warning("could not record the outbox event as taken", extra={"event_ids": event_ids[:20],
                                                                             "error": str(exc)[:200]})


# --- the frame of every beat job ---------------------------------------------------------------

#: A beat job's body: the run to fill with counts and the instant it runs "as of"; what it
#: returns (a dict, or None) is added to the task's result without being recorded.
JobBody = Callable[[RunHandle, datetime], "dict[str, Any] | None"]


def periodic(job: str, *, ttl: float | Callable[[], float] = 60.0) -> Callable[[JobBody], Callable[..., dict[str, Any]]]:
    """Make ``body`` a beat job: ``fn(now=None)`` runs it under ``run_locked`` (the job's lock,
    extended while it runs, its ``job_runs`` record, a recorded skip when the lock is held)
    "as of" ``now`` (ISO 8601 with an offset, for operators and tests; the current time by
    default), and returns ``{"skipped": ..., **counts}``. ``ttl`` may be read when the job runs."""

    def decorate(body: JobBody) -> Callable[..., dict[str, Any]]:
        @functools.wraps(body, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
        def run(now: str | None = None) -> dict[str, Any]:
            from app.db import session_scope

            at = parse_now(now)
            extra: dict[str, Any] = {}

            def frame(handle: RunHandle) -> None:
                extra.update(body(handle, at) or {})

            lock_ttl = ttl() if callable(ttl) else ttl
            return run_locked(session_scope, job, frame, ttl=lock_ttl).as_dict() | extra

        return run

    return decorate


@functools.cache
def http_session() -> requests.Session:
    """The worker process's HTTP connection pool, for the providers tasks call (chat
    channels, telephony)."""
    return requests.Session()
